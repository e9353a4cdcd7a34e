"""solo-learn run folders (Lightning .ckpt + args.json), loaded end to end."""

import json
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torchvision
from torch import Tensor, nn

from mile_ssl.adapters import AdapterOptions, CheckpointError
from mile_ssl.adapters.loading import load_backbone
from mile_ssl.adapters.registry import matching_adapters
from mile_ssl.adapters.solo_learn import (
    convert_solo_learn,
    detect_solo_learn,
    run_preprocessing,
    run_spec,
)
from mile_ssl.networks.backbones import BackboneSpec
from mile_ssl.networks.preprocessing import Preprocessing

CIFAR10 = Preprocessing(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))


def _filler(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.float32) -> Tensor:
    """A tensor of the right shape stored as one element: for parts the test never runs."""
    return torch.zeros((), dtype=dtype).expand(shape)


def _trained(module: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            assert layer.running_mean is not None and layer.running_var is not None
            layer.running_mean.normal_(0.0, 0.1, generator=generator)
            layer.running_var.uniform_(0.5, 2.0, generator=generator)
            layer.weight.data.normal_(1.0, 0.1, generator=generator)
    return module.eval()


def solo_resnet(name: str, cifar: bool) -> nn.Module:
    """``BaseMethod``'s backbone: torchvision's ResNet, ``fc`` an identity, and for CIFAR
    a 3x3 stride-1 ``conv1`` padded by 2 without max-pool (``solo/methods/base.py``)."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    model.fc = nn.Identity()
    if cifar:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
        model.maxpool = nn.Identity()
    return _trained(model, seed=1)


def byol_state_dict(backbone: nn.Module, prefix: str = "backbone.") -> dict[str, Tensor]:
    """A BYOL run's state dict: online and momentum networks, predictor, linear probes."""
    weights = backbone.state_dict()
    width = 2048 if "layer1.0.conv3.weight" in weights else 512
    if "cls_token" in weights:
        width = int(weights["cls_token"].shape[-1])
    projector = {
        "0.weight": (4096, width),
        "0.bias": (4096,),
        "1.weight": (4096,),
        "1.running_var": (4096,),
        "3.weight": (256, 4096),
    }
    momentum = "momentum_backbone." if prefix == "backbone." else "momentum_encoder."
    state = {f"{prefix}{key}": value for key, value in weights.items()}
    state |= {f"projector.{key}": _filler(shape) for key, shape in projector.items()}
    state |= {
        f"{momentum}{key}": _filler(value.shape, value.dtype) for key, value in weights.items()
    }
    state |= {f"momentum_projector.{key}": _filler(shape) for key, shape in projector.items()}
    state |= {
        "predictor.0.weight": _filler((4096, 256)),
        "predictor.3.weight": _filler((256, 4096)),
    }
    state |= {"classifier.weight": _filler((10, width)), "classifier.bias": _filler((10,))}
    return state | {"momentum_classifier.weight": _filler((10, width))}


def lightning_checkpoint(state_dict: dict[str, Tensor]) -> dict[str, Any]:
    return {
        "epoch": 999,
        "global_step": 195000,
        "pytorch-lightning_version": "2.0.2",
        "state_dict": state_dict,
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 999}}}},
        "callbacks": {},
        "optimizer_states": [],
        "lr_schedulers": [],
    }


def run_args(backbone: str, dataset: str, method: str = "byol", **kwargs: Any) -> dict[str, Any]:
    """``args.json`` as solo-learn's Checkpointer writes it (the run's full config)."""
    return {
        "name": f"{method}-{dataset}",
        "method": method,
        "backbone": {"name": backbone, "kwargs": kwargs},
        "method_kwargs": {"proj_hidden_dim": 4096, "proj_output_dim": 256},
        "data": {"dataset": dataset, "train_path": "./datasets", "num_workers": 4},
        "augmentations": [{"crop_size": 32, "num_crops": 2, "rrc": {"enabled": True}}],
        "optimizer": {"name": "lars", "batch_size": 256, "lr": 1.0},
        "checkpoint": {"enabled": True, "dir": "trained_models", "frequency": 1},
        "max_epochs": 1000,
        "wandb_run_id": "3ur9xp5a",
    }


def write_run(folder: Path, checkpoint: dict[str, Any], args: dict[str, Any] | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "byol-run-3ur9xp5a-ep=999.ckpt"
    torch.save(checkpoint, path)
    if args is not None:
        (folder / "args.json").write_text(json.dumps(args))
    return path


def _features(module: nn.Module, images: Tensor) -> Tensor:
    with torch.no_grad():
        return module.eval()(images)


CIFAR_IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def cifar_resnet18() -> nn.Module:
    return solo_resnet("resnet18", cifar=True)


def test_cifar_resnet18_weights_load_exactly(tmp_path: Path, cifar_resnet18: nn.Module) -> None:
    path = write_run(
        tmp_path / "run",
        lightning_checkpoint(byol_state_dict(cifar_resnet18)),
        run_args("resnet18", "cifar10"),
    )
    loaded = load_backbone(path)
    assert loaded.adapter == "solo_learn"
    assert loaded.spec == BackboneSpec(
        "torchvision:resnet18", {"cifar_stem": True, "cifar_stem_padding": 2}
    )
    assert loaded.preprocessing == CIFAR10
    assert loaded.expected_prefix == "backbone."
    assert {"classifier.weight", "momentum_backbone.conv1.weight", "predictor.0.weight"} <= set(
        loaded.dropped
    )
    source = cifar_resnet18.state_dict()
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, source[key]), key


def test_cifar_resnet18_features_match_solo_learn(
    tmp_path: Path, cifar_resnet18: nn.Module
) -> None:
    path = write_run(
        tmp_path / "run",
        lightning_checkpoint(byol_state_dict(cifar_resnet18)),
        run_args("resnet18", "cifar10"),
    )
    loaded = load_backbone(path)
    torch.testing.assert_close(
        _features(loaded.module, CIFAR_IMAGES), _features(cifar_resnet18, CIFAR_IMAGES)
    )


def test_imagenet100_resnet50_features_match(tmp_path: Path) -> None:
    source = solo_resnet("resnet50", cifar=False)
    path = write_run(
        tmp_path / "run",
        lightning_checkpoint(byol_state_dict(source)),
        run_args("resnet50", "imagenet100", zero_init_residual=True),
    )
    loaded = load_backbone(path)
    assert loaded.spec == BackboneSpec("torchvision:resnet50")
    assert loaded.preprocessing == Preprocessing()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(_features(loaded.module, images), _features(source, images))


@pytest.fixture(scope="module")
def imagenet_resnet18() -> nn.Module:
    return solo_resnet("resnet18", cifar=False)


def test_run_folder_loads_its_checkpoint(tmp_path: Path, imagenet_resnet18: nn.Module) -> None:
    folder = tmp_path / "trained_models" / "byol" / "3ur9xp5a"
    path = write_run(
        folder,
        lightning_checkpoint(byol_state_dict(imagenet_resnet18)),
        run_args("resnet18", "imagenet100"),
    )
    loaded = load_backbone(folder)
    assert loaded.source == path
    assert loaded.spec == BackboneSpec("torchvision:resnet18")
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(
        _features(loaded.module, images), _features(imagenet_resnet18, images)
    )


def test_run_folder_with_several_checkpoints(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("a-ep=1.ckpt", "a-ep=2.ckpt"):
        torch.save({"state_dict": {"backbone.x": torch.zeros(1)}}, folder / name)
    with pytest.raises(CheckpointError, match=r"2 \.ckpt files .*no last\.ckpt") as info:
        load_backbone(folder)
    assert str(folder) in str(info.value)
    torch.save({"state_dict": {"weird.x": torch.zeros(1)}}, folder / "last.ckpt")
    with pytest.raises(CheckpointError, match="no checkpoint adapter recognises") as info:
        load_backbone(folder)
    assert str(folder / "last.ckpt") in str(info.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "args.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"holds no \.ckpt file.*args\.json"):
        load_backbone(empty)


def test_legacy_encoder_and_flat_args(tmp_path: Path, imagenet_resnet18: nn.Module) -> None:
    legacy_args = {"method": "simclr", "encoder": "resnet18", "dataset": "imagenet100"}
    path = write_run(
        tmp_path / "run",
        lightning_checkpoint(byol_state_dict(imagenet_resnet18, prefix="encoder.")),
        legacy_args,
    )
    loaded = load_backbone(path)
    assert loaded.adapter == "solo_learn"
    assert loaded.expected_prefix == "encoder."
    assert "momentum_encoder.conv1.weight" in loaded.dropped
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(
        _features(loaded.module, images), _features(imagenet_resnet18, images)
    )


def test_without_args_json_the_user_names_the_backbone(
    tmp_path: Path, imagenet_resnet18: nn.Module
) -> None:
    path = write_run(
        tmp_path / "run", lightning_checkpoint(byol_state_dict(imagenet_resnet18)), None
    )
    with pytest.raises(CheckpointError, match="no args.json in .*set backbone.name") as info:
        load_backbone(path)
    assert str(path) in str(info.value)
    loaded = load_backbone(path, backbone=BackboneSpec("torchvision:resnet18"))
    assert loaded.preprocessing == Preprocessing()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(
        _features(loaded.module, images), _features(imagenet_resnet18, images)
    )


def test_vit_small_run_loads_into_timm(tmp_path: Path) -> None:
    torch.manual_seed(0)
    # solo-learn's vit_small: timm's VisionTransformer, kwargs from backbone.kwargs.
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, img_size=32)
    path = write_run(
        tmp_path / "run",
        lightning_checkpoint(byol_state_dict(vit)),
        run_args("vit_small", "imagenet100", patch_size=16, img_size=32),
    )
    loaded = load_backbone(path)
    assert loaded.spec == BackboneSpec("timm:vit_small_patch16_224", {"img_size": 32})
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(_features(loaded.module, images), _features(vit.eval(), images))


def test_run_spec_rules(tmp_path: Path) -> None:
    where = tmp_path / "args.json"
    with torch.device("meta"):
        vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    weights = vit.state_dict()
    assert run_spec(
        run_args("vit_small", "imagenet", method="mocov3"), weights, where
    ) == BackboneSpec("timm:vit_small_patch16_224", {"num_heads": 12})
    assert run_spec(run_args("vit_small", "imagenet"), weights, where) == BackboneSpec(
        "timm:vit_small_patch16_224"
    )
    with pytest.raises(ValueError, match="names backbone 'vit_base'"):
        run_spec(run_args("vit_base", "imagenet"), weights, where)
    with pytest.raises(ValueError, match="'swin_tiny' .* not supported"):
        run_spec(run_args("swin_tiny", "imagenet"), weights, where)
    assert run_spec(run_args("resnet50", "cifar100"), {}, where) == BackboneSpec(
        "torchvision:resnet50", {"cifar_stem": True, "cifar_stem_padding": 2}
    )


def test_preprocessing_follows_solo_learn_table() -> None:
    assert run_preprocessing(run_args("resnet18", "cifar10")) == CIFAR10
    assert run_preprocessing(run_args("resnet18", "cifar100")).mean == (0.5071, 0.4865, 0.4409)
    custom = run_args("resnet18", "custom")
    custom["augmentations"][0] |= {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    assert run_preprocessing(custom) == Preprocessing(mean=(0.5,) * 3, std=(0.25,) * 3)
    assert run_preprocessing({"dataset": "custom"}) == Preprocessing()


def test_detection_and_unsupported_projection() -> None:
    t = torch.zeros(1)
    raw = lightning_checkpoint({"backbone.conv1.weight": t, "classifier.weight": t})
    assert detect_solo_learn(raw)
    assert matching_adapters(raw) == ["solo_learn"]
    assert not detect_solo_learn({"meta": {}, "state_dict": raw["state_dict"]})
    assert not detect_solo_learn({"state_dict": {"backbone.conv1.weight": t}})
    with pytest.raises(ValueError, match="not supported by the 'solo_learn' adapter"):
        convert_solo_learn(raw, AdapterOptions(projection_layers=1))
