"""SwAV / DeepCluster-v2 files in facebookresearch/swav's layout, loaded end to end."""

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck, ResNet

from mile_ssl.adapters import AdapterOptions, CheckpointError
from mile_ssl.adapters.loading import load_backbone
from mile_ssl.adapters.registry import matching_adapters
from mile_ssl.adapters.swav import convert_swav, detect_swav
from mile_ssl.networks.backbones import BackboneSpec
from mile_ssl.networks.preprocessing import Preprocessing

IMAGES = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


class MultiPrototypes(nn.Module):
    """DeepCluster-v2's several prototype layers, named ``prototypes{i}``."""

    def __init__(self, output_dim: int, counts: list[int]) -> None:
        super().__init__()
        for index, count in enumerate(counts):
            self.add_module(f"prototypes{index}", nn.Linear(output_dim, count, bias=False))


class SwAVResNet50(ResNet):
    """The module tree of swav's ``src/resnet50.py``: a one-pixel pad before a conv1
    padded by 2, no ``fc``, a projection head and prototypes beside the trunk."""

    def __init__(self, multi_prototypes: bool) -> None:
        super().__init__(Bottleneck, [3, 4, 6, 3])
        del self.fc
        self.padding = nn.ConstantPad2d(1, 0.0)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=2, bias=False)
        self.projection_head = nn.Sequential(
            nn.Linear(2048, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Linear(256, 128)
        )
        self.prototypes: nn.Module = (
            MultiPrototypes(128, [300, 300, 300])
            if multi_prototypes
            else nn.Linear(128, 300, bias=False)
        )

    def forward_backbone(self, images: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.padding(images)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def _trained(module: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            assert layer.running_mean is not None and layer.running_var is not None
            layer.running_mean.normal_(0.0, 0.1, generator=generator)
            layer.running_var.uniform_(0.5, 2.0, generator=generator)
            layer.weight.data.normal_(1.0, 0.1, generator=generator)
            layer.bias.data.normal_(0.0, 0.1, generator=generator)
    return module.eval()


def _ddp(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"module.{key}": value for key, value in state_dict.items()}


@pytest.mark.parametrize(
    ("multi_prototypes", "wrap"),
    [
        pytest.param(False, False, id="swav-release-plain"),
        pytest.param(True, True, id="deepclusterv2-training-wrapped"),
    ],
)
def test_swav_layouts_load(tmp_path: Path, multi_prototypes: bool, wrap: bool) -> None:
    torch.manual_seed(0)
    model = SwAVResNet50(multi_prototypes)
    _trained(model, seed=1)
    state_dict = _ddp(model.state_dict())
    if multi_prototypes:
        assert "module.prototypes.prototypes2.weight" in state_dict
    else:
        assert "module.prototypes.weight" in state_dict
    raw: dict[str, Any] = state_dict
    if wrap:
        raw = {
            "epoch": 400,
            "state_dict": state_dict,
            "optimizer": {"state": {}, "param_groups": []},
        }
    path = tmp_path / "swav_800ep_pretrain.pth.tar"
    torch.save(raw, path)

    loaded = load_backbone(path)
    assert loaded.adapter == "swav"
    assert loaded.spec == BackboneSpec("torchvision:resnet50")
    assert loaded.preprocessing == Preprocessing(
        mean=(0.485, 0.456, 0.406), std=(0.228, 0.224, 0.225)
    )
    heads = [
        key
        for key in state_dict
        if key.startswith(("module.projection_head.", "module.prototypes."))
    ]
    assert sorted(loaded.dropped) == sorted(heads)
    with torch.no_grad():
        expected = model.forward_backbone(IMAGES)
        torch.testing.assert_close(loaded.module.eval()(IMAGES), expected)


def test_wide_resnet50w2_is_refused_by_name(tmp_path: Path) -> None:
    state_dict = {
        "module.conv1.weight": torch.zeros(128, 3, 7, 7),
        "module.layer1.0.conv1.weight": torch.zeros(128, 128, 1, 1),
        "module.prototypes.weight": torch.zeros(3000, 128),
    }
    path = tmp_path / "swav_RN50w2_400ep_pretrain.pth.tar"
    torch.save(state_dict, path)
    assert matching_adapters(state_dict) == ["swav"]
    with pytest.raises(CheckpointError, match="resnet50w2") as info:
        load_backbone(path)
    assert str(path) in str(info.value)
    assert "not supported" in str(info.value)


def test_detect_needs_resnet_and_swav_heads() -> None:
    t = torch.zeros(1)
    assert detect_swav({"conv1.weight": t, "prototypes.weight": t})
    assert detect_swav(
        {"state_dict": {"module.conv1.weight": t, "module.projection_head.0.weight": t}}
    )
    assert not detect_swav({"module.conv1.weight": t, "module.fc.weight": t})
    # lightly's SwAV benchmark keeps prototypes too, but next to "backbone.", not the trunk.
    assert not detect_swav({"backbone.conv1.weight": t, "prototypes.heads.0.weight": t})
    converted = convert_swav(
        {"conv1.weight": torch.zeros(64, 3, 7, 7), "prototypes.weight": t}, AdapterOptions()
    )
    assert list(converted.state_dict) == ["conv1.weight"]
    assert converted.dropped == ("prototypes.weight",)
    assert converted.expected_prefix is None
