from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torchvision
import yaml

from mile_ssl.config import compose_train_config
from mile_ssl.solo_learn import read_solo_config, translate_solo_config

MILE_SSL = str(Path(sys.executable).with_name("mile-ssl"))


def _write_recipe(tmp_path: Path, image_folder: Path) -> Path:
    checkpoint = tmp_path / "byol-resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), checkpoint)
    recipe = {
        "defaults": [
            "_self_",
            {"wandb": "private.yaml"},
            {"override hydra/hydra_logging": "disabled"},
        ],
        "name": "byol-custom-linear",
        "pretrained_feature_extractor": str(checkpoint),
        "backbone": {"name": "resnet18"},
        "pretrain_method": "byol",
        "data": {
            "dataset": "custom",
            "train_path": str(image_folder / "train"),
            "val_path": str(image_folder / "val"),
            "format": "dali",
            "num_workers": 0,
        },
        "optimizer": {
            "name": "sgd",
            "batch_size": 8,
            "lr": 0.1,
            "weight_decay": 0,
            "kwargs": {"momentum": 0.8, "exclude_bias_n_norm": True},
        },
        "scheduler": {"name": "step", "lr_decay_steps": [60, 80]},
        "checkpoint": {"enabled": True, "dir": "trained_models", "frequency": 1},
        "auto_resume": {"enabled": True},
        "max_epochs": 100,
        "devices": 1,
        "sync_batchnorm": True,
        "accelerator": "cpu",
        "strategy": "auto",
        "precision": 32,
        "mile": {"kt": 1, "ks": 1, "rho": 0.3},
    }
    path = tmp_path / "recipes" / "byol.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_translation_maps_keys_and_reports_the_rest(tmp_path: Path, image_folder: Path) -> None:
    path = _write_recipe(tmp_path, image_folder)
    translation = translate_solo_config(read_solo_config(path), path)
    config = compose_train_config(translation.overrides)
    assert config.checkpoint.path == str(tmp_path / "byol-resnet18.pth")
    assert config.backbone.name == "torchvision:resnet18"
    assert config.data.name == "folder" and config.data.batch_size == 8
    assert Path(config.data.root or "") / config.data.train_dir == image_folder / "train"
    assert config.optim.lr == 0.1 * 8 / 256  # solo-learn's rule: batch x devices x nodes / 256
    assert config.optim.momentum == 0.8 and config.optim.weight_decay == 0
    assert config.trainer.max_epochs == 100 and config.trainer.precision == "32-true"
    assert config.trainer.sync_batchnorm is True
    assert (config.method.name, config.mile.kt, config.mile.rho) == ("mile", 1, 0.3)
    unsupported = dict(translation.unsupported)
    for key in (
        "defaults: wandb",
        "name",
        "data.format",
        "scheduler.name",
        "scheduler.lr_decay_steps",
        "checkpoint.dir",
        "auto_resume.enabled",
        "optimizer.kwargs.exclude_bias_n_norm",
        "finetune",
    ):
        assert key in unsupported, key


def test_train_runs_a_solo_learn_recipe(tmp_path: Path, image_folder: Path) -> None:
    path = _write_recipe(tmp_path, image_folder)
    result = subprocess.run(
        [
            MILE_SSL,
            "train",
            "--config-path",
            str(path.parent),
            "--config-name",
            "byol.yaml",
            "trainer.max_epochs=null",
            "trainer.max_steps=2",
            "data.image_size=32",
            "trainer.progress_bar=false",
            "hydra.run.dir=run",
        ],
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "does not use" in log and "scheduler.lr_decay_steps" in log and "wandb" in log
    assert "solo-learn's LR rule" in log
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["adapter"] == "torchvision"
    assert metrics["labelled_images"] == 16


def test_from_solo_writes_a_composable_config(tmp_path: Path, image_folder: Path) -> None:
    path = _write_recipe(tmp_path, image_folder)
    result = subprocess.run(
        [MILE_SSL, "from-solo", str(path), "--out", str(tmp_path / "translated.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "optimizer.lr -> optim.lr=0.003125" in result.stdout
    written = yaml.safe_load((tmp_path / "translated.yaml").read_text())
    assert written["checkpoint"]["path"] == str(tmp_path / "byol-resnet18.pth")
    assert written["mile"]["rho"] == 0.3
