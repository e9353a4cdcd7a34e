"""``load_backbone``: architecture resolution, strict loading and its errors."""

from pathlib import Path

import pytest
import torch

from mile_ssl.adapters.errors import INSPECT_OPTIONS, CheckpointError, CheckpointMismatchError
from mile_ssl.adapters.loading import load_backbone
from mile_ssl.networks.backbones import BackboneSpec, build_backbone


def _tiny_state_dict() -> dict[str, torch.Tensor]:
    module, _ = build_backbone(BackboneSpec("tiny_resnet", {"widths": [4, 8]}))
    return module.state_dict()


def test_missing_architecture_asks_for_backbone_name(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(1), "layer1.0.conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="set backbone.name=<name>") as info:
        load_backbone(path)
    assert str(path) in str(info.value)
    # inspect's options, where inspect loads it.
    with pytest.raises(CheckpointError, match="set --backbone <name>"):
        load_backbone(path, syntax=INSPECT_OPTIONS)


def test_legacy_file_loads_into_matching_architecture(tmp_path: Path) -> None:
    spec = BackboneSpec("tiny_resnet", {"widths": [4, 8]})
    weights = _tiny_state_dict()
    legacy = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "legacy.pt"
    torch.save(legacy, path)
    loaded = load_backbone(path, adapter="torchvision", backbone=spec)
    for key, value in legacy.items():
        assert torch.equal(loaded.module.state_dict()[key], value)


def test_mismatch_error_is_a_value_error() -> None:
    assert issubclass(CheckpointMismatchError, ValueError)
    assert issubclass(CheckpointError, ValueError)
