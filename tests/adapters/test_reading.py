"""Reading files safely: weights-only torch files, safetensors, ``.pkl`` and corrupt files."""

import argparse
import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from mile_ssl.adapters.errors import CheckpointError
from mile_ssl.adapters.loading import load_backbone
from mile_ssl.adapters.reading import read_checkpoint
from mile_ssl.networks.backbones import BackboneSpec, build_backbone


def _tiny_state_dict() -> dict[str, torch.Tensor]:
    module, _ = build_backbone(BackboneSpec("tiny_resnet", {"widths": [4, 8]}))
    return module.state_dict()


def test_safetensors_file_loads(tmp_path: Path) -> None:
    spec = BackboneSpec("tiny_resnet", {"widths": [4, 8]})
    weights = _tiny_state_dict()
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, path)
    assert set(read_checkpoint(path)) == set(weights)
    loaded = load_backbone(path, adapter="torchvision", backbone=spec)
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_read_checkpoint_missing_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.pt"
    with pytest.raises(FileNotFoundError, match="absent.pt") as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)


def test_read_checkpoint_refuses_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "unsafe.pt"
    torch.save({"state_dict": _tiny_state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError, match="arbitrary pickled") as info:
        read_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    assert "refused for safety" in message
    assert "argparse.Namespace" in message


def test_read_checkpoint_refuses_non_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="holds a list, expected a mapping") as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)


def test_read_checkpoint_refuses_garbage(tmp_path: Path) -> None:
    for name, content in [("notes.pt", b"not a checkpoint"), ("cut.pt", b"PK\x03\x04")]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match="cannot read") as info:
            read_checkpoint(path)
        assert str(path) in str(info.value)

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 4)
    with pytest.raises(CheckpointError, match="safetensors") as info:
        read_checkpoint(broken)
    assert str(broken) in str(info.value)


def test_pkl_of_arrays_or_torch_save_reaches_other_adapters(tmp_path: Path) -> None:
    """The .pkl reader is not BYOL-only: numpy pickles and torch.save files load too."""
    torch.manual_seed(0)
    weights = torchvision.models.resnet18(weights=None).state_dict()
    arrays = tmp_path / "resnet18_arrays.pkl"
    arrays.write_bytes(pickle.dumps({key: value.numpy() for key, value in weights.items()}))
    saved = tmp_path / "resnet18_torch.pkl"
    torch.save(weights, saved)
    for path in (arrays, saved):
        loaded = load_backbone(path, backbone=BackboneSpec("torchvision:resnet18"))
        assert loaded.adapter == "torchvision"
        assert torch.equal(loaded.module.state_dict()["conv1.weight"], weights["conv1.weight"])
