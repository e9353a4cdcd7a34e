import argparse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from mile_ssl.adapters import (
    AdapterOptions,
    CheckpointError,
    CheckpointMismatchError,
    ConvertedCheckpoint,
    available_adapters,
    drop,
    get_adapter,
    load_backbone,
    read_checkpoint,
    register_adapter,
    select,
    strip_prefix,
    unregister_adapter,
    unwrap,
)
from mile_ssl.backbones import BackboneSpec, build_backbone
from mile_ssl.preprocessing import Preprocessing

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


def test_missing_architecture_asks_for_backbone_name(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(1), "layer1.0.conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="set backbone.name") as info:
        load_backbone(path)
    assert str(path) in str(info.value)


def test_forced_adapter_that_cannot_convert_names_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save(_tiny_state_dict(), path)
    with pytest.raises(CheckpointError, match="adapter 'mile_ssl' cannot convert") as info:
        load_backbone(path, adapter="mile_ssl")
    assert str(path) in str(info.value)


def test_legacy_file_loads_into_matching_architecture(tmp_path: Path) -> None:
    spec = BackboneSpec("tiny_resnet", {"widths": [4, 8]})
    weights = _tiny_state_dict()
    legacy = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "legacy.pt"
    torch.save(legacy, path)
    loaded = load_backbone(path, adapter="torchvision", backbone=spec)
    for key, value in legacy.items():
        assert torch.equal(loaded.module.state_dict()[key], value)


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


def test_converted_checkpoint_rejects_non_tensors() -> None:
    with pytest.raises(TypeError, match="offending keys: \\['epoch'\\]"):
        not_tensors: dict[str, Any] = {"epoch": 3}
        ConvertedCheckpoint(state_dict=not_tensors)


def test_mismatch_error_is_a_value_error() -> None:
    assert issubclass(CheckpointMismatchError, ValueError)
    assert issubclass(CheckpointError, ValueError)
