from pathlib import Path

import pytest
import torch
from torch import nn

from mile_ssl.adapters import (
    MILE_SSL_FORMAT,
    AdapterOptions,
    CheckpointError,
    convert_mile_ssl,
    detect_mile_ssl,
    load_backbone,
    read_checkpoint,
    save_backbone_checkpoint,
)
from mile_ssl.networks.backbones import BackboneSpec, build_backbone
from mile_ssl.networks.preprocessing import IDENTITY, Preprocessing
from tests.conftest import TINY_OVERRIDES, run_cli_in_process

SPEC = BackboneSpec("tiny_resnet", {"widths": [8, 16], "blocks_per_stage": 2})
PREPROCESSING = Preprocessing(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


def _trained_like(spec: BackboneSpec) -> nn.Module:
    """A backbone whose BatchNorm statistics differ from the defaults, as after training."""
    module, _ = build_backbone(spec)
    generator = torch.Generator().manual_seed(0)
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            assert layer.running_mean is not None and layer.running_var is not None
            layer.running_mean.normal_(generator=generator)
            layer.running_var.uniform_(0.5, 2.0, generator=generator)
            layer.weight.data.normal_(1.0, 0.1, generator=generator)
    return module


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, nn.Module]:
    module = _trained_like(SPEC)
    path = save_backbone_checkpoint(
        tmp_path / "run" / "backbone.pt",
        module,
        SPEC,
        PREPROCESSING,
        metadata={"source": tmp_path / "mocov2.pth", "step": 1200, "widths": (8, 16)},
    )
    return path, module


def test_round_trip_rebuilds_same_backbone(saved: tuple[Path, nn.Module]) -> None:
    path, original = saved
    loaded = load_backbone(path)
    assert loaded.adapter == "mile_ssl"
    assert loaded.source == path
    assert loaded.spec == SPEC
    assert loaded.feature_dim == 16
    assert loaded.preprocessing == PREPROCESSING
    assert loaded.dropped == ()

    expected = original.state_dict()
    actual = loaded.module.state_dict()
    assert list(actual) == list(expected)
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key

    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    original.eval()
    loaded.module.eval()
    with torch.no_grad():
        assert torch.equal(loaded.module(images), original(images))


def test_file_holds_only_plain_data(saved: tuple[Path, nn.Module], tmp_path: Path) -> None:
    path, _ = saved
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == MILE_SSL_FORMAT
    assert raw["version"] == 1
    assert raw["backbone"] == {
        "name": "tiny_resnet",
        "kwargs": {"widths": [8, 16], "blocks_per_stage": 2},
    }
    assert raw["preprocessing"] == PREPROCESSING.to_dict()
    assert raw["metadata"] == {
        "source": str(tmp_path / "mocov2.pth"),
        "step": 1200,
        "widths": [8, 16],
    }
    assert type(raw["state_dict"]) is dict
    assert [p.name for p in path.parent.iterdir()] == ["backbone.pt"]


def test_overwrite_replaces_previous_file(saved: tuple[Path, nn.Module]) -> None:
    path, _ = saved
    other = _trained_like(SPEC)
    with torch.no_grad():
        other.get_parameter("conv1.weight").zero_()
    save_backbone_checkpoint(path, other, SPEC, IDENTITY)
    loaded = load_backbone(path)
    assert loaded.preprocessing == IDENTITY
    assert torch.equal(loaded.module.state_dict()["conv1.weight"], torch.zeros(8, 3, 3, 3))
    assert [p.name for p in path.parent.iterdir()] == ["backbone.pt"]


def test_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    destination = tmp_path / "taken.pt"
    destination.mkdir()
    module, _ = build_backbone(SPEC)
    with pytest.raises(OSError):
        save_backbone_checkpoint(destination, module, SPEC, PREPROCESSING)
    assert [p.name for p in tmp_path.iterdir()] == ["taken.pt"]
    assert destination.is_dir()


def test_save_refuses_module_that_does_not_match_spec(tmp_path: Path) -> None:
    module, _ = build_backbone(BackboneSpec("tiny_resnet", {"widths": [8, 32]}))
    path = tmp_path / "wrong.pt"
    with pytest.raises(ValueError, match="do not match backbone 'tiny_resnet'") as info:
        save_backbone_checkpoint(path, module, SPEC, PREPROCESSING)
    assert "stages.1.0.conv1.weight" in str(info.value)
    assert not path.exists()


def test_save_refuses_unsafe_metadata(tmp_path: Path) -> None:
    module, _ = build_backbone(SPEC)
    path = tmp_path / "meta.pt"
    with pytest.raises(TypeError, match=r"metadata\['optimizer'\] is a SGD"):
        save_backbone_checkpoint(
            path,
            module,
            SPEC,
            PREPROCESSING,
            metadata={"optimizer": torch.optim.SGD(module.parameters(), lr=0.1)},
        )
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_safetensors_name(tmp_path: Path) -> None:
    module, _ = build_backbone(SPEC)
    with pytest.raises(ValueError, match="use a .pt or .pth name"):
        save_backbone_checkpoint(tmp_path / "b.safetensors", module, SPEC, PREPROCESSING)


def test_unknown_version_is_refused(saved: tuple[Path, nn.Module], tmp_path: Path) -> None:
    path, _ = saved
    raw = read_checkpoint(path)
    raw["version"] = 2
    future = tmp_path / "future.pt"
    torch.save(raw, future)
    with pytest.raises(CheckpointError, match="unsupported mile_ssl.backbone version 2") as info:
        load_backbone(future)
    assert str(future) in str(info.value)
    with pytest.raises(ValueError, match="version 2"):
        convert_mile_ssl(raw, AdapterOptions())


def test_mismatching_backbone_argument_is_refused(saved: tuple[Path, nn.Module]) -> None:
    path, _ = saved
    with pytest.raises(CheckpointError, match="was requested") as info:
        load_backbone(path, backbone=BackboneSpec("tiny_resnet", {"widths": [8, 32]}))
    assert str(path) in str(info.value)
    # The message says which values to set instead.
    assert "backbone=auto" in str(info.value)
    assert "+backbone.kwargs.widths=[8,16]" in str(info.value)
    with pytest.raises(CheckpointError, match="was requested"):
        load_backbone(path, backbone=BackboneSpec("torchvision:resnet18"))


def test_matching_backbone_argument_is_accepted(saved: tuple[Path, nn.Module]) -> None:
    path, _ = saved
    given = BackboneSpec("tiny_resnet", {"widths": (8, 16), "blocks_per_stage": 2})
    spec = load_backbone(path, backbone=given).spec
    assert spec.name == given.name and spec.kwargs == {"widths": [8, 16], "blocks_per_stage": 2}


def test_naming_the_architecture_without_its_details_takes_the_files(
    saved: tuple[Path, nn.Module],
) -> None:
    path, _ = saved
    spec = load_backbone(path, backbone=BackboneSpec("tiny_resnet", {"widths": [8, 16]})).spec
    assert spec.kwargs == {"widths": [8, 16], "blocks_per_stage": 2}


def test_malformed_field_is_named(saved: tuple[Path, nn.Module], tmp_path: Path) -> None:
    path, _ = saved
    raw = read_checkpoint(path)
    del raw["backbone"]
    broken = tmp_path / "broken.pt"
    torch.save(raw, broken)
    with pytest.raises(CheckpointError, match="field 'backbone' should be a Mapping"):
        load_backbone(broken)


def test_detect_only_own_format(tmp_path: Path) -> None:
    spec = BackboneSpec("torchvision:resnet18")
    module, _ = build_backbone(spec)
    path = save_backbone_checkpoint(tmp_path / "resnet18.pt", module, spec, Preprocessing())
    raw = read_checkpoint(path)
    assert detect_mile_ssl(raw)
    assert not detect_mile_ssl(raw["state_dict"])
    assert not detect_mile_ssl({"format": "other"})
    # ResNet tensor names inside must not make the torchvision adapter claim it too.
    assert load_backbone(path).adapter == "mile_ssl"


def _train(args: list[str], cwd: Path) -> None:
    result = run_cli_in_process(["train", *args, "trainer.max_steps=2"], cwd)
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_runs_checkpoint_starts_a_new_fine_tuning_from_its_student(tmp_path: Path) -> None:
    """SimCLR-v2's distillation student may start from the fine-tuned teacher: one path."""
    teacher = tmp_path / "teacher"
    copy_variant = ["method=mile", "mile.variant=copy", "mile.kt=1", "mile.ks=1"]
    _train([*TINY_OVERRIDES, *copy_variant, f"hydra.run.dir={teacher}"], tmp_path)
    last = teacher / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)["state_dict"]

    loaded = load_backbone(last)

    assert loaded.adapter == "mile_ssl_run"
    assert loaded.spec == BackboneSpec("tiny_resnet", {"widths": [8, 16], "blocks_per_stage": 1})
    student = {k.removeprefix("student.backbone."): v for k, v in saved.items()}
    state = loaded.module.state_dict()
    assert state.keys() == {k for k in student if not k.startswith(("teacher.", "student."))}
    assert all(torch.equal(state[key], student[key]) for key in state)
    assert any(key.startswith("teacher.") for key in loaded.dropped)
    assert {"student.head.weight", "student.head.bias"} <= set(loaded.dropped)
    # The run folder stands for its checkpoints/last.ckpt, as for eval and export.
    from_folder = load_backbone(teacher)
    assert from_folder.source == last and from_folder.adapter == "mile_ssl_run"

    # Another method, another run folder, no backbone named: the file says which.
    result = run_cli_in_process(
        [
            "train",
            f"checkpoint.path={last}",
            *[o for o in TINY_OVERRIDES if not o.startswith(("checkpoint=", "backbone"))],
            "method=sigmoid",
            "trainer.max_steps=2",
            "hydra.run.dir=student",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "with adapter 'mile_ssl_run'" in result.stdout + result.stderr
    assert (tmp_path / "student" / "checkpoints" / "last.ckpt").is_file()


def test_a_run_checkpoint_without_its_network_record_names_the_field(tmp_path: Path) -> None:
    _train([*TINY_OVERRIDES, "method=softmax", "hydra.run.dir=run"], tmp_path)
    raw = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    del raw["mile_ssl"]["metadata"]["preprocessing"]
    broken = tmp_path / "broken.ckpt"
    torch.save(raw, broken)

    with pytest.raises(CheckpointError, match="run checkpoint field 'preprocessing'"):
        load_backbone(broken)
