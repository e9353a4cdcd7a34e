"""``benchmarks/dataloader.py`` on a tiny JPEG tree: runs, prints parseable JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import load_benchmark, write_image_folder


def test_script_prints_throughput_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_image_folder(tmp_path / "train", classes=2, per_class=3, size=40)
    write_image_folder(tmp_path / "val", classes=2, per_class=1, size=40)
    load_benchmark("dataloader").main(
        [
            *("--root", str(tmp_path)),
            *("--data", "folder"),
            *("--batches", "2"),
            *("--workers", "0"),
            *("--batch-size", "4"),
            *("--image-size", "32"),
        ]
    )
    result = capsys.readouterr()
    report = json.loads(result.out)
    assert report["images_per_second"] > 0
    assert report["images"] == 8 and report["batches"] == 2
    assert report["workers"] == 0
    assert report["batch_size"] == 4
    assert report["image_size"] == 32
    assert report["cpu_count"] == os.cpu_count()
    assert report["seconds"] > 0
    assert report["labelled_images"] == 6


def test_arguments_are_checked() -> None:
    module = load_benchmark("dataloader")
    with pytest.raises(SystemExit):
        module.parse_args(["--root", "x", "--workers", "-1"])
    with pytest.raises(SystemExit):
        module.parse_args(["--root", "x", "--data", "digits"])
    args = module.parse_args(["--root", "x", "--batch-size", "8"])
    assert (args.batch_size, args.data, args.warmup) == (8, "folder", 2)
