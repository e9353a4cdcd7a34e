"""VISSL checkpoints, in the training nesting and the exported ``model_state_dict`` one."""

from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import Tensor, nn

from mile_ssl.adapters import AdapterOptions, CheckpointError
from mile_ssl.adapters.loading import load_backbone
from mile_ssl.adapters.registry import matching_adapters
from mile_ssl.adapters.vissl import convert_vissl, detect_vissl
from mile_ssl.networks.backbones import BackboneSpec
from mile_ssl.networks.preprocessing import Preprocessing


def _filler(shape: tuple[int, ...]) -> Tensor:
    """A tensor of the right shape stored as one element: for parts the test never runs."""
    return torch.zeros(()).expand(shape)


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    model.fc = nn.Identity()
    generator = torch.Generator().manual_seed(1)
    for layer in model.modules():
        if isinstance(layer, nn.BatchNorm2d):
            assert layer.running_var is not None
            layer.running_var.uniform_(0.5, 2.0, generator=generator)
    return model.eval()


def _trunk(resnet: nn.Module) -> dict[str, Tensor]:
    """ResNeXt trunk keys: torchvision's modules inside the ``_feature_blocks`` ModuleDict."""
    return {f"_feature_blocks.{key}": value for key, value in resnet.state_dict().items()}


SWAV_HEADS = {
    "0.projection_head.0.weight": (2048, 2048),
    "0.projection_head.0.bias": (2048,),
    "0.projection_head.1.weight": (2048,),
    "0.projection_head.3.weight": (128, 2048),
    "0.prototypes0.weight": (3000, 128),
}


def _training_checkpoint(trunk: dict[str, Tensor]) -> dict[str, Any]:
    heads = {key: _filler(shape) for key, shape in SWAV_HEADS.items()}
    return {
        "phase_idx": 799,
        "iteration": 400000,
        "loss": {"queue": {}},
        "iteration_num": 400000,
        "train_phase_idx": 399,
        "classy_state_dict": {
            "train": True,
            "base_model": {
                "model": {"trunk": trunk, "heads": heads},
                "meta": {"model_version": "vissl-0.1.6"},
            },
            "optimizer": {"state": {}, "param_groups": []},
            "phase_type": "train",
        },
        "type": "consolidated",
    }


@pytest.mark.parametrize("nesting", ["classy_state_dict", "model_state_dict"])
def test_trunk_loads_in_both_nestings(tmp_path: Path, resnet: nn.Module, nesting: str) -> None:
    trunk = _trunk(resnet)
    raw = (
        _training_checkpoint(trunk)
        if nesting == "classy_state_dict"
        else {"model_state_dict": trunk}
    )
    path = tmp_path / "model_final_checkpoint_phase799.torch"
    torch.save(raw, path)

    loaded = load_backbone(path)
    assert loaded.adapter == "vissl"
    assert loaded.spec == BackboneSpec("torchvision:resnet50")
    assert loaded.preprocessing == Preprocessing()
    if nesting == "classy_state_dict":
        assert loaded.expected_prefix == "trunk._feature_blocks."
        assert sorted(loaded.dropped) == sorted(f"heads.{key}" for key in SWAV_HEADS)
    else:
        assert loaded.expected_prefix == "_feature_blocks."
        assert loaded.dropped == ()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded.module.eval()(images), resnet(images))


def test_detection_and_non_resnext_trunk(tmp_path: Path) -> None:
    t = torch.zeros(1)
    assert detect_vissl({"model_state_dict": {"_feature_blocks.conv1.weight": t}})
    assert not detect_vissl({"model_state_dict": {"conv1.weight": t}})
    assert not detect_vissl({"classy_state_dict": {"base_model": {"model": {}}}})
    regnet = _training_checkpoint({"stem.0.weight": t})
    assert matching_adapters(regnet) == ["vissl"]
    with pytest.raises(ValueError, match="no '_feature_blocks.' keys"):
        convert_vissl(regnet, AdapterOptions())
    path = tmp_path / "regnet.torch"
    torch.save(regnet, path)
    with pytest.raises(CheckpointError, match="adapter 'vissl' cannot convert") as info:
        load_backbone(path)
    assert str(path) in str(info.value)
