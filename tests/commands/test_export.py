"""Exporting a fine-tuned ResNet-18: strict torchvision reload, same logits, safetensors, JSON."""

from __future__ import annotations

import json
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
from tests.conftest import TINY_OVERRIDES, folder_run_overrides, write_image_folder

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def run_checkpoint(module_tmp_path: Path, one_thread: None) -> Path:
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
    name: str, kwargs: dict, head: str, tmp_path: Path, one_thread: None
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


def test_cifar_stem_export_keeps_the_stem_and_says_how_to_build_it(tmp_path: Path) -> None:
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
    assert load["strict"] is False and "padding 2" in load["note"]
    assert "cifar_stem" not in load["model"]
