"""State-dict surgery: finding, selecting, dropping and renaming a checkpoint's tensors."""

import pytest
import torch

from mile_ssl.adapters.state_dicts import (
    common_prefix,
    drop,
    select,
    strip_prefix,
    top_level_state_dicts,
    unwrap,
)


def test_unwrap_finds_nested_state_dict() -> None:
    tensors = {"a.weight": torch.zeros(1)}
    assert unwrap(tensors) == tensors
    assert unwrap({"epoch": 3, "state_dict": tensors}) == tensors
    assert unwrap({"model": {"module": tensors}, "optimizer": {}}) == tensors
    assert unwrap({"teacher": tensors}, keys=("teacher",)) == tensors
    with pytest.raises(ValueError, match="no state dict found at \\['model'\\]"):
        unwrap({"model": {"epoch": 1}})
    with pytest.raises(ValueError, match="no state dict found at the top level"):
        unwrap({"epoch": 1})


def test_strip_prefix_only_at_start() -> None:
    t = torch.zeros(1)
    stripped = strip_prefix(
        {"module.encoder.module.x": t, "head.module.y": t, "module.z": t}, "module."
    )
    assert list(stripped) == ["encoder.module.x", "head.module.y", "z"]
    with pytest.raises(ValueError, match="collide on 'x'"):
        strip_prefix({"module.x": t, "x": t}, "module.")


def test_select_and_drop_are_complements() -> None:
    t = torch.zeros(1)
    state = {"fc.weight": t, "fc2.weight": t, "conv.fc.weight": t}
    assert list(select(state, "fc.")) == ["fc.weight"]
    assert list(drop(state, "fc.")) == ["fc2.weight", "conv.fc.weight"]


def test_top_level_state_dicts_by_key() -> None:
    tensors = {"a.weight": torch.zeros(1)}
    assert top_level_state_dicts(tensors) == {None: tensors}
    found = top_level_state_dicts({"params": tensors, "ema": tensors, "epoch": 3, "opt": {}})
    assert found == {"params": tensors, "ema": tensors}
    assert top_level_state_dicts({"epoch": 3}) == {}


def test_common_prefix_is_whole_module_names() -> None:
    assert common_prefix(["module.model.conv1.weight", "module.model.layer1.0.bn1.bias"]) == (
        "module.model."
    )
    assert common_prefix(["conv1.weight", "bn1.weight"]) == ""
    assert common_prefix(["layer1.weight", "layer10.weight"]) == ""
    assert common_prefix(["encoder.weight"]) == "encoder."
    assert common_prefix(["weight"]) == "" and common_prefix([]) == ""
