"""``adapter="auto"``: exactly one adapter recognises each upstream layout, and failures say why.

Each layout is written with its real key names, nesting and shapes; the tensors are
stored as one element each (``expand``), since detection and strict loading only look at
names and shapes. Feature equality is checked per format in the other test files.
"""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mile_ssl.adapters import (
    CheckpointError,
    CheckpointMismatchError,
    ConvertedCheckpoint,
)
from mile_ssl.adapters.inspect import describe_checkpoint, format_description
from mile_ssl.adapters.loading import load_backbone
from mile_ssl.adapters.reading import read_checkpoint, resolve_checkpoint_path
from mile_ssl.adapters.registry import matching_adapters, register_adapter, unregister_adapter
from mile_ssl.adapters.state_dicts import unwrap
from tests.layouts import LAYOUTS, moco, solo_learn


@pytest.mark.parametrize(
    ("layout", "expected"), [(name, adapter) for name, (adapter, _) in LAYOUTS.items()]
)
def test_auto_detects_exactly_one_adapter_and_describes(
    tmp_path: Path, layout: str, expected: str
) -> None:
    path = LAYOUTS[layout][1](tmp_path)
    file = resolve_checkpoint_path(path)
    assert matching_adapters(read_checkpoint(file), file) == [expected]

    description = describe_checkpoint(path)
    assert description["format"] == expected
    assert description["path"] == str(file)
    assert description["parameters"] > 0
    assert sum(description["kept"].values()) == description["tensors"]
    assert json.loads(json.dumps(description)) == description
    text = format_description(description)
    assert f"format         {expected}" in text
    assert description["backbone"]["name"] in text


@pytest.fixture
def registered() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        unregister_adapter(name)


def test_ambiguous_file_lists_candidates_with_evidence(
    tmp_path: Path, registered: list[str]
) -> None:
    path = moco(2)(tmp_path)
    register_adapter(
        "test_moco_clone", detect=lambda raw: "arch" in raw, signature="any file with an 'arch' key"
    )(lambda raw, options: ConvertedCheckpoint(state_dict=unwrap(raw)))
    registered.append("test_moco_clone")
    with pytest.raises(CheckpointError, match="several checkpoint adapters") as info:
        load_backbone(path)
    message = str(info.value)
    assert str(path) in message
    assert "['mocov2', 'test_moco_clone']" in message
    assert "test_moco_clone: any file with an 'arch' key" in message
    assert "mocov2: 'state_dict' with a ResNet under 'module.encoder_q.'" in message
    assert "'module.encoder_q.': 320" in message and "'module.queue'" in message
    # Naming the adapter always works.
    assert load_backbone(path, adapter="mocov2").adapter == "mocov2"


def test_unknown_format_lists_evidence_and_candidates(tmp_path: Path) -> None:
    path = tmp_path / "mystery.pt"
    torch.save(
        {
            "step": 5,
            "weights": {
                "enc.blocks.0.weight": torch.zeros(2),
                "enc.blocks.1.weight": torch.zeros(2),
            },
        },
        path,
    )
    with pytest.raises(CheckpointError, match="no checkpoint adapter recognises") as info:
        load_backbone(path)
    message = str(info.value)
    assert str(path) in message
    assert "'step' (int), 'weights' (mapping of 2)" in message
    assert "state dict under 'weights': 2 tensors" in message and "'enc.blocks.': 2" in message
    for adapter in ("mocov2", "swav", "solo_learn", "lightly", "mmselfsup", "vissl", "dino"):
        assert f"    {adapter}: " in message


def test_empty_dict_is_named(tmp_path: Path) -> None:
    path = tmp_path / "empty.pth"
    torch.save({}, path)
    with pytest.raises(CheckpointError, match="no checkpoint adapter recognises") as info:
        load_backbone(path)
    assert str(path) in str(info.value)
    assert "empty mapping" in str(info.value)


def test_truncated_file_is_named(tmp_path: Path) -> None:
    path = moco(2)(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read .* corrupted") as info:
        load_backbone(path)
    assert str(path) in str(info.value)


def test_wrong_architecture_names_file_and_prefix(tmp_path: Path) -> None:
    args = {"method": "byol", "backbone": {"name": "resnet50"}, "data": {"dataset": "imagenet"}}
    path = solo_learn("backbone.", args, folder=False)(tmp_path)  # resnet18 weights
    with pytest.raises(
        CheckpointMismatchError, match="does not match backbone 'torchvision:resnet50'"
    ) as info:
        load_backbone(path)
    message = str(info.value)
    assert str(path) in message
    assert "taken from keys under 'backbone.'" in message
    assert "shape mismatches" in message and "missing keys" in message
