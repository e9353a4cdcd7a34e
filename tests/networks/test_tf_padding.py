from collections.abc import Iterator

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from mile_ssl.networks.backbones import BackboneSpec, build_backbone
from mile_ssl.networks.tf_padding import (
    Conv2dSame,
    MaxPool2dSame,
    same_padding,
    use_tf_same_padding,
)

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


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """The tensors are small: one thread is faster than two competing for busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("size", "kernel", "stride"), list(HAND_PADS))
def test_same_padding_matches_hand_computed(size: int, kernel: int, stride: int) -> None:
    assert same_padding(size, kernel, stride) == HAND_PADS[(size, kernel, stride)]


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
