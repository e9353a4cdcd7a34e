"""Exporting a fine-tuned ResNet-18: strict torchvision reload, same logits, safetensors, JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file

from mile_ssl.commands.export import export_checkpoint
from mile_ssl.commands.train import run_training
from mile_ssl.config import compose_train_config
from mile_ssl.finetune import MILeModule
from mile_ssl.networks.backbones import BackboneSpec, build_backbone
from mile_ssl.networks.preprocessing import Preprocessing
from mile_ssl.runs.finished_run import read_finished_run
from tests.conftest import (
    TINY_OVERRIDES,
    folder_run_overrides,
    mounted_tmpfs,
    run_cli_in_process,
    write_image_folder,
)

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def run_checkpoint(module_tmp_path: Path) -> Path:
    """Two MILe steps (one teacher, one student step) of a ResNet-18 on a tiny JPEG folder."""
    root = module_tmp_path / "images"
    write_image_folder(root / "train", classes=NUM_CLASSES, per_class=4, size=36)
    write_image_folder(root / "val", classes=NUM_CLASSES, per_class=1, size=36)
    overrides = [item for item in TINY_OVERRIDES if not item.startswith("backbone.kwargs")]
    config = compose_train_config(
        [
            *overrides,
            "backbone=resnet18",
            *folder_run_overrides(root),
        ]
    )
    return run_training(config, module_tmp_path / "run").last_checkpoint


def test_torchvision_export_reloads_strictly_with_identical_logits(
    run_checkpoint: Path, tmp_path: Path
) -> None:
    files = export_checkpoint(run_checkpoint, tmp_path / "out")
    assert set(files) == {"torchvision", "safetensors", "json"}

    state_dict = torch.load(files["torchvision"], map_location="cpu", weights_only=True)
    assert not any(
        "teacher" in key or key.startswith(("student.", "backbone.")) for key in state_dict
    )
    assert all(tensor.is_contiguous() for tensor in state_dict.values())
    model = torchvision.models.resnet18(num_classes=NUM_CLASSES)
    model.load_state_dict(state_dict, strict=True)
    model.eval()

    module = read_finished_run(run_checkpoint).build_module()
    student = module.student.float().eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = student(images)
        actual = model(images)
        teacher = module.teacher.float().eval()(images)  # type: ignore[union-attr]
    torch.testing.assert_close(actual, expected)
    # The teacher trained the first step and the student the second: they differ, and the
    # export is the student.
    assert not torch.allclose(teacher, expected)


def test_safetensors_hold_the_same_tensors(run_checkpoint: Path, tmp_path: Path) -> None:
    files = export_checkpoint(run_checkpoint, tmp_path, formats=("torchvision", "safetensors"))
    pth = torch.load(files["torchvision"], map_location="cpu", weights_only=True)
    safe = load_file(str(files["safetensors"]))
    assert set(safe) == set(pth)
    for key, tensor in pth.items():
        assert torch.equal(safe[key], tensor), key
    assert "fc.weight" in safe and safe["fc.weight"].shape == (NUM_CLASSES, 512)


def test_model_json_describes_the_export(run_checkpoint: Path, tmp_path: Path) -> None:
    files = export_checkpoint(run_checkpoint, tmp_path, formats=["safetensors"], image_size=32)
    assert set(files) == {"safetensors", "json"}
    description = json.loads(files["json"].read_text())
    assert description["architecture"] == {"name": "torchvision:resnet18", "kwargs": {}}
    assert description["naming"] == "torchvision"
    assert description["num_classes"] == NUM_CLASSES
    assert description["feature_dim"] == 512
    assert description["class_names"] == [f"n{index:08d}" for index in range(NUM_CLASSES)]
    preprocessing = description["preprocessing"]
    assert preprocessing["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert preprocessing["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert preprocessing["image_size"] == 32 and preprocessing["resize"] == 37
    assert description["method"]["name"] == "mile"
    assert description["method"]["multi_label"] is True
    assert description["mile"]["kt"] == 1
    assert description["formats"] == ["safetensors"]
    assert description["files"] == {"safetensors": "model.safetensors"}
    assert description["load"]["strict"] is True
    assert description["load"]["head"] == "fc"
    assert description["completed_steps"] == 2


def test_unknown_format_and_foreign_file_are_named(run_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="onnx"):
        export_checkpoint(run_checkpoint, tmp_path, formats=("onnx",))
    foreign = tmp_path / "plain.pth"
    torch.save({"weight": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="plain.pth"):
        export_checkpoint(foreign, tmp_path / "out")


def _saved_run(path: Path, name: str, kwargs: dict, num_classes: int = 3) -> MILeModule:
    """A run checkpoint as Lightning writes it (state dict plus MILeModule's entry)."""
    backbone, feature_dim = build_backbone(BackboneSpec(name, kwargs))
    module = MILeModule(
        backbone,
        feature_dim,
        num_classes,
        metadata={
            "backbone": {"name": name, "kwargs": kwargs},
            "preprocessing": Preprocessing().to_dict(),
            "class_names": [f"class{index}" for index in range(num_classes)],
        },
    )
    with torch.no_grad():  # make the student differ from the teacher and from the init
        for parameter in module.student.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return module


@pytest.mark.parametrize(
    ("name", "kwargs", "head"),
    [
        ("timm:resnet18", {}, "fc"),
        ("timm:vit_tiny_patch16_224", {"img_size": 32}, "head"),
        ("timm:convnext_atto", {}, "head.fc"),
    ],
)
def test_timm_export_uses_the_timm_classifier_name(
    name: str, kwargs: dict, head: str, tmp_path: Path
) -> None:
    import timm

    module = _saved_run(tmp_path / "run.ckpt", name, kwargs)
    files = export_checkpoint(tmp_path / "run.ckpt", tmp_path / "out")
    state_dict = torch.load(files["torchvision"], map_location="cpu", weights_only=True)
    assert f"{head}.weight" in state_dict and f"{head}.bias" in state_dict
    model = timm.create_model(name.split(":")[1], pretrained=False, num_classes=3, **kwargs)
    model.load_state_dict(state_dict, strict=True)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images), module.student.eval()(images))
    description = json.loads(files["json"].read_text())
    assert description["naming"] == "timm" and description["load"]["head"] == head


def test_other_backbones_keep_mile_ssl_names(tmp_path: Path) -> None:
    _saved_run(tmp_path / "run.ckpt", "tiny_resnet", {"widths": [8, 16]})
    files = export_checkpoint(tmp_path / "run.ckpt", tmp_path / "out")
    state_dict = torch.load(files["torchvision"], map_location="cpu", weights_only=True)
    assert {"head.weight", "head.bias"} <= set(state_dict)
    assert all(key.startswith(("backbone.", "head.")) for key in state_dict)
    description = json.loads(files["json"].read_text())
    assert description["naming"] == "mile_ssl"
    assert description["feature_dim"] == 16


def test_tf_same_padding_export_says_outputs_need_the_padding(tmp_path: Path) -> None:
    _saved_run(tmp_path / "run.ckpt", "torchvision:resnet18", {"tf_same_padding": True})
    files = export_checkpoint(tmp_path / "run.ckpt", tmp_path / "out", formats=("torchvision",))
    state_dict = torch.load(files["torchvision"], map_location="cpu", weights_only=True)
    torchvision.models.resnet18(num_classes=3).load_state_dict(state_dict, strict=True)
    load = json.loads(files["json"].read_text())["load"]
    assert load["identical_outputs"] is False
    assert "use_tf_same_padding" in load["note"]


def test_run_folder_and_its_image_size_are_found(run_checkpoint: Path, tmp_path: Path) -> None:
    run = run_checkpoint.parent.parent  # the folder training wrote, data.image_size=32
    files = export_checkpoint(run, tmp_path / "out", formats=("safetensors",))
    description = json.loads(files["json"].read_text())
    assert description["source_checkpoint"] == str(run_checkpoint)
    preprocessing = description["preprocessing"]
    assert (preprocessing["image_size"], preprocessing["resize"]) == (32, 37)
    # A checkpoint without its run folder records no size rather than a guess.
    (tmp_path / "alone.ckpt").write_bytes(run_checkpoint.read_bytes())
    files = export_checkpoint(tmp_path / "alone.ckpt", tmp_path / "alone", formats=("safetensors",))
    assert json.loads(files["json"].read_text())["preprocessing"]["image_size"] is None


def test_cifar_stem_export_keeps_the_stem_and_builds_it(tmp_path: Path) -> None:
    # solo-learn's CIFAR stem: a 3x3 stride-1 conv1 with padding 2, no max-pool.
    kwargs = {"cifar_stem": True, "cifar_stem_padding": 2}
    module = _saved_run(tmp_path / "run.ckpt", "torchvision:resnet18", kwargs)
    files = export_checkpoint(tmp_path / "run.ckpt", tmp_path / "out", formats=("torchvision",))
    state_dict = torch.load(files["torchvision"], map_location="cpu", weights_only=True)
    assert state_dict["conv1.weight"].shape == (64, 3, 3, 3)
    torch.testing.assert_close(
        state_dict["conv1.weight"], module.student.backbone.conv1.weight.detach().contiguous()
    )
    load = json.loads(files["json"].read_text())["load"]
    assert load["strict"] is True and "padding 2" in load["note"]
    assert "cifar_stem=" not in load["code"]  # not an argument of get_model
    _assert_snippet_rebuilds(files["json"], module)


def _run_snippet(code: str) -> torch.nn.Module:
    """Run ``code`` as a user would paste it: a fresh namespace; the ``model`` it makes."""
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec(compile(code, "model.json:load.code", "exec"), namespace)  # noqa: S102
    model = namespace["model"]
    assert isinstance(model, torch.nn.Module)
    return model


def _assert_snippet_rebuilds(
    json_path: Path, module: MILeModule, image_size: int = 32
) -> torch.nn.Module:
    """``load.code`` and ``load.model`` run as written; the loaded model is the student."""
    load = json.loads(json_path.read_text())["load"]
    model = _run_snippet(load["code"])
    assert not model.training  # the snippet ends in model.eval()
    built = _run_snippet(load["model"])  # builds the network, without weights
    assert set(built.state_dict()) == set(model.state_dict())
    images = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(images), module.student.eval()(images))
    return model


def test_every_snippet_runs_as_written_and_loads_the_student(
    run_checkpoint: Path, tmp_path: Path
) -> None:
    cases = {
        "resnet18": (run_checkpoint, None),
        "vit": (tmp_path / "vit.ckpt", ("timm:vit_tiny_patch16_224", {"img_size": 32})),
        "tiny": (tmp_path / "tiny.ckpt", ("tiny_resnet", {"widths": [8, 16]})),
    }
    for name, (checkpoint, saved) in cases.items():
        module = (
            read_finished_run(checkpoint).build_module()
            if saved is None
            else _saved_run(checkpoint, *saved)
        )
        for formats in (("torchvision",), ("safetensors",)):
            out = tmp_path / f"{name}_{formats[0]}"
            files = export_checkpoint(checkpoint, out, formats=formats)
            _assert_snippet_rebuilds(files["json"], module)


SIMCLRV2 = {"depth": 50, "width_multiplier": 1, "selective_kernel": False, "projection_layers": 0}


def test_simclrv2_sk0_exports_as_torchvision_resnet50(tmp_path: Path) -> None:
    module = _saved_run(tmp_path / "run.ckpt", "simclrv2", SIMCLRV2)
    files = export_checkpoint(tmp_path / "run.ckpt", tmp_path / "out", formats=("torchvision",))
    description = json.loads(files["json"].read_text())
    assert (
        description["naming"] == "torchvision" and description["load"]["library"] == "torchvision"
    )
    state_dict = torch.load(files["torchvision"], map_location="cpu", weights_only=True)
    model = torchvision.models.resnet50(num_classes=3)
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        student = module.student.eval()
        torch.testing.assert_close(model(images), student(images))
        model.fc = torch.nn.Identity()  # the features, not only the logits
        torch.testing.assert_close(model(images), student.backbone(images))
    _assert_snippet_rebuilds(files["json"], module, image_size=64)


def test_simclrv2_sk1_export_carries_its_definition_and_loads_without_mile_ssl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kwargs = SIMCLRV2 | {"selective_kernel": True}
    module = _saved_run(tmp_path / "run.ckpt", "simclrv2", kwargs)
    files = export_checkpoint(tmp_path / "run.ckpt", tmp_path / "out", formats=("safetensors",))
    description = json.loads(files["json"].read_text())
    assert description["naming"] == "mile_ssl"
    assert "selective kernels" in description["load"]["note"]
    assert "no torchvision or timm network" in description["load"]["note"]
    assert files["definition"] == tmp_path / "out" / "simclrv2_resnet.py"
    assert description["files"]["definition"] == "simclrv2_resnet.py"
    monkeypatch.setitem(sys.modules, "mile_ssl", None)  # import mile_ssl now fails
    with pytest.raises(ImportError):
        import mile_ssl.networks  # noqa: F401
    _assert_snippet_rebuilds(files["json"], module, image_size=64)


def test_out_that_cannot_be_a_folder_is_named(run_checkpoint: Path, tmp_path: Path) -> None:
    existing = tmp_path / "existing.txt"
    existing.write_text("keep me")
    before = sorted(path.name for path in tmp_path.iterdir())
    for out, expected in (
        (existing, f"--out {existing}: is not a folder"),
        (existing / "sub", f"--out {existing / 'sub'}: is not a folder ({existing} is a file)"),
    ):
        result = run_cli_in_process(
            ["export", f"checkpoint={run_checkpoint}", "--out", str(out)], tmp_path
        )
        assert result.returncode == 2
        assert result.stdout == ""
        (line,) = [line for line in result.stderr.splitlines() if "error:" in line]
        assert expected in line and "Errno" not in line
        assert "Traceback" not in result.stderr
    assert existing.read_text() == "keep me"
    assert sorted(path.name for path in tmp_path.iterdir()) == before


def test_out_on_a_read_only_file_system_is_named_and_nothing_is_left(
    run_checkpoint: Path, tmp_path: Path
) -> None:
    with mounted_tmpfs(tmp_path / "ro", "size=64k,ro") as mount:
        out = mount / "exported"
        result = run_cli_in_process(
            ["export", f"checkpoint={run_checkpoint}", "--out", str(out)], tmp_path
        )
        assert result.returncode == 2
        assert f"--out {out}: cannot write the export there: Read-only file system" in (
            result.stderr
        )
        assert list(mount.iterdir()) == []
    with mounted_tmpfs(tmp_path / "small", "size=64k") as mount:
        out = mount / "a" / "b"  # made by the export, removed when it cannot be written
        result = run_cli_in_process(
            ["export", f"checkpoint={run_checkpoint}", "--out", str(out)], tmp_path
        )
        assert result.returncode == 2
        assert f"--out {out}: cannot write the export there" in result.stderr
        assert list(mount.iterdir()) == []
