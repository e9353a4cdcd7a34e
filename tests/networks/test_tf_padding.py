import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from timm.layers import pad_same
from torch import nn
from torch.nn import functional as F

from mile_ssl.adapters import load_backbone
from mile_ssl.networks.backbones import BackboneSpec, build_backbone
from mile_ssl.networks.tf_padding import (
    Conv2dSame,
    MaxPool2dSame,
    use_tf_same_padding,
)
from tests.layouts import byol

# (size, kernel, stride) -> (before, after), worked out by hand from TF's rule: output
# ceil(size / stride), total padding max((out - 1) * stride + kernel - size, 0), the
# odd pixel after the input.
HAND_PADS = {
    (64, 7, 2): (2, 3),  # out 32: 31 * 2 + 7 - 64 = 5
    (65, 7, 2): (3, 3),  # out 33: 32 * 2 + 7 - 65 = 6
    (64, 3, 2): (0, 1),  # out 32: 62 + 3 - 64 = 1
    (65, 3, 2): (1, 1),  # out 33: 64 + 3 - 65 = 2
    (64, 1, 2): (0, 0),
    (65, 1, 2): (0, 0),
    (64, 2, 2): (0, 0),
    (65, 2, 2): (0, 1),  # out 33: 64 + 2 - 65 = 1
    (64, 3, 1): (1, 1),
    (65, 3, 1): (1, 1),
    (64, 4, 1): (1, 2),  # stride 1: total kernel - 1 = 3, whatever the size
    (65, 4, 1): (1, 2),
    (64, 3, 3): (1, 1),  # out 22: 63 + 3 - 64 = 2
    (65, 3, 3): (0, 1),  # out 22: 63 + 3 - 65 = 1
    (224, 7, 2): (2, 3),
    (112, 3, 2): (0, 1),
}


"""The tensors are small: one thread is faster than two competing for busy cores."""


@pytest.mark.parametrize(("size", "kernel", "stride"), list(HAND_PADS))
def test_timm_pads_as_hand_computed(size: int, kernel: int, stride: int) -> None:
    """The padding timm's layers apply is TF's, for the sizes the tests below rely on."""
    padded = pad_same(torch.ones(1, 1, size, 1), [kernel, 1], [stride, 1])[0, 0, :, 0]
    before = int(padded.argmax())  # the first 1: argmax returns the first maximum
    assert (before, len(padded) - size - before) == HAND_PADS[(size, kernel, stride)]


def _reference_conv(images: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    top, bottom = HAND_PADS[(images.shape[-2], kernel, stride)]
    left, right = HAND_PADS[(images.shape[-1], kernel, stride)]
    padded = F.pad(images, (left, right, top, bottom))
    return F.conv2d(padded, conv.weight, conv.bias, stride=stride)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding"),
    [(7, 2, 3), (3, 2, 1), (1, 2, 0), (2, 2, 0), (4, 1, 1), (3, 3, 1)],
)
@pytest.mark.parametrize("shape", [(64, 64), (65, 65), (64, 65)])
def test_conv_pads_like_tf_same(
    kernel: int, stride: int, padding: int, shape: tuple[int, int]
) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, kernel, stride=stride, padding=padding, bias=True)
    images = torch.randn(2, 3, *shape)
    expected = _reference_conv(images, conv)
    model = use_tf_same_padding(nn.Sequential(conv))
    with torch.no_grad():
        torch.testing.assert_close(model(images), expected)


def test_stride_one_odd_convolution_is_kept() -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1)
    model = use_tf_same_padding(nn.Sequential(conv))
    assert model[0] is conv
    images = torch.randn(1, 3, 64, 65)
    with torch.no_grad():
        torch.testing.assert_close(model(images), _reference_conv(images, conv))


@pytest.mark.parametrize("shape", [(64, 64), (65, 65), (65, 64)])
def test_max_pool_pads_with_minus_infinity(shape: tuple[int, int]) -> None:
    # All-negative input: zero padding would leak zeros into the border maxima.
    images = -1.0 - torch.rand(2, 4, *shape)
    top, bottom = HAND_PADS[(shape[0], 3, 2)]
    left, right = HAND_PADS[(shape[1], 3, 2)]
    padded = F.pad(images, (left, right, top, bottom), value=float("-inf"))
    expected = F.max_pool2d(padded, 3, 2)
    model = use_tf_same_padding(nn.Sequential(nn.MaxPool2d(3, 2, padding=1)))
    assert isinstance(model[0], MaxPool2dSame)
    torch.testing.assert_close(model(images), expected)
    assert model(images).max() < 0


def test_resnet_state_dict_and_parameters_unchanged() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    parameters = {name: id(param) for name, param in model.named_parameters()}
    use_tf_same_padding(model)
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert {name: id(param) for name, param in model.named_parameters()} == parameters
    replaced = sorted(
        name
        for name, module in model.named_modules()
        if isinstance(module, Conv2dSame | MaxPool2dSame)
    )
    assert replaced == ["conv1", "layer2.0.conv2", "layer3.0.conv2", "layer4.0.conv2", "maxpool"]
    # A second call finds nothing left to convert.
    modules = dict(model.named_modules())
    use_tf_same_padding(model)
    assert all(dict(model.named_modules())[name] is module for name, module in modules.items())
    # A plain torchvision model accepts the same state dict strictly.
    torchvision.models.resnet50(weights=None).load_state_dict(after, strict=True)


def test_backbone_builder_uses_same_padding() -> None:
    model, dim = build_backbone(BackboneSpec("torchvision:resnet18", {"tf_same_padding": True}))
    assert dim == 512
    assert isinstance(model.conv1, Conv2dSame)
    assert isinstance(model.maxpool, MaxPool2dSame)
    model.eval()
    with torch.no_grad():
        for size in (64, 65):
            assert model(torch.randn(1, 3, size, size)).shape == (1, 512)


def test_unsupported_layers_are_refused() -> None:
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        use_tf_same_padding(
            nn.Sequential(nn.Conv2d(3, 3, 3, stride=2, padding=1, padding_mode="reflect"))
        )
    with pytest.raises(ValueError, match="ceil_mode"):
        use_tf_same_padding(nn.Sequential(nn.MaxPool2d(3, 2, ceil_mode=True)))


# Input size and F.pad arguments (left, right, top, bottom) of each strided ResNet-50 layer
# for a 65 x 64 (height x width) image, from TF's rule: the 7x7/2 stem on 65 x 64 pads
# (3, 3) x (2, 3) and outputs 33 x 32; every 3x3/2 layer after it sees odd x even and pads
# (1, 1) x (0, 1). The 1x1/2 shortcut convolutions need no padding in either convention.
BYOL_PADS_65x64 = {
    "conv1": ((65, 64), (2, 3, 3, 3)),
    "maxpool": ((33, 32), (0, 1, 1, 1)),
    "layer2.0.conv2": ((17, 16), (0, 1, 1, 1)),
    "layer3.0.conv2": ((9, 8), (0, 1, 1, 1)),
    "layer4.0.conv2": ((5, 4), (0, 1, 1, 1)),
}


def _byol_file_with_random_weights(folder: Path) -> Path:
    """BYOL's pickle layout (tests/layouts.py) filled with random, well-scaled values."""
    path = byol(folder)
    with path.open("rb") as handle:
        checkpoint = pickle.load(handle)
    rng = np.random.default_rng(0)
    experiment = checkpoint["experiment_state"]
    for name, values in experiment["online_params"].items():
        for key, array in values.items():
            if key == "w":
                std = math.sqrt(2.0 / math.prod(array.shape[:-1]))
                values[key] = (rng.standard_normal(array.shape) * std).astype(np.float32)
            else:
                low, high = {"scale": (0.5, 1.0), "offset": (-0.1, 0.1)}[key]
                if key == "scale" and name.endswith("batchnorm_2"):
                    low, high = 0.1, 0.3  # keeps the 16 residual sums in a sane range
                values[key] = rng.uniform(low, high, array.shape).astype(np.float32)
    for name, values in experiment["online_state"].items():
        low, high = (-0.2, 0.2) if name.endswith("mean_ema") else (0.5, 1.5)
        values["average"] = rng.uniform(low, high, values["average"].shape).astype(np.float32)
    path.write_bytes(pickle.dumps(checkpoint, protocol=2))
    return path


def _explicitly_padded(state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """A plain torchvision ResNet-50 whose strided layers get the hand-computed pads."""
    model = torchvision.models.resnet50(weights=None)
    model.fc = nn.Identity()
    model.load_state_dict(state_dict)
    modules = dict(model.named_modules())
    for name, (size, pads) in BYOL_PADS_65x64.items():
        layer = modules[name]
        pooling = isinstance(layer, nn.MaxPool2d)
        layer.padding = 0 if pooling else (0, 0)

        def pad(
            _: nn.Module,
            args: tuple[torch.Tensor],
            size: tuple[int, int] = size,
            pads: tuple[int, ...] = pads,
            value: float = float("-inf") if pooling else 0.0,
        ) -> tuple[torch.Tensor]:
            assert tuple(args[0].shape[-2:]) == size
            return (F.pad(args[0], pads, value=value),)

        layer.register_forward_pre_hook(pad)
    return model.eval()


def test_byol_file_features_are_bit_identical_to_explicit_tf_padding(tmp_path: Path) -> None:
    """The DeepMind-layout BYOL file gives exactly the features of F.pad + plain layers."""
    loaded = load_backbone(_byol_file_with_random_weights(tmp_path))
    assert loaded.adapter == "byol"
    module = loaded.module.eval()
    reference = _explicitly_padded(module.state_dict())
    symmetric = torchvision.models.resnet50(weights=None)
    symmetric.fc = nn.Identity()
    symmetric.load_state_dict(module.state_dict())
    torch.manual_seed(0)
    images = torch.randn(2, 3, 65, 64)
    with torch.no_grad():
        features, expected = module(images), reference(images)
        assert torch.isfinite(expected).all() and expected.abs().max() > 0
        assert torch.equal(features, expected)
        # torchvision's own symmetric padding samples other pixels: the check is sensitive.
        assert not torch.allclose(symmetric.eval()(images), expected, atol=1e-3)
