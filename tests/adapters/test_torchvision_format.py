import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torchvision

from mile_ssl.adapters import (
    AdapterOptions,
    CheckpointError,
    CheckpointMismatchError,
    convert_torchvision,
    detect_torchvision,
    load_backbone,
    read_checkpoint,
)
from mile_ssl.networks.backbones import BackboneSpec, build_backbone
from mile_ssl.networks.preprocessing import Preprocessing

RESNET18 = BackboneSpec("torchvision:resnet18")


@pytest.fixture(scope="module")
def resnet18() -> dict[str, torch.Tensor]:
    """A full torchvision ResNet-18 state dict, classifier included, as the zoo ships it."""
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


def _backbone_tensors(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value for key, value in weights.items() if not key.startswith("fc.")}


def _assert_loaded(module: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    loaded = module.state_dict()
    expected = _backbone_tensors(weights)
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_plain_state_dict_round_trip(tmp_path: Path, resnet18: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18, path)
    loaded = load_backbone(path, backbone=RESNET18)
    assert loaded.adapter == "torchvision"
    assert loaded.spec == RESNET18
    assert loaded.feature_dim == 512
    assert loaded.preprocessing == Preprocessing()
    assert sorted(loaded.dropped) == ["fc.bias", "fc.weight"]
    _assert_loaded(loaded.module, resnet18)


def test_convert_reports_dropped_classifier(resnet18: dict[str, torch.Tensor]) -> None:
    converted = convert_torchvision(resnet18, AdapterOptions())
    assert sorted(converted.dropped) == ["fc.bias", "fc.weight"]
    assert not any(key.startswith("fc.") for key in converted.state_dict)
    # No 'arch' and no backbone named: the shapes tell the architecture.
    assert converted.backbone == BackboneSpec("torchvision:resnet18")
    named = AdapterOptions(backbone=BackboneSpec("timm:resnet18"))
    assert convert_torchvision(resnet18, named).backbone is None


def _resnet_named() -> dict[str, torch.Tensor]:
    """A few tensors with ResNet names: enough for the pure steps, cheap to write."""
    names = ["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "fc.weight", "fc.bias"]
    return {name: torch.full((2,), float(index)) for index, name in enumerate(names)}


def _prefixed(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"module.{key}": value for key, value in weights.items()}


@pytest.mark.parametrize(
    "wrapper",
    [
        pytest.param(lambda sd: _prefixed(sd), id="module-prefix"),
        pytest.param(lambda sd: {"state_dict": sd, "epoch": 90}, id="state_dict-wrapped"),
        pytest.param(lambda sd: {"model": sd, "optimizer": {"lr": 0.1}}, id="model-wrapped"),
    ],
)
def test_wrapped_and_prefixed_files_convert(
    tmp_path: Path, wrapper: Callable[[dict[str, torch.Tensor]], dict[str, Any]]
) -> None:
    weights = _resnet_named()
    path = tmp_path / "wrapped.pth"
    torch.save(wrapper(weights), path)
    raw = read_checkpoint(path)
    assert detect_torchvision(raw)
    converted = convert_torchvision(raw, AdapterOptions())
    assert sorted(converted.dropped) == ["fc.bias", "fc.weight"]
    expected = _backbone_tensors(weights)
    assert list(converted.state_dict) == list(expected)
    for key, value in expected.items():
        assert torch.equal(converted.state_dict[key], value), key


def test_wrapped_and_prefixed_file_loads(tmp_path: Path, resnet18: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "ddp.pth"
    torch.save({"state_dict": _prefixed(resnet18), "epoch": 90}, path)
    loaded = load_backbone(path, backbone=RESNET18)
    assert sorted(loaded.dropped) == ["fc.bias", "fc.weight"]
    _assert_loaded(loaded.module, resnet18)


def test_imagenet_example_checkpoint_states_its_arch(
    tmp_path: Path, resnet18: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(
        {
            "epoch": 90,
            "arch": "resnet18",
            "best_acc1": torch.tensor(69.7),
            "state_dict": _prefixed(resnet18),
        },
        path,
    )
    loaded = load_backbone(path)
    assert loaded.spec == RESNET18
    _assert_loaded(loaded.module, resnet18)


def test_non_torchvision_arch_is_not_guessed(resnet18: dict[str, torch.Tensor]) -> None:
    converted = convert_torchvision({"arch": "resnet50d", "state_dict": resnet18}, AdapterOptions())
    assert converted.backbone is None


def test_timm_resnet18_loads_into_timm_backbone(tmp_path: Path) -> None:
    weights = timm.create_model("resnet18", pretrained=False).state_dict()
    path = tmp_path / "timm_resnet18.pth"
    torch.save(weights, path)
    loaded = load_backbone(path, backbone=BackboneSpec("timm:resnet18"))
    assert loaded.adapter == "torchvision"
    assert loaded.feature_dim == 512
    assert sorted(loaded.dropped) == ["fc.bias", "fc.weight"]
    _assert_loaded(loaded.module, weights)


def test_missing_key_is_named(tmp_path: Path, resnet18: dict[str, torch.Tensor]) -> None:
    weights = {k: v for k, v in resnet18.items() if k != "layer3.0.bn1.running_var"}
    path = tmp_path / "missing.pth"
    torch.save(weights, path)
    with pytest.raises(CheckpointMismatchError, match="1 missing keys") as info:
        load_backbone(path, backbone=RESNET18)
    message = str(info.value)
    assert "layer3.0.bn1.running_var" in message
    assert str(path) in message and "'torchvision'" in message


def test_unexpected_key_is_named(tmp_path: Path, resnet18: dict[str, torch.Tensor]) -> None:
    weights = {**resnet18, "projector.0.weight": torch.zeros(128, 512)}
    path = tmp_path / "extra.pth"
    torch.save(weights, path)
    # A key outside the ResNet modules keeps "auto" from guessing; naming the adapter
    # loads strictly and names the key.
    with pytest.raises(CheckpointError, match="no checkpoint adapter recognises") as info:
        load_backbone(path, backbone=RESNET18)
    assert "'projector.': 1" in str(info.value)
    with pytest.raises(CheckpointMismatchError, match="1 unexpected keys") as info:
        load_backbone(path, adapter="torchvision", backbone=RESNET18)
    assert "projector.0.weight" in str(info.value)
    assert str(path) in str(info.value)


def test_deeper_architecture_fails_clearly(
    tmp_path: Path, resnet18: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18, path)
    with pytest.raises(CheckpointMismatchError, match="missing keys") as info:
        load_backbone(path, backbone=BackboneSpec("torchvision:resnet34"))
    message = str(info.value)
    assert "'torchvision:resnet34'" in message
    assert "layer1.2.conv1.weight" in message
    assert "unexpected" not in message


def test_shape_mismatch_shows_both_shapes(
    tmp_path: Path, resnet18: dict[str, torch.Tensor]
) -> None:
    weights = {**resnet18, "layer4.1.conv2.weight": torch.zeros(512, 512, 1, 1)}
    path = tmp_path / "narrow.pth"
    torch.save(weights, path)
    with pytest.raises(CheckpointMismatchError, match="1 shape mismatches") as info:
        load_backbone(path, backbone=RESNET18)
    message = str(info.value)
    assert "layer4.1.conv2.weight: checkpoint [512, 512, 1, 1] vs backbone [512, 512, 3, 3]" in (
        message
    )


def test_different_width_fails(tmp_path: Path) -> None:
    module, _ = build_backbone(BackboneSpec("tiny_resnet", {"widths": [8, 16]}))
    path = tmp_path / "tiny.pth"
    torch.save(module.state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match="shape mismatches") as info:
        load_backbone(
            path, adapter="torchvision", backbone=BackboneSpec("tiny_resnet", {"widths": [8, 32]})
        )
    assert "stages.1.0.conv1.weight: checkpoint [16, 8, 3, 3] vs backbone [32, 8, 3, 3]" in str(
        info.value
    )


def test_pickled_namespace_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "with_args.pth"
    torch.save({"state_dict": _resnet_named(), "args": argparse.Namespace(arch="resnet18")}, path)
    with pytest.raises(CheckpointError, match="refused for safety") as info:
        load_backbone(path, backbone=RESNET18)
    assert str(path) in str(info.value)


def test_missing_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(FileNotFoundError) as info:
        load_backbone(path, backbone=RESNET18)
    assert str(path) in str(info.value)


def test_detect(resnet18: dict[str, torch.Tensor]) -> None:
    assert detect_torchvision(resnet18)
    assert detect_torchvision({"model": _prefixed(resnet18)})
    tiny, _ = build_backbone(BackboneSpec("tiny_resnet"))
    assert not detect_torchvision(tiny.state_dict())
    assert not detect_torchvision({"epoch": 3})
    moco_like = {"state_dict": {f"module.encoder_q.{k}": v for k, v in resnet18.items()}}
    assert not detect_torchvision(moco_like)
    assert not detect_torchvision({"format": "mile_ssl.backbone", "state_dict": resnet18})
    swav_like = {**_prefixed(resnet18), "module.prototypes.weight": torch.zeros(3, 2)}
    assert not detect_torchvision(swav_like)
