"""State-dict surgery: finding, selecting, dropping and renaming a checkpoint's tensors."""

import pytest
import torch

from mile_ssl.adapters.state_dicts import drop, select, strip_prefix, unwrap


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
