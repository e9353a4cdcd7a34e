"""Checkpoints as people save them: wrapped, prefixed, as a Sequential; exactly one network.

Files are written as users write them (``torch.save`` of a real torchvision ResNet-18's
state dict with random weights and BatchNorm statistics), and the loaded backbone must
compute exactly the original network's features.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import Tensor, nn

from mile_ssl.adapters import CheckpointError, load_backbone
from mile_ssl.adapters.architectures import RESNET_SEQUENTIAL
from mile_ssl.adapters.hand_saved import detect_hand_saved
from mile_ssl.adapters.reading import read_checkpoint
from mile_ssl.adapters.registry import matching_adapters
from mile_ssl.networks.backbones import BackboneSpec
from tests.conftest import folder_run_overrides, run_cli_in_process, write_image_folder
from tests.layouts import R18, _sequential, vit_shapes

IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
CPU = ["trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.progress_bar=false"]


def _resnet18() -> nn.Module:
    """A ResNet-18 with random weights and BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18()
    for module in resnet.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    return resnet.eval()


RESNET = _resnet18()
SEQUENTIAL = nn.Sequential(*list(RESNET.children())[:-1]).eval()
with torch.no_grad():
    FEATURES = SEQUENTIAL(IMAGES).flatten(1)


def _prefixed(prefix: str, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    return {prefix + key: value for key, value in state_dict.items()}


# name -> (what torch.save is given, adapter, container, prefix, renaming)
FILES: dict[str, tuple[Callable[[], Any], str, str | None, str | None, str | None]] = {
    "lightly tutorial": (
        lambda: {"resnet18_parameters": SEQUENTIAL.state_dict()},
        "hand_saved",
        "resnet18_parameters",
        None,
        RESNET_SEQUENTIAL,
    ),
    "{'model': sd}": (lambda: {"model": RESNET.state_dict()}, "torchvision", None, None, None),
    "{'net': sd}": (lambda: {"net": RESNET.state_dict()}, "torchvision", None, None, None),
    "{'state_dict': sd} under encoder.": (
        lambda: {"state_dict": _prefixed("encoder.", RESNET.state_dict()), "epoch": 90},
        "hand_saved",
        "state_dict",
        "encoder.",
        None,
    ),
    "{'state_dict': sd} under backbone.": (
        lambda: {"state_dict": _prefixed("backbone.", RESNET.state_dict())},
        "hand_saved",
        "state_dict",
        "backbone.",
        None,
    ),
    "{'model': sd} under module.model.": (
        lambda: {"model": _prefixed("module.model.", RESNET.state_dict()), "optimizer": {}},
        "hand_saved",
        "model",
        "module.model.",
        None,
    ),
    "nn.Sequential numbering": (
        lambda: SEQUENTIAL.state_dict(),
        "hand_saved",
        None,
        None,
        RESNET_SEQUENTIAL,
    ),
}


@pytest.mark.parametrize("case", list(FILES))
def test_hand_saved_file_gives_the_original_features(case: str, tmp_path: Path) -> None:
    contents, adapter, container, prefix, renaming = FILES[case]
    path = tmp_path / "model.pth"
    torch.save(contents(), path)
    loaded = load_backbone(path)
    assert loaded.adapter == adapter
    assert loaded.spec == BackboneSpec("torchvision:resnet18")
    assert (loaded.container, loaded.expected_prefix, loaded.renaming) == (
        container,
        prefix,
        renaming,
    )
    with torch.no_grad():
        assert torch.equal(loaded.module.eval()(IMAGES), FEATURES)


def test_lightly_adapter_named_reads_the_tutorial_file(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    torch.save({"resnet18_parameters": SEQUENTIAL.state_dict()}, path)
    loaded = load_backbone(path, adapter="lightly")
    assert loaded.container == "resnet18_parameters" and loaded.renaming == RESNET_SEQUENTIAL
    with torch.no_grad():
        assert torch.equal(loaded.module.eval()(IMAGES), FEATURES)


def test_classifier_is_dropped_under_its_file_name(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    torch.save({"state_dict": _prefixed("encoder.", RESNET.state_dict())}, path)
    assert load_backbone(path).dropped == ("encoder.fc.weight", "encoder.fc.bias")


def test_a_file_any_named_format_recognises_keeps_its_adapter() -> None:
    raw = {"model": dict(R18)}
    assert detect_hand_saved(raw)  # it is one network too, but torchvision's layout
    assert matching_adapters(raw) == ["torchvision"]


def test_a_vit_under_a_prefix(tmp_path: Path) -> None:
    path = tmp_path / "vit.pth"
    torch.save({"model": _prefixed("module.", vit_shapes("vit_tiny_patch16_224", 224))}, path)
    loaded = load_backbone(path)
    assert (loaded.adapter, loaded.expected_prefix) == ("hand_saved", "module.")
    assert loaded.spec == BackboneSpec("timm:vit_tiny_patch16_224")


def test_two_architectures_are_refused_with_both(tmp_path: Path) -> None:
    path = tmp_path / "two.pth"
    two = {"resnet18_parameters": _sequential("resnet18")}
    two["resnet34_parameters"] = _sequential("resnet34")
    torch.save(two, path)
    with pytest.raises(CheckpointError, match="2 networks fit") as info:
        load_backbone(path)
    message = str(info.value)
    assert str(path) in message
    assert "'resnet18_parameters'" in message and "'torchvision:resnet18'" in message
    assert "'resnet34_parameters'" in message and "'torchvision:resnet34'" in message
    assert "backbone.name=torchvision:resnet18" in message
    # Naming one of the architectures chooses it.
    chosen = load_backbone(path, backbone=BackboneSpec("torchvision:resnet34"))
    assert chosen.container == "resnet34_parameters"


def test_two_copies_of_one_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "online_target.pth"
    torch.save({"online": dict(R18), "target": dict(R18)}, path)
    with pytest.raises(CheckpointError, match="2 networks fit") as info:
        load_backbone(path)
    assert "'online'" in str(info.value) and "'target'" in str(info.value)
    assert "torch.save(checkpoint['online'], 'backbone.pth')" in str(info.value)


@pytest.mark.parametrize(
    ("case", "state_dict"),
    [
        ("a head beside the network", {**R18, "projector.0.weight": torch.zeros(8, 512)}),
        ("one tensor of another shape", {**R18, "bn1.weight": torch.zeros(65)}),
        (
            "a Sequential child without tensors",
            {**_sequential("resnet18"), "8.weight": R18["bn1.weight"]},
        ),
    ],
)
def test_not_every_tensor_fitting_is_not_recognised(
    case: str, state_dict: dict[str, Tensor], tmp_path: Path
) -> None:
    path = tmp_path / "other.pth"
    torch.save({"weights": state_dict}, path)
    assert not detect_hand_saved(read_checkpoint(path))
    with pytest.raises(CheckpointError, match="no checkpoint adapter recognises"):
        load_backbone(path)


@pytest.fixture(scope="module")
def images(module_tmp_path: Path) -> Path:
    write_image_folder(module_tmp_path / "images" / "train", per_class=4, size=32)
    write_image_folder(module_tmp_path / "images" / "val", per_class=2, size=32)
    return module_tmp_path / "images"


def test_lightly_tutorial_file_trains_with_one_command(images: Path, tmp_path: Path) -> None:
    torch.save({"resnet18_parameters": SEQUENTIAL.state_dict()}, tmp_path / "model.pth")
    result = run_cli_in_process(
        [
            "train",
            "checkpoint.path=model.pth",
            *folder_run_overrides(images),
            *CPU,
            "hydra.run.dir=run",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["adapter"] == "hand_saved"
    assert metrics["backbone"] == "torchvision:resnet18"


@pytest.fixture
def nan_file(tmp_path: Path) -> Path:
    state_dict = {key: value.clone() for key, value in RESNET.state_dict().items()}
    state_dict["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    state_dict["layer3.1.bn2.running_var"][:2] = float("inf")
    path = tmp_path / "diverged.pth"
    torch.save({"state_dict": _prefixed("encoder.", state_dict)}, path)
    return path


def test_non_finite_weights_stop_training_naming_file_and_tensor(
    nan_file: Path, images: Path, tmp_path: Path
) -> None:
    result = run_cli_in_process(
        ["train", f"checkpoint.path={nan_file}", *folder_run_overrides(images), *CPU],
        tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    message = result.stderr[result.stderr.index("error:") :]
    assert str(nan_file) in message and "'layer2.0.conv1.weight'" in message
    assert "NaN or infinite in 1 of its 73728 values (2 tensors in all)" in message
    assert "lr" not in message
    assert not (tmp_path / "runs").exists()


def test_inspect_lists_non_finite_weights(nan_file: Path, tmp_path: Path) -> None:
    text = run_cli_in_process(["inspect", str(nan_file)], tmp_path)
    assert text.returncode == 0, text.stderr[-3000:]
    assert "NOT FINITE: 2 tensors hold NaN or infinity" in text.stdout
    assert "  layer2.0.conv1.weight     1" in text.stdout
    assert "  layer3.1.bn2.running_var  2" in text.stdout
    assert "taken from     keys under 'encoder.' in 'state_dict'" in text.stdout
    as_json = run_cli_in_process(["inspect", str(nan_file), "--json"], tmp_path)
    assert json.loads(as_json.stdout)["non_finite"] == {
        "layer2.0.conv1.weight": 1,
        "layer3.1.bn2.running_var": 2,
    }


@pytest.mark.parametrize(
    ("command", "hint"),
    [
        (["train", "checkpoint.path=mystery.pt", *CPU], "Pass checkpoint.adapter=<name>"),
        (["inspect", "mystery.pt"], "Pass --adapter <name>"),
    ],
)
def test_hint_names_the_setting_of_the_command(
    command: list[str], hint: str, images: Path, tmp_path: Path
) -> None:
    torch.save({"weights": {"enc.0.weight": torch.zeros(2)}}, tmp_path / "mystery.pt")
    data = folder_run_overrides(images) if command[0] == "train" else []
    result = run_cli_in_process([*command, *data], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert hint in result.stderr and "hand_saved: " in result.stderr
