"""Weak and strong views: both come from the same image, only the strong one is heavy."""

from __future__ import annotations

from pathlib import Path

import torch

from mile_ssl.config import compose_train_config
from mile_ssl.data.datamodule import MILeDataModule, UnlabeledStream
from mile_ssl.data.views import STRONG_VIEW_KEY
from mile_ssl.networks.preprocessing import Preprocessing
from tests.conftest import TINY_OVERRIDES


def test_digit_items_carry_a_weak_and_a_strong_view_of_the_same_grid() -> None:
    config = compose_train_config([*TINY_OVERRIDES, "data.fraction=0.5"])
    plain = MILeDataModule(config.data, Preprocessing())
    views = MILeDataModule(config.data, Preprocessing(), strong_student_view=True)
    torch.manual_seed(0)
    batch = next(iter(views.train_dataloader()))
    reference = next(iter(plain.train_dataloader()))
    assert torch.equal(batch["index"], reference["index"])
    # The weak view is the usual training image; the strong one differs from it but
    # stays close (same grid, mildly moved): far closer than another grid is.
    assert torch.equal(batch["image"], reference["image"])
    strong = batch[STRONG_VIEW_KEY]
    assert strong.shape == batch["image"].shape
    assert not torch.equal(strong, batch["image"])
    same_grid = (strong - batch["image"]).abs().mean()
    other_grid = (strong - batch["image"].roll(1, dims=0)).abs().mean()
    assert same_grid < other_grid
    assert STRONG_VIEW_KEY not in next(iter(views.val_dataloader()))


def test_folder_items_get_randaugment_views_and_validation_stays_single(
    image_folder: Path,
) -> None:
    config = compose_train_config(
        [
            *TINY_OVERRIDES,
            "data=folder",
            f"data.root={image_folder}",
            "data.image_size=32",
            "data.fraction=0.5",
        ]
    )
    datamodule = MILeDataModule(
        config.data, Preprocessing(), UnlabeledStream(1, lambda step: True), True
    )
    item = datamodule.train_dataset[0]
    assert item["image"].shape == item[STRONG_VIEW_KEY].shape == (3, 32, 32)
    assert STRONG_VIEW_KEY not in datamodule.splits.val[0]
