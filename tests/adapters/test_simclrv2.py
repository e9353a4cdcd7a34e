"""SimCLR-v2 conversion files, written by a stand-alone model with the conversion's layout.

The reference below is written from the format description (Separius/SimCLRv2-Pytorch
naming, SimCLR-v2's SK unit) independently of ``mile_ssl.networks.simclrv2_resnet``; the
backbone loaded through the adapter must reproduce its features.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mile_ssl.adapters import (
    AdapterOptions,
    CheckpointError,
    CheckpointMismatchError,
    describe_mismatch,
    detect_torchvision,
    load_backbone,
    read_checkpoint,
)
from mile_ssl.adapters.simclrv2 import convert_simclrv2, detect_simclrv2
from mile_ssl.networks.backbones import BackboneSpec
from mile_ssl.networks.preprocessing import IDENTITY
from mile_ssl.networks.simclrv2_resnet import SimCLRv2ResNet

BLOCKS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


def _bn(channels: int, relu: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels, eps=1e-5), nn.ReLU() if relu else nn.Identity())


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)


class RefSelectiveKernel(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        hidden = max(int(cout * 0.0625), 32)
        self.main_conv = nn.Sequential(_conv(cin, 2 * cout, 3, stride), _bn(2 * cout))
        self.mixing_conv = nn.Sequential(
            _conv(cout, hidden, 1), _bn(hidden), _conv(hidden, 2 * cout, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        streams = torch.stack(torch.chunk(self.main_conv(x), 2, dim=1))
        context = streams.sum(dim=0).mean(dim=[2, 3], keepdim=True)
        logits = torch.stack(torch.chunk(self.mixing_conv(context), 2, dim=1))
        return (streams * F.softmax(logits, dim=0)).sum(dim=0)


class RefProjection(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, sk: bool) -> None:
        super().__init__()
        self.shortcut = (
            nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.AvgPool2d(2, stride), _conv(cin, cout, 1))
            if sk
            else _conv(cin, cout, 1, stride)
        )
        self.bn = _bn(cout, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.shortcut(x))


class RefBottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int, sk: bool, first: bool) -> None:
        super().__init__()
        self.projection = RefProjection(cin, 4 * width, stride, sk) if first else nn.Identity()
        ops: list[nn.Module] = [_conv(cin, width, 1), _bn(width)]
        if sk:
            ops.append(RefSelectiveKernel(width, width, stride))
        else:
            ops += [_conv(width, width, 3, stride), _bn(width)]
        ops += [_conv(width, 4 * width, 1), _bn(4 * width, relu=False)]
        self.net = nn.Sequential(*ops)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.projection(x) + self.net(x))


class RefBlocks(nn.Module):
    def __init__(self, count: int, cin: int, width: int, stride: int, sk: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([RefBottleneck(cin, width, stride, sk, True)])
        self.blocks.extend(RefBottleneck(4 * width, width, 1, sk, False) for _ in range(count - 1))

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class RefResNet(nn.Module):
    def __init__(self, depth: int, width: int, sk: bool) -> None:
        super().__init__()
        c = 64 * width
        stem: list[nn.Module] = (
            [_conv(3, c // 2, 3, 2), _bn(c // 2), _conv(c // 2, c // 2, 3), _bn(c // 2)]
            + [_conv(c // 2, c, 3)]
            if sk
            else [_conv(3, c, 7, 2)]
        )
        stem += [_bn(c), nn.MaxPool2d(3, 2, 1)]
        layers: list[nn.Module] = [nn.Sequential(*stem)]
        cin = c
        for index, count in enumerate(BLOCKS[depth]):
            layers.append(RefBlocks(count, cin, c * 2**index, 1 if index == 0 else 2, sk))
            cin = 4 * c * 2**index
        self.net = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, 1000)
        self.channels_out = cin

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).mean(dim=[2, 3])


class RefHead(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for index in range(3):
            out = 128 if index == 2 else channels
            self.layers.append(nn.Linear(channels, out, bias=False))
            self.layers.append(nn.BatchNorm1d(out, eps=1e-5))
            if index < 2:
                self.layers.append(nn.ReLU())

    def forward(self, x: Tensor, layers: int = 3) -> Tensor:
        for module in list(self.layers)[: 3 * layers]:
            x = module(x)
        return x


def _randomise(*modules: nn.Module) -> None:
    """Fill every tensor: He-scaled weights and mild BN statistics, activations of order one.

    Each residual branch ends with a BN of small scale, as a trained ResNet's tend to
    be, so the residual stream does not grow with depth.
    """
    for root in modules:
        for module in root.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                fan_in = module.weight[0].numel()
                gain = 2.0 if isinstance(module, nn.Conv2d) else 1.0
                nn.init.normal_(module.weight, std=(gain / fan_in) ** 0.5)
                if module.bias is not None:
                    nn.init.normal_(module.bias, std=0.1)
            elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                size = module.num_features
                module.weight.data = torch.rand(size) * 0.5 + 0.75
                module.bias.data = torch.randn(size) * 0.1
                module.running_mean = torch.randn(size) * 0.1
                module.running_var = torch.rand(size) * 0.5 + 0.75
                module.num_batches_tracked.fill_(1000)
        for module in root.modules():
            if isinstance(module, RefBottleneck):
                last = module.net[-1][0]
                last.weight.data = torch.rand(last.num_features) * 0.2 + 0.1


@dataclass
class Reference:
    path: Path
    resnet: RefResNet
    head: RefHead
    spec: BackboneSpec

    def raw(self) -> dict[str, Any]:
        return {"resnet": self.resnet.state_dict(), "head": self.head.state_dict()}


def _spec(depth: int, width: int, sk: bool, projection_layers: int = 0) -> BackboneSpec:
    return BackboneSpec(
        "simclrv2",
        {
            "depth": depth,
            "width_multiplier": width,
            "selective_kernel": sk,
            "projection_layers": projection_layers,
        },
    )


VARIANTS = {
    "r50_1x_sk0": (1, False),
    "r50_1x_sk1": (1, True),
    "r50_2x_sk0": (2, False),
    "r50_2x_sk1": (2, True),
}


@pytest.fixture(scope="module")
def reference(module_tmp_path: Path) -> Callable[[str], Reference]:
    """Build, randomise and save a variant once per module, in the conversion's layout."""
    cache: dict[str, Reference] = {}

    def get(name: str) -> Reference:
        if name not in cache:
            width, sk = VARIANTS[name]
            torch.manual_seed(len(cache))
            with torch.device("meta"):  # allocated and filled once, by _randomise
                resnet = RefResNet(50, width, sk)
                head = RefHead(resnet.channels_out)
            resnet.to_empty(device="cpu")
            head.to_empty(device="cpu")
            _randomise(resnet, head)
            resnet.eval()
            head.eval()
            ref = Reference(module_tmp_path / f"{name}.pth", resnet, head, _spec(50, width, sk))
            torch.save(ref.raw(), ref.path)
            cache[name] = ref
        return cache[name]

    return get


def _head_keys(layers: range) -> list[str]:
    keys = []
    for layer in layers:
        keys.append(f"head.layers.{3 * layer}.weight")
        keys += [
            f"head.layers.{3 * layer + 1}.{name}"
            for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        ]
    return keys


def _images(sizes: tuple[int, ...] = (64, 49)) -> list[Tensor]:
    """Random images in [0, 1]; the odd size exercises the asymmetric ResNet-D padding."""
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(2, 3, size, size, generator=generator) for size in sizes]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_features_match_the_reference(name: str, reference: Callable[[str], Reference]) -> None:
    ref = reference(name)
    loaded = load_backbone(ref.path)
    assert loaded.adapter == "simclrv2"
    assert loaded.spec == ref.spec
    assert loaded.feature_dim == ref.resnet.channels_out == 2048 * VARIANTS[name][0]
    assert loaded.preprocessing == IDENTITY
    assert sorted(loaded.dropped) == sorted(
        ["resnet.fc.weight", "resnet.fc.bias"] + _head_keys(range(3))
    )
    module = loaded.module.eval()
    with torch.no_grad():
        for images in _images((64, 49) if VARIANTS[name][0] == 1 else (64,)):
            expected = ref.resnet(images)
            assert expected.isfinite().all() and 0.05 < expected.abs().mean() < 20
            assert (expected[0] - expected[1]).abs().mean() > 1e-3
            torch.testing.assert_close(module(images), expected)


def test_r50_1x_sk0_loads_exactly(reference: Callable[[str], Reference]) -> None:
    ref = reference("r50_1x_sk0")
    loaded = load_backbone(ref.path, adapter="simclrv2", backbone=ref.spec)
    assert isinstance(loaded.module, SimCLRv2ResNet)
    weights = ref.resnet.state_dict()
    state = loaded.module.state_dict()
    assert set(state) == {key for key in weights if not key.startswith("fc.")}
    for key, value in state.items():
        assert torch.equal(value, weights[key]), key


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_projection_layers_match_the_reference_head(
    layers: int, reference: Callable[[str], Reference]
) -> None:
    ref = reference("r50_1x_sk1")
    loaded = load_backbone(ref.path, projection_layers=layers)
    assert loaded.spec == _spec(50, 1, True, layers)
    assert loaded.feature_dim == (128 if layers == 3 else 2048)
    assert sorted(loaded.dropped) == sorted(
        ["resnet.fc.weight", "resnet.fc.bias"] + _head_keys(range(layers, 3))
    )
    module = loaded.module.eval()
    with torch.no_grad():
        for images in _images():
            pooled = ref.resnet(images)
            expected = ref.head(pooled, layers)
            if layers == 1:
                linear, bn, _ = ref.head.layers[:3]
                torch.testing.assert_close(expected, F.relu(bn(linear(pooled))))
            assert expected.shape == (2, loaded.feature_dim)
            assert (expected[0] - expected[1]).abs().mean() > 1e-3
            torch.testing.assert_close(module(images), expected)


@pytest.mark.parametrize("depth", [101, 152])
@pytest.mark.parametrize(("width", "sk"), [(1, False), (3, True)])
def test_spec_inferred_from_keys(depth: int, width: int, sk: bool) -> None:
    """Deep variants are checked on meta tensors: names and shapes, no weights."""
    with torch.device("meta"):
        resnet = RefResNet(depth, width, sk)
        raw = {"resnet": resnet.state_dict(), "head": RefHead(resnet.channels_out).state_dict()}
        model = SimCLRv2ResNet(depth, width, sk, projection_layers=1)
    assert detect_simclrv2(raw)
    converted = convert_simclrv2(raw, AdapterOptions(projection_layers=1))
    assert converted.backbone == _spec(depth, width, sk, 1)
    assert converted.preprocessing == IDENTITY
    assert describe_mismatch(model.state_dict(), converted.state_dict) == []


def _meta_raw(sk: bool = False) -> dict[str, Any]:
    with torch.device("meta"):
        resnet = RefResNet(50, 1, sk)
        return {"resnet": resnet.state_dict(), "head": RefHead(resnet.channels_out).state_dict()}


def test_detection_is_exclusive(tmp_path: Path, reference: Callable[[str], Reference]) -> None:
    raw = read_checkpoint(reference("r50_1x_sk0").path)
    assert detect_simclrv2(raw)
    assert not detect_torchvision(raw)
    import torchvision

    with torch.device("meta"):
        torchvision_weights = torchvision.models.resnet50().state_dict()
    assert not detect_simclrv2(torchvision_weights)
    assert not detect_simclrv2({"resnet": torchvision_weights, "head": {}})
    assert not detect_simclrv2({"resnet": raw["resnet"]})


def test_truncated_stage_fails_clearly(
    tmp_path: Path, reference: Callable[[str], Reference]
) -> None:
    raw = reference("r50_1x_sk0").raw()
    raw["resnet"] = {k: v for k, v in raw["resnet"].items() if not k.startswith("net.3.blocks.5.")}
    path = tmp_path / "truncated.pth"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=r"\(3, 4, 5, 3\) blocks.*truncated"):
        load_backbone(path)


def test_missing_tensor_fails_clearly(
    tmp_path: Path, reference: Callable[[str], Reference]
) -> None:
    raw = reference("r50_1x_sk0").raw()
    del raw["resnet"]["net.2.blocks.1.net.4.weight"]
    path = tmp_path / "missing.pth"
    torch.save(raw, path)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys.*net\.2\.blocks\.1\.net\.4"):
        load_backbone(path)


def test_gap_in_a_stage_fails_clearly() -> None:
    raw = _meta_raw()
    raw["resnet"] = {k: v for k, v in raw["resnet"].items() if not k.startswith("net.2.blocks.1.")}
    with pytest.raises(ValueError, match=r"net\.2 lacks blocks \[1\]"):
        convert_simclrv2(raw, AdapterOptions())


def test_mixed_variants_fail_clearly() -> None:
    raw = _meta_raw(sk=True)
    raw["resnet"] = {k: v for k, v in raw["resnet"].items() if not k.startswith("net.0.4.")}
    with pytest.raises(ValueError, match="mixes"):
        convert_simclrv2(raw, AdapterOptions())


def test_unreleased_width_fails_clearly() -> None:
    raw = _meta_raw()
    raw["resnet"]["net.0.0.weight"] = torch.empty(80, 3, 7, 7, device="meta")
    with pytest.raises(ValueError, match=r"stem convolution 'net\.0\.0\.weight'.*\[80, 3, 7, 7\]"):
        convert_simclrv2(raw, AdapterOptions())


def test_other_architecture_forced_fails_clearly(tmp_path: Path) -> None:
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(CheckpointError, match="'resnet'"):
        load_backbone(path, adapter="simclrv2")


def test_non_tensor_entries_fail_clearly() -> None:
    raw = _meta_raw()
    raw["resnet"]["net.0.0.weight"] = [1.0]
    with pytest.raises(ValueError, match="non-tensor entries"):
        convert_simclrv2(raw, AdapterOptions())


@pytest.mark.parametrize("layers", [4, -1])
def test_projection_layers_out_of_range(layers: int) -> None:
    with pytest.raises(ValueError, match="between 0 and 3"):
        convert_simclrv2(_meta_raw(), AdapterOptions(projection_layers=layers))


def test_projection_layers_beyond_a_short_head() -> None:
    raw = _meta_raw()
    raw["head"] = {k: v for k, v in raw["head"].items() if k.startswith(("layers.0.", "layers.1."))}
    assert convert_simclrv2(raw, AdapterOptions(projection_layers=1)).backbone == _spec(
        50, 1, False, 1
    )
    with pytest.raises(ValueError, match="head has 1 layer"):
        convert_simclrv2(raw, AdapterOptions(projection_layers=2))
    del raw["head"]
    assert convert_simclrv2(raw, AdapterOptions()).dropped == ("resnet.fc.weight", "resnet.fc.bias")
    with pytest.raises(ValueError, match="'head'"):
        convert_simclrv2(raw, AdapterOptions(projection_layers=1))
