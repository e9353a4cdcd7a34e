"""``describe_checkpoint`` / ``format_description``: what a file holds and what loading keeps."""

import logging
from pathlib import Path

import pytest
import torch
import torchvision
from torch import Tensor, nn

from mile_ssl.adapters.inspect import describe_checkpoint, format_description
from mile_ssl.networks.backbones import BackboneSpec
from tests.layouts import byol

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _filler(value: Tensor) -> Tensor:
    return torch.zeros((), dtype=value.dtype).expand(value.shape)


def _lightly_file(path: Path) -> Path:
    """lightly's ``nn.Sequential(*list(resnet.children())[:-1])`` backbone plus a head."""
    with torch.device("meta"):
        model = nn.Module()
        model.backbone = nn.Sequential(*list(torchvision.models.resnet18().children())[:-1])
        model.projection_head = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 128))
    torch.save({key: _filler(value) for key, value in model.state_dict().items()}, path)
    return path


def test_description_of_a_lightly_file(tmp_path: Path) -> None:
    path = _lightly_file(tmp_path / "simclr.pth")
    description = describe_checkpoint(path)
    assert description == {
        "path": str(path),
        "format": "lightly",
        "backbone": {"name": "torchvision:resnet18", "kwargs": {}},
        "feature_dim": 512,
        "parameters": 11_176_512,
        "tensors": 120,
        "container": None,
        "source_prefix": "backbone.",
        "renamed": "nn.Sequential(*list(resnet.children())[:-1]) indices -> torchvision names",
        "kept": {
            "conv1.": 1,
            "bn1.": 5,
            "layer1.": 24,
            "layer2.": 30,
            "layer3.": 30,
            "layer4.": 30,
        },
        "filled_in": {},
        "dropped": {"projection_head.": 4},
        "non_finite": {},
        "preprocessing": IMAGENET,
    }

    text = format_description(description)
    lines = text.splitlines()
    assert lines[0] == f"checkpoint     {path}"
    assert lines[1] == "format         lightly"
    assert lines[2] == "backbone       torchvision:resnet18"
    assert lines[3] == "parameters     11,176,512 (512-d features)"
    assert lines[4] == "taken from     keys under 'backbone.'"
    assert lines[5] == (
        "renamed        nn.Sequential(*list(resnet.children())[:-1]) indices -> torchvision names"
    )
    assert lines[6] == "preprocessing  mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)"
    assert "kept: 120 tensors" in lines
    assert "  layer1.  24" in lines
    assert "dropped: 4 keys" in lines
    assert lines[-1] == "  projection_head.  4"


def test_explicit_adapter_and_backbone(tmp_path: Path) -> None:
    with torch.device("meta"):
        resnet = torchvision.models.resnet18()
    path = tmp_path / "plain.pth"
    torch.save({key: _filler(value) for key, value in resnet.state_dict().items()}, path)
    # A plain state dict names no architecture: its shapes tell it.
    assert describe_checkpoint(path)["backbone"] == {"name": "torchvision:resnet18", "kwargs": {}}
    description = describe_checkpoint(
        path,
        adapter="torchvision",
        backbone=BackboneSpec("torchvision:resnet18", {"cifar_stem": False}),
    )
    assert description["backbone"] == {
        "name": "torchvision:resnet18",
        "kwargs": {"cifar_stem": False},
    }
    assert description["source_prefix"] is None
    assert description["dropped"] == {"fc.": 2}
    text = format_description(description)
    assert "backbone       torchvision:resnet18 {'cifar_stem': False}" in text
    assert "taken from     the state dict as is" in text


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        describe_checkpoint(tmp_path / "absent.pth")


def test_nothing_dropped_is_said() -> None:
    description = {
        "path": "x.pt",
        "format": "mile_ssl",
        "backbone": {"name": "tiny_resnet", "kwargs": {"widths": [4, 8]}},
        "feature_dim": 8,
        "parameters": 10,
        "tensors": 2,
        "container": None,
        "source_prefix": None,
        "renamed": None,
        "kept": {"conv1.": 2},
        "filled_in": {},
        "dropped": {},
        "non_finite": {},
        "preprocessing": {"mean": [0.0], "std": [1.0]},
    }
    assert format_description(description).endswith("  conv1.  2\ndropped: nothing")


def test_counts_agree_with_loading_for_a_file_without_batchnorm_counters(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # DeepMind's BYOL pickle has no num_batches_tracked: loading sets the 53 counters.
    with caplog.at_level(logging.INFO, logger="mile_ssl.adapters.loading"):
        description = describe_checkpoint(byol(tmp_path))
    assert "loaded 265 tensors" in caplog.text
    assert description["tensors"] == sum(description["kept"].values()) == 265
    assert sum(description["filled_in"].values()) == 53
    text = format_description(description)
    assert "kept: 265 tensors" in text
    assert "not in the file: 53 BatchNorm num_batches_tracked counters" in text
