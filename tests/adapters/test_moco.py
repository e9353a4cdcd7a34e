"""MoCo v1/v2/v3 files in facebookresearch/moco and moco-v3 layouts, loaded end to end."""

from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torchvision
from torch import Tensor, nn

from mile_ssl.adapters import AdapterOptions, CheckpointError, CheckpointMismatchError
from mile_ssl.adapters.loading import load_backbone
from mile_ssl.adapters.moco import convert_mocov2, convert_mocov3, detect_mocov2, detect_mocov3
from mile_ssl.adapters.registry import matching_adapters
from mile_ssl.networks.backbones import BackboneSpec
from mile_ssl.networks.preprocessing import Preprocessing

IMAGES = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _trained(module: nn.Module, seed: int) -> nn.Module:
    """Random weights with BatchNorm statistics away from their defaults, in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            assert layer.running_mean is not None and layer.running_var is not None
            layer.running_mean.normal_(0.0, 0.1, generator=generator)
            layer.running_var.uniform_(0.5, 2.0, generator=generator)
            layer.weight.data.normal_(1.0, 0.1, generator=generator)
            layer.bias.data.normal_(0.0, 0.1, generator=generator)
    return module.eval()


def _filler(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.float32) -> Tensor:
    """A tensor of the right shape stored as one element: for parts the test never runs."""
    return torch.zeros((), dtype=dtype).expand(shape)


def _fillers(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {
        f"{prefix}{key}": _filler(value.shape, value.dtype) for key, value in state_dict.items()
    }


def _features(module: nn.Module, images: Tensor = IMAGES) -> Tensor:
    with torch.no_grad():
        return module.eval()(images)


@pytest.fixture(scope="module")
def encoder() -> nn.Module:
    """The query / base encoder's trunk: a torchvision ResNet-50 without its ``fc``."""
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50()
    resnet.fc = nn.Identity()
    return _trained(resnet, seed=1)


@pytest.fixture(scope="module")
def expected(encoder: nn.Module) -> Tensor:
    """The source encoder's pooled features on :data:`IMAGES`."""
    return _features(encoder)


def _optimizer_state() -> dict[str, Any]:
    return {
        "state": {},
        "param_groups": [{"lr": 0.03, "momentum": 0.9, "weight_decay": 1e-4, "params": [0, 1]}],
    }


def _mocov2_file(encoder: nn.Module, version: int) -> dict[str, Any]:
    """``main_moco.py``'s checkpoint: query/key encoders under DDP, the queue, the head."""
    backbone = encoder.state_dict()
    if version == 2:
        head = {"fc.0.weight": (2048, 2048), "fc.0.bias": (2048,), "fc.2.weight": (128, 2048)}
        head["fc.2.bias"] = (128,)
    else:
        head = {"fc.weight": (128, 2048), "fc.bias": (128,)}
    query = {**backbone, **{key: torch.randn(shape) for key, shape in head.items()}}
    state_dict = {f"module.encoder_q.{key}": value for key, value in query.items()}
    state_dict |= _fillers(query, "module.encoder_k.")
    state_dict["module.queue"] = _filler((128, 65536))
    state_dict["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return {
        "epoch": 200,
        "arch": "resnet50",
        "state_dict": state_dict,
        "optimizer": _optimizer_state(),
    }


@pytest.mark.parametrize("version", [1, 2])
def test_mocov1_and_v2_load_query_encoder(
    tmp_path: Path, encoder: nn.Module, expected: Tensor, version: int
) -> None:
    path = tmp_path / f"moco_v{version}_200ep_pretrain.pth.tar"
    torch.save(_mocov2_file(encoder, version), path)

    loaded = load_backbone(path)
    assert loaded.adapter == "mocov2"
    assert loaded.spec == BackboneSpec("torchvision:resnet50")
    assert loaded.preprocessing == Preprocessing()
    assert loaded.expected_prefix == "module.encoder_q."
    head = ["module.encoder_q.fc.0.weight"] if version == 2 else ["module.encoder_q.fc.weight"]
    assert set(head + ["module.queue", "module.queue_ptr", "module.encoder_k.conv1.weight"]) <= set(
        loaded.dropped
    )
    assert not any(key.startswith("module.encoder_q.layer") for key in loaded.dropped)
    torch.testing.assert_close(_features(loaded.module), expected)


def test_mocov3_resnet_loads_base_encoder(
    tmp_path: Path, encoder: nn.Module, expected: Tensor
) -> None:
    backbone = encoder.state_dict()
    projector = {
        "fc.0.weight": torch.randn(64, 2048),
        "fc.1.weight": torch.ones(64),
        "fc.1.bias": torch.zeros(64),
        "fc.1.running_mean": torch.zeros(64),
        "fc.1.running_var": torch.ones(64),
        "fc.1.num_batches_tracked": torch.tensor(0),
        "fc.3.weight": torch.randn(32, 64),
        "fc.4.running_mean": torch.zeros(32),
        "fc.4.running_var": torch.ones(32),
        "fc.4.num_batches_tracked": torch.tensor(0),
    }
    base = {**backbone, **projector}
    state_dict = {f"module.base_encoder.{key}": value for key, value in base.items()}
    state_dict |= _fillers(base, "module.momentum_encoder.")
    state_dict |= {
        "module.predictor.0.weight": _filler((64, 32)),
        "module.predictor.3.weight": _filler((32, 64)),
    }
    path = tmp_path / "r-50-1000ep.pth.tar"
    torch.save(
        {
            "epoch": 1000,
            "arch": "resnet50",
            "state_dict": state_dict,
            "optimizer": _optimizer_state(),
            "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
        },
        path,
    )

    loaded = load_backbone(path)
    assert loaded.adapter == "mocov3"
    assert loaded.spec == BackboneSpec("torchvision:resnet50")
    assert "module.base_encoder.fc.0.weight" in loaded.dropped
    assert "module.predictor.0.weight" in loaded.dropped
    assert "module.momentum_encoder.conv1.weight" in loaded.dropped
    torch.testing.assert_close(_features(loaded.module), expected)


def test_mocov3_vit_small_has_twelve_heads() -> None:
    with torch.device("meta"):
        vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    base = {**vit.state_dict(), "head.0.weight": torch.zeros(4096, 384)}
    state_dict = {f"module.base_encoder.{key}": value for key, value in base.items()}
    state_dict |= _fillers(base, "module.momentum_encoder.")
    raw = {"arch": "vit_small", "state_dict": state_dict}
    assert matching_adapters(raw) == ["mocov3"]
    converted = convert_mocov3(raw, AdapterOptions())
    assert converted.backbone == BackboneSpec("timm:vit_small_patch16_224", {"num_heads": 12})
    assert set(converted.state_dict) == set(vit.state_dict())
    assert "module.base_encoder.head.0.weight" in converted.dropped

    with pytest.raises(ValueError, match="'vit_conv_small'.*not supported"):
        convert_mocov3({**raw, "arch": "vit_conv_small"}, AdapterOptions())


def test_single_gpu_prefix_and_detection() -> None:
    tensor = torch.zeros(1)
    single = {"state_dict": {"encoder_q.conv1.weight": tensor, "encoder_k.conv1.weight": tensor}}
    assert detect_mocov2(single) and not detect_mocov3(single)
    converted = convert_mocov2(single, AdapterOptions())
    assert list(converted.state_dict) == ["conv1.weight"]
    assert converted.dropped == ("encoder_k.conv1.weight",)
    # mmselfsup 0.x keeps encoder_q as Sequential(backbone, neck): not MoCo's layout.
    assert not detect_mocov2({"state_dict": {"encoder_q.0.conv1.weight": tensor}})
    assert not detect_mocov3({"state_dict": {"module.base_encoder.conv1.weight": tensor}})


def test_wrong_architecture_names_file_and_prefix(tmp_path: Path, encoder: nn.Module) -> None:
    raw = _mocov2_file(encoder, version=2)
    raw["arch"] = "resnet18"
    path = tmp_path / "mislabelled.pth.tar"
    torch.save(raw, path)
    with pytest.raises(CheckpointMismatchError, match="does not match backbone") as info:
        load_backbone(path)
    message = str(info.value)
    assert str(path) in message
    assert "'module.encoder_q.'" in message
    assert "'torchvision:resnet18'" in message

    torch.save(_mocov2_file(encoder, version=2), path)
    with pytest.raises(CheckpointError, match="was requested") as info:
        load_backbone(path, backbone=BackboneSpec("torchvision:resnet18"))
    assert str(path) in str(info.value)


def test_projection_layers_are_refused() -> None:
    raw = {"epoch": 1, "state_dict": {"module.encoder_q.conv1.weight": torch.zeros(1)}}
    with pytest.raises(ValueError, match="not supported by the 'mocov2' adapter"):
        convert_mocov2(raw, AdapterOptions(projection_layers=1))
