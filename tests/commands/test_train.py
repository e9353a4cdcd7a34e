"""``run_training``: a checkpoint decides its own architecture, in every upstream layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mile_ssl.adapters import CheckpointError
from mile_ssl.commands.train import initial_backbone, run_training
from mile_ssl.config import compose_train_config
from tests.conftest import write_image_folder
from tests.layouts import LAYOUTS, byol, moco

RUN = [
    "data=folder",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.max_steps=2",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.progress_bar=false",
    "method=sigmoid",
]
"""``mile-ssl train checkpoint.path=F data=folder data.root=D trainer.max_steps=2``, small, with
one network: the file decides the backbone whatever the method trains on it."""


@pytest.fixture(scope="module")
def images(module_tmp_path: Path) -> Path:
    write_image_folder(module_tmp_path / "images" / "train", per_class=4)
    write_image_folder(module_tmp_path / "images" / "val", per_class=2)
    return module_tmp_path / "images"


@pytest.mark.parametrize(("layout", "adapter"), [(name, a) for name, (a, _) in LAYOUTS.items()])
def test_checkpoint_trains_without_a_backbone_named(
    layout: str, adapter: str, images: Path, tmp_path: Path
) -> None:
    checkpoint = LAYOUTS[layout][1](tmp_path)
    # 32 px for the ViT too: its position embeddings are resampled to the 2x2 patch grid.
    config = compose_train_config(
        [f"checkpoint.path={checkpoint}", f"data.root={images}", "data.image_size=32"] + RUN
    )
    assert config.backbone.name is None
    result = run_training(config, tmp_path / "run")
    metrics = json.loads((result.output_dir / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["adapter"] == adapter
    assert metrics["backbone"] == initial_backbone(config.backbone, config.checkpoint).spec.name


def test_scratch_without_a_backbone_is_the_small_resnet(images: Path) -> None:
    config = compose_train_config(["checkpoint=scratch", f"data.root={images}", *RUN])
    loaded = initial_backbone(config.backbone, config.checkpoint)
    assert loaded.spec.name == "tiny_resnet" and loaded.adapter == "scratch"


def test_naming_the_files_architecture_is_agreement(tmp_path: Path) -> None:
    # BYOL's file states resnet50 with TF "SAME" padding; backbone=resnet50 agrees with it.
    path = byol(tmp_path)
    config = compose_train_config([f"checkpoint.path={path}", "backbone=resnet50"])
    loaded = initial_backbone(config.backbone, config.checkpoint)
    assert loaded.spec.name == "torchvision:resnet50"
    assert loaded.spec.kwargs == {"tf_same_padding": True}


def test_contradicting_the_file_says_which_value_to_use(tmp_path: Path) -> None:
    path = moco(2)(tmp_path)
    config = compose_train_config([f"checkpoint.path={path}", "backbone=resnet18"])
    with pytest.raises(CheckpointError) as info:
        initial_backbone(config.backbone, config.checkpoint)
    message = str(info.value)
    assert str(path) in message
    assert "'torchvision:resnet18' was requested" in message
    assert "backbone=auto" in message and "backbone.name=torchvision:resnet50" in message
