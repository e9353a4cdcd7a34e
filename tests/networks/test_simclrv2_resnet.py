import pytest
import torch
import torchvision
from torch import nn

from mile_ssl.networks.backbones import BackboneSpec, build_backbone
from mile_ssl.networks.simclrv2_resnet import (
    ProjectionHead,
    SelectiveKernel,
    SimCLRv2ResNet,
    sk_hidden_channels,
)


def _meta_model(**kwargs: object) -> SimCLRv2ResNet:
    with torch.device("meta"):
        return SimCLRv2ResNet(**kwargs)  # type: ignore[arg-type]


def _randomise_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            size = module.num_features
            module.weight.data = torch.rand(size, generator=generator) * 0.5 + 0.5
            module.bias.data = torch.randn(size, generator=generator) * 0.1
            module.running_mean = torch.randn(size, generator=generator) * 0.1
            module.running_var = torch.rand(size, generator=generator) + 0.5


@pytest.mark.parametrize(
    ("kwargs", "feature_dim"),
    [
        ({}, 2048),
        ({"width_multiplier": 2}, 4096),
        ({"depth": 101, "width_multiplier": 3, "selective_kernel": True}, 6144),
        ({"projection_layers": 1}, 2048),
        ({"width_multiplier": 2, "projection_layers": 2}, 4096),
        ({"depth": 152, "projection_layers": 3}, 128),
    ],
)
def test_feature_dim(kwargs: dict[str, object], feature_dim: int) -> None:
    assert _meta_model(**kwargs).feature_dim == feature_dim


def test_builder_is_registered() -> None:
    model, feature_dim = build_backbone(
        BackboneSpec("simclrv2", {"selective_kernel": True, "projection_layers": 1})
    )
    assert isinstance(model, SimCLRv2ResNet)
    assert feature_dim == model.feature_dim == 2048
    assert model.selective_kernel and model.projection_layers == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depth": 34}, "depth"),
        ({"width_multiplier": 4}, "width_multiplier"),
        ({"projection_layers": 4}, "projection_layers"),
        ({"projection_layers": -1}, "projection_layers"),
    ],
)
def test_rejects_unreleased_variants(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _meta_model(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "millions"),
    [
        ({}, 24),
        ({"selective_kernel": True}, 35),
        ({"width_multiplier": 2}, 94),
        ({"width_multiplier": 2, "selective_kernel": True}, 140),
        ({"depth": 152, "width_multiplier": 3, "selective_kernel": True}, 795),
    ],
)
def test_parameter_counts_match_the_paper(kwargs: dict[str, object], millions: int) -> None:
    """Table 1 of the SimCLR-v2 paper lists these sizes (backbone without classifier)."""
    model = _meta_model(**kwargs)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == millions


def test_keys_follow_the_conversion() -> None:
    plain = _meta_model(projection_layers=3).state_dict()
    for key in [
        "net.0.0.weight",
        "net.0.1.0.running_var",
        "net.1.blocks.0.projection.shortcut.weight",
        "net.1.blocks.0.projection.bn.0.weight",
        "net.1.blocks.2.net.0.weight",
        "net.1.blocks.2.net.1.0.bias",
        "net.2.blocks.0.net.2.weight",
        "net.3.blocks.5.net.3.0.running_mean",
        "net.4.blocks.2.net.4.weight",
        "net.4.blocks.2.net.5.0.weight",
        "head.layers.0.weight",
        "head.layers.4.running_var",
        "head.layers.7.bias",
    ]:
        assert key in plain, key
    assert "net.1.blocks.1.projection.shortcut.weight" not in plain
    assert not any(key.startswith("fc.") for key in plain)
    assert plain["net.0.0.weight"].shape == (64, 3, 7, 7)
    assert plain["head.layers.6.weight"].shape == (128, 2048)

    sk = _meta_model(width_multiplier=2, selective_kernel=True).state_dict()
    assert sk["net.0.0.weight"].shape == (64, 3, 3, 3)
    assert sk["net.0.2.weight"].shape == (64, 64, 3, 3)
    assert sk["net.0.4.weight"].shape == (128, 64, 3, 3)
    assert sk["net.0.5.0.weight"].shape == (128,)
    assert sk["net.1.blocks.0.projection.shortcut.2.weight"].shape == (512, 128, 1, 1)
    assert sk["net.2.blocks.0.net.2.main_conv.0.weight"].shape == (512, 256, 3, 3)
    assert sk["net.2.blocks.0.net.2.main_conv.1.0.weight"].shape == (512,)
    assert sk["net.2.blocks.0.net.2.mixing_conv.0.weight"].shape == (32, 256, 1, 1)
    assert sk["net.4.blocks.0.net.2.mixing_conv.0.weight"].shape == (64, 1024, 1, 1)
    assert sk["net.4.blocks.0.net.2.mixing_conv.2.weight"].shape == (2048, 64, 1, 1)
    assert sk["net.4.blocks.0.net.3.weight"].shape == (4096, 1024, 1, 1)
    assert sk["net.4.blocks.0.net.4.0.running_var"].shape == (4096,)
    assert "net.4.blocks.0.net.5.0.weight" not in sk


def test_sk_hidden_channels() -> None:
    assert [sk_hidden_channels(c) for c in (64, 512, 1024, 1536)] == [32, 32, 64, 96]


def test_selective_kernel_carries_the_stride() -> None:
    unit = SelectiveKernel(256, 64, stride=2)
    main = unit.main_conv[0]
    assert isinstance(main, nn.Conv2d)
    assert main.weight.shape == (128, 256, 3, 3)
    assert main.stride == (2, 2) and main.padding == (1, 1)
    assert unit(torch.rand(2, 256, 9, 9)).shape == (2, 64, 5, 5)


def test_selective_kernel_is_a_softmax_weighted_sum_of_two_halves() -> None:
    generator = torch.Generator().manual_seed(0)
    unit = SelectiveKernel(8, 6, stride=1)
    _randomise_batchnorm(unit, generator)
    unit.eval()
    inputs = torch.randn(3, 8, 5, 5, generator=generator)
    with torch.no_grad():
        both = unit.main_conv(inputs)
        first, second = both[:, :6], both[:, 6:]
        pooled = (first + second).mean(dim=(2, 3), keepdim=True)
        logits = unit.mixing_conv(pooled)
        weight_first = torch.sigmoid(logits[:, :6] - logits[:, 6:])
        expected = weight_first * first + (1 - weight_first) * second
        torch.testing.assert_close(unit(inputs), expected)

        mixing = unit.mixing_conv[2]
        assert isinstance(mixing, nn.Conv2d)
        mixing.weight.zero_()
        torch.testing.assert_close(unit(inputs), (first + second) / 2)


def test_projection_head_layers() -> None:
    head = ProjectionHead(16, 3)
    kinds = [type(layer) for layer in head.layers]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear, nn.BatchNorm1d]
    assert all(layer.bias is None for layer in head.layers if isinstance(layer, nn.Linear))
    assert head.out_features == 128
    first = ProjectionHead(16, 1)
    assert [type(layer) for layer in first.layers] == [nn.Linear, nn.BatchNorm1d, nn.ReLU]
    assert first.out_features == 16


def _torchvision_name(key: str) -> str:
    """The torchvision ResNet name of a tensor of the plain 1x SimCLR-v2 ResNet."""
    parts = {
        "net.0": "conv1",
        "net.1.0": "bn1",
        "net.2": "conv2",
        "net.3.0": "bn2",
        "net.4": "conv3",
        "net.5.0": "bn3",
        "projection.shortcut": "downsample.0",
        "projection.bn.0": "downsample.1",
    }
    if key.startswith("net.0.0."):
        return "conv1." + key.removeprefix("net.0.0.")
    if key.startswith("net.0.1.0."):
        return "bn1." + key.removeprefix("net.0.1.0.")
    _, stage, _, block, rest = key.split(".", 4)
    module, _, tensor = rest.rpartition(".")
    return f"layer{stage}.{block}.{parts[module]}.{tensor}"


def test_plain_r50_1x_is_torchvision_resnet50() -> None:
    """The r50_1x_sk0 tensors map one to one onto torchvision's resnet50, outputs included."""
    generator = torch.Generator().manual_seed(0)
    reference = torchvision.models.resnet50(weights=None)
    reference.fc = nn.Identity()
    _randomise_batchnorm(reference, generator)
    reference.eval()
    model = SimCLRv2ResNet().eval()
    weights = reference.state_dict()
    model.load_state_dict({key: weights[_torchvision_name(key)] for key in model.state_dict()})
    assert len(weights) == len(model.state_dict())
    images = torch.rand(2, 3, 64, 64, generator=generator)
    with torch.no_grad():
        expected = reference(images)
        torch.testing.assert_close(model(images), expected)
    assert expected.abs().mean() > 0.01


def test_trains_end_to_end() -> None:
    model = SimCLRv2ResNet(selective_kernel=True, projection_layers=1).train()
    features = model(torch.rand(2, 3, 32, 32))
    assert features.shape == (2, 2048)
    features.square().mean().backward()
    for name in [
        "net.0.0.weight",
        "net.2.blocks.0.net.2.mixing_conv.2.weight",
        "head.layers.0.weight",
    ]:
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
