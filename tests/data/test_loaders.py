"""Loader workers: ``data.num_workers`` as set, or chosen from the machine's CPU cores."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from mile_ssl.config import compose_train_config
from mile_ssl.data.datamodule import MILeDataModule
from mile_ssl.data.loaders import choose_num_workers
from mile_ssl.networks.preprocessing import Preprocessing
from tests.conftest import TINY_OVERRIDES

CORES = len(os.sched_getaffinity(0))


def _data(*overrides: str, root: Path | None = None):  # type: ignore[no-untyped-def]
    folder = [] if root is None else ["data=folder", f"data.root={root}"]
    return compose_train_config([*TINY_OVERRIDES, *folder, *overrides]).data


def test_a_set_number_of_workers_is_kept(tmp_path: Path) -> None:
    assert choose_num_workers(_data("data.num_workers=3", root=tmp_path), 8) == 3


def test_null_gives_image_folders_the_cores_shared_among_devices(tmp_path: Path) -> None:
    data = _data("data.num_workers=null", root=tmp_path)
    assert choose_num_workers(data, 1) == max(0, CORES - 1)
    assert choose_num_workers(data, 2) == max(0, CORES // 2 - 1)
    assert choose_num_workers(data, CORES + 1) == 0


def test_null_gives_the_in_memory_digits_no_workers() -> None:
    assert choose_num_workers(_data("data.num_workers=null"), 1) == 0


def test_the_chosen_number_is_logged_once(
    image_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = compose_train_config(
        [
            "checkpoint=scratch",
            "data=folder",
            f"data.root={image_folder}",
            "data.num_workers=null",
            "data.batch_size=4",
        ]
    )
    datamodule = MILeDataModule(config.data, Preprocessing())
    with caplog.at_level(logging.INFO, logger="mile_ssl.data.loaders"):
        train = datamodule.train_dataloader()
        datamodule.val_dataloader()
    assert train.num_workers == max(0, CORES - 1)  # type: ignore[attr-defined]
    chosen = [record for record in caplog.records if "data.num_workers=null" in record.message]
    assert len(chosen) == 1
    assert f"{CORES} usable CPU cores" in chosen[0].message
