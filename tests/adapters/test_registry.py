"""The adapter registry: registering, looking up and auto-detecting checkpoint formats."""

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from mile_ssl.adapters import (
    AdapterOptions,
    CheckpointError,
    ConvertedCheckpoint,
    available_adapters,
    drop,
    get_adapter,
    load_backbone,
    register_adapter,
    select,
    strip_prefix,
    unregister_adapter,
    unwrap,
)
from mile_ssl.networks.backbones import BackboneSpec, build_backbone
from mile_ssl.networks.preprocessing import Preprocessing

MARKER = "test_registry_marker"


@pytest.fixture
def registered() -> Iterator[list[str]]:
    """Names registered by a test, removed afterwards so the global registry stays clean."""
    names: list[str] = []
    yield names
    for name in names:
        unregister_adapter(name)


def _marked(value: str) -> Any:
    def detect(raw: Mapping[str, Any]) -> bool:
        return raw.get(MARKER) == value

    return detect


def _tiny_state_dict() -> dict[str, torch.Tensor]:
    module, _ = build_backbone(BackboneSpec("tiny_resnet", {"widths": [4, 8]}))
    return module.state_dict()


def test_builtin_adapters_are_registered() -> None:
    assert {"torchvision", "mile_ssl"} <= set(available_adapters())
    assert get_adapter("torchvision").name == "torchvision"


def test_duplicate_name_is_refused(registered: list[str]) -> None:
    @register_adapter("test_dup", detect=_marked("dup"))
    def first(raw: Mapping[str, Any]) -> ConvertedCheckpoint:
        return ConvertedCheckpoint(state_dict={})

    registered.append("test_dup")
    with pytest.raises(ValueError, match="'test_dup' is already registered"):
        register_adapter("test_dup", detect=_marked("dup"))(first)
    with pytest.raises(ValueError, match="already registered"):
        register_adapter("torchvision", detect=_marked("dup"))(first)
    assert get_adapter("test_dup").convert is first


def test_unknown_adapter_name_lists_available(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown checkpoint adapter 'nope'") as info:
        get_adapter("nope")
    assert "torchvision" in str(info.value) and "mile_ssl" in str(info.value)

    path = tmp_path / "weights.pt"
    torch.save(_tiny_state_dict(), path)
    with pytest.raises(ValueError, match="available adapters: .*mile_ssl.*torchvision"):
        load_backbone(path, adapter="nope", backbone=BackboneSpec("tiny_resnet"))


def test_auto_detect_ambiguity_names_file_and_matches(
    tmp_path: Path, registered: list[str]
) -> None:
    for name in ("test_amb_a", "test_amb_b"):
        register_adapter(name, detect=_marked("ambiguous"))(
            lambda raw: ConvertedCheckpoint(state_dict=unwrap(raw))
        )
        registered.append(name)
    path = tmp_path / "ambiguous.pt"
    torch.save({MARKER: "ambiguous", "state_dict": _tiny_state_dict()}, path)
    with pytest.raises(CheckpointError, match="several checkpoint adapters") as info:
        load_backbone(path)
    assert str(path) in str(info.value)
    assert "['test_amb_a', 'test_amb_b']" in str(info.value)


def test_auto_detect_none_names_file_and_available(tmp_path: Path) -> None:
    path = tmp_path / "unknown.pt"
    torch.save({"weird.key": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="no checkpoint adapter recognises") as info:
        load_backbone(path)
    message = str(info.value)
    assert str(path) in message
    assert "weird.key" in message
    assert "torchvision" in message and "mile_ssl" in message


def test_custom_adapter_loads_end_to_end(tmp_path: Path, registered: list[str]) -> None:
    @register_adapter("test_encoder", detect=_marked("encoder"))
    def convert(raw: Mapping[str, Any], options: AdapterOptions) -> ConvertedCheckpoint:
        state_dict = unwrap(raw)
        return ConvertedCheckpoint(
            state_dict=strip_prefix(select(state_dict, "encoder."), "encoder."),
            backbone=BackboneSpec("tiny_resnet", {"widths": [4, 8]}),
            preprocessing=Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3),
            dropped=tuple(drop(state_dict, "encoder.")),
        )

    registered.append("test_encoder")
    weights = _tiny_state_dict()
    state = {f"encoder.{key}": value for key, value in weights.items()}
    state["head.weight"] = torch.ones(3)
    path = tmp_path / "ssl.pth"
    torch.save({MARKER: "encoder", "model": state}, path)

    loaded = load_backbone(path)
    assert loaded.adapter == "test_encoder"
    assert loaded.source == path
    assert loaded.feature_dim == 8
    assert loaded.dropped == ("head.weight",)
    assert loaded.preprocessing == Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3)
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_forced_adapter_that_cannot_convert_names_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save(_tiny_state_dict(), path)
    with pytest.raises(CheckpointError, match="adapter 'mile_ssl' cannot convert") as info:
        load_backbone(path, adapter="mile_ssl")
    assert str(path) in str(info.value)


def test_fallback_adapter_is_asked_only_when_no_other_matches(
    tmp_path: Path, registered: list[str]
) -> None:
    for name, fallback in (("test_specific", False), ("test_fallback", True)):
        register_adapter(name, detect=_marked("both") if not fallback else bool, fallback=fallback)(
            lambda raw, options: ConvertedCheckpoint(state_dict=unwrap(raw))
        )
        registered.append(name)
    both, other = tmp_path / "both.pt", tmp_path / "other.pt"
    torch.save({MARKER: "both", "state_dict": _tiny_state_dict()}, both)
    torch.save({MARKER: "other", "state_dict": _tiny_state_dict()}, other)
    spec = BackboneSpec("tiny_resnet", {"widths": [4, 8]})
    assert load_backbone(both, backbone=spec).adapter == "test_specific"
    assert load_backbone(other, backbone=spec).adapter == "test_fallback"
