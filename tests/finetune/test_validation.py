"""Unreadable validation images: counted in the metrics, named once, listed in the run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from mile_ssl.commands.train import run_training
from mile_ssl.config import compose_train_config
from mile_ssl.finetune.validation import (
    BAD_VAL_IMAGES_FILE,
    UNREADABLE_KEY,
)
from tests.broken_images import corrupt_idat, cut_and_close_png, write_image
from tests.conftest import TINY_OVERRIDES, folder_run_overrides, write_image_folder


@pytest.mark.parametrize("damaged", [0, 2])
def test_unreadable_validation_images_are_counted_named_and_listed(
    damaged: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "images"
    write_image_folder(root / "train", classes=2, per_class=4)
    write_image_folder(root / "val", classes=2, per_class=3)
    # PNGs that look complete: only decoding finds them, in the middle of validation.
    damages = [(corrupt_idat, "n00000000"), (cut_and_close_png, "n00000001")][:damaged]
    bad = []
    for damage, wnid in damages:
        (root / "val" / wnid / f"{wnid}_1.JPEG").unlink()
        bad.append(damage(write_image(root / "val" / wnid / f"{wnid}_1.png", len(bad))))
    config = compose_train_config([*TINY_OVERRIDES, *folder_run_overrides(root)])
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="mile_ssl.finetune.validation"):
        result = run_training(config, run)  # every run names and lists them

    # Counted once per image, although validation ran twice (sanity check and end).
    assert result.metrics[UNREADABLE_KEY] == damaged
    saved = json.loads((run / "metrics.json").read_text())["metrics"]
    assert saved[UNREADABLE_KEY] == damaged
    assert saved["num_samples"] == 6  # every item is still evaluated, on a substitute
    named = [r.getMessage() for r in caplog.records if "validation image" in r.getMessage()]
    assert named == [
        f"validation image {path} is unreadable: another image of its class is evaluated "
        "in its place, so the validation metrics count that one twice"
        for path in bad
    ]
    listed = run / BAD_VAL_IMAGES_FILE
    if bad:
        assert listed.read_text().splitlines() == [str(path) for path in bad]
    else:
        assert not listed.exists()
