"""What a bad day does to a run: faulty data, divergence, resumes, failed saves, Ctrl-C.

Every file here is real (JPEG/PNG written with PIL, or bytes cut from one) and
user-visible behaviour goes through the ``mile-ssl`` command line (in this process, see
``tests.conftest.run_cli_in_process``; the Ctrl-C test signals a process of its own);
failures are injected only where the operating system cannot be made to fail on demand
(a full disk).
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import shlex
import signal
import struct
import subprocess
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from mile_ssl.commands.predict import format_predictions, predict, prediction_failures
from mile_ssl.config import compose_train_config
from mile_ssl.data.datamodule import MILeDataModule, UnlabeledStream
from mile_ssl.data.folder import LabeledImageFolder, UnlabeledImages
from mile_ssl.data.images import IMAGE_SUFFIXES, UnreadableImageError, load_rgb
from mile_ssl.data.integrity import check_data_report, scan_data, scan_images
from mile_ssl.data.listing import list_unlabeled_images
from mile_ssl.data.scan_cache import CACHE_NAME, default_cache_path
from mile_ssl.networks.preprocessing import Preprocessing
from mile_ssl.runs import checkpoint_io
from mile_ssl.runs.checkpoint_io import write_atomically
from mile_ssl.runs.report import format_metrics_table
from tests.conftest import (
    MILE_SSL,
    TINY_OVERRIDES,
    run_cli_in_process,
    write_image_folder,
    write_jpeg,
)

TO_TENSOR = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
"""A deterministic transform, so that two reads of one image compare equal."""

CLI_TRAIN = [
    "train",
    "checkpoint=scratch",
    "backbone=tiny_resnet",
    "backbone.kwargs.widths=[8,16]",
    "method=softmax",
    "data=folder",
    "data.image_size=32",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.precision=32-true",
    "trainer.accelerator=cpu",
    "trainer.progress_bar=false",
    "optim.warmup_steps=2",
]


def _truncate(path: Path) -> Path:
    """Cut a real JPEG in half, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _faulty_tree(root: Path, per_class: int = 20) -> tuple[Path, Path]:
    """``train``/``val`` of 2 classes; one zero-byte and one truncated training JPEG.

    Returns:
        The zero-byte file and the truncated one.
    """
    write_image_folder(root / "train", classes=2, per_class=per_class, size=24)
    write_image_folder(root / "val", classes=2, per_class=2, size=24)
    zero = root / "train" / "n00000000" / "n00000000_1.JPEG"
    zero.write_bytes(b"")
    truncated = _truncate(root / "train" / "n00000001" / "n00000001_0.JPEG")
    return zero, truncated


def _png16(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit PNG (grey: ``H x W``, RGB: ``H x W x 3``) written byte by byte."""
    height, width = pixels.shape[:2]
    colour = 2 if pixels.ndim == 3 else 0
    rows = b"".join(b"\x00" + pixels[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


def _datamodule(root: Path, *overrides: str, **kwargs: object) -> MILeDataModule:
    config = compose_train_config(
        [
            "checkpoint=scratch",
            "data=folder",
            f"data.root={root}",
            "data.image_size=32",
            "data.num_workers=0",
            *overrides,
        ]
    )
    return MILeDataModule(config.data, Preprocessing(), **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# Unreadable training images
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faulty_run(module_tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """A CLI training run over 40 images of which 2 are unreadable (each visited twice)."""
    root = module_tmp_path / "data"
    zero, truncated = _faulty_tree(root)
    result = run_cli_in_process(
        [
            *CLI_TRAIN,
            f"data.root={root}",
            "data.max_bad_fraction=0.1",  # 2 of 40 bad: within the limit
            "trainer.max_steps=10",  # 5 steps of 8 per pass over 40 images: two passes
            "hydra.run.dir=run",
        ],
        module_tmp_path,
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr  # where the log goes is Hydra's choice
    for bad in (zero, truncated):  # both were visited, and replaced
        assert f"{bad}: unreadable" in output
    return root, module_tmp_path / "run", zero, truncated


def test_training_runs_to_the_end_over_unreadable_images(faulty_run) -> None:
    _, run, zero, truncated = faulty_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 10 and metrics["bad_images"] == 2
    assert (run / "checkpoints" / "last.ckpt").is_file()
    listed = (run / "bad_images.txt").read_text().split()
    assert sorted(listed) == sorted([str(zero), str(truncated)])


def test_resume_works_after_the_bad_images_are_deleted(
    module_tmp_path: Path, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    zero, truncated = _faulty_tree(root)
    common = [*CLI_TRAIN, f"data.root={root}", "data.max_bad_fraction=0.1"]
    first = run_cli_in_process(
        [*common, "trainer.max_steps=10", "trainer.checkpoint_every_n_steps=5", "hydra.run.dir=a"],
        tmp_path,
    )
    assert first.returncode == 0, first.stderr[-2000:]
    zero.unlink()
    truncated.unlink()
    checkpoint = tmp_path / "a" / "checkpoints" / "step5.ckpt"
    resumed = run_cli_in_process(
        [*common, "trainer.max_steps=10", f"trainer.resume_from={checkpoint}", "hydra.run.dir=b"],
        tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # The same labelled images, indices included: the deleted files kept their place.
    before = json.loads((tmp_path / "a" / "metrics.json").read_text())
    after = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert after["steps"] == 10 and after["bad_images"] == 2
    assert after["labelled_sha256"] == before["labelled_sha256"]


def test_too_many_unreadable_images_stop_the_run_naming_them(tmp_path: Path) -> None:
    root = tmp_path / "data"
    zero, truncated = _faulty_tree(root)
    result = run_cli_in_process(
        [*CLI_TRAIN, f"data.root={root}", "trainer.max_steps=10", "hydra.run.dir=run"], tmp_path
    )
    assert result.returncode == 2, result.stderr[-2000:]
    message = result.stderr[result.stderr.index("error:") :]
    assert "data.max_bad_fraction=0.001" in message and "check-data" in message
    assert str(zero) in message or str(truncated) in message


def test_unreadable_image_is_replaced_by_the_next_of_its_class(tmp_path: Path) -> None:
    zero, truncated = _faulty_tree(tmp_path, per_class=4)
    dataset = LabeledImageFolder(tmp_path / "train", TO_TENSOR)
    paths = [dataset.path_of(index) for index in range(len(dataset))]
    for bad in (zero, truncated):
        index = paths.index(str(bad))
        first, second = dataset[index], dataset[index]
        torch.testing.assert_close(first["image"], second["image"])  # deterministic
        torch.testing.assert_close(first["image"], dataset[index + 1]["image"])
        assert int(first["index"]) == int(first["bad_index"]) == index
        assert first["bad_index"].dtype == torch.int64
        assert int(first["label"]) == dataset.labels[index]
        assert first["label_set"].tolist() == [label == dataset.labels[index] for label in (0, 1)]
    readable = dataset[0]
    assert int(readable["bad_index"]) == -1 and readable["bad_index"].dtype == torch.int64


def test_substitution_wraps_around_and_a_wholly_unreadable_class_is_named(
    tmp_path: Path,
) -> None:
    write_image_folder(tmp_path, classes=2, per_class=3, size=16)
    last = tmp_path / "n00000000" / "n00000000_2.JPEG"
    last.write_bytes(b"")
    dataset = LabeledImageFolder(tmp_path, TO_TENSOR)
    item = dataset[2]
    assert int(item["bad_index"]) == 2 and int(item["label"]) == 0
    torch.testing.assert_close(item["image"], dataset[0]["image"])  # wrapped to the first
    for path in (tmp_path / "n00000001").iterdir():
        path.write_text("not an image")
    with pytest.raises(ValueError, match=r"every image of class folder .*n00000001 is unreadable"):
        dataset[4]
    assert int(dataset[1]["bad_index"]) == -1  # the other class is unaffected


def test_unlabeled_images_are_substituted_and_collate_with_labelled_ones(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "data" / "train", classes=2, per_class=4, size=16)
    write_image_folder(tmp_path / "data" / "val", classes=2, per_class=1, size=16)
    for seed in range(4):
        write_jpeg(tmp_path / "extra" / f"{seed}.jpg", seed, (16, 16))
    bad = tmp_path / "extra" / "1.jpg"
    bad.write_bytes(b"")
    datamodule = _datamodule(
        tmp_path / "data",
        f"data.unlabeled_root={tmp_path / 'extra'}",
        "data.fraction=0.5",
        "data.batch_size=2",
        unlabeled=UnlabeledStream(2, lambda step: True),
    )
    assert datamodule.image_path(0) == str(
        (tmp_path / "data" / "train").absolute() / "n00000000" / "n00000000_0.JPEG"
    )
    assert datamodule.image_path(9) == str(bad.absolute())  # 8 training images, then extra/
    item = datamodule.train_dataset[9]
    assert int(item["bad_index"]) == int(item["index"]) == 9 and int(item["label"]) == -1
    batches = iter(datamodule.train_dataloader())
    for _ in range(2):
        batch = next(batches)
        assert batch["bad_index"].shape == batch["index"].shape == (6,)
    with pytest.raises(IndexError):
        datamodule.image_path(12)


def test_digit_batches_carry_bad_index_too() -> None:
    config = compose_train_config(TINY_OVERRIDES)
    datamodule = MILeDataModule(config.data, Preprocessing())
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["bad_index"].tolist() == [-1] * 32
    assert datamodule.image_path(0) is None


def test_known_bad_files_keep_their_index_after_deletion(tmp_path: Path) -> None:
    _faulty_tree(tmp_path, per_class=5)
    before = _datamodule(tmp_path, "data.fraction=0.6")
    bad = 1
    bad_path = before.image_path(bad)
    assert bad_path is not None
    names = list(before.splits.train_names or [])
    Path(bad_path).unlink()

    shifted = _datamodule(tmp_path, "data.fraction=0.6")
    assert len(shifted.splits.train_labels) == len(names) - 1  # without the record: shifted

    after = _datamodule(tmp_path, "data.fraction=0.6", known_bad_images=[bad_path])
    assert after.splits.train_names == names
    assert after.train_indices == before.train_indices
    assert after.labelled_digest == before.labelled_digest
    assert after.image_path(bad) == bad_path
    item = after.train_dataset[bad]
    assert int(item["bad_index"]) == bad and int(item["label"]) == 0
    # A known-bad file that is still there is substituted without being read.
    truncated = after.image_path(names.index("n00000001_0.JPEG"))
    assert truncated is not None
    fresh = _datamodule(tmp_path, known_bad_images=[bad_path, truncated])
    assert int(fresh.train_dataset[names.index("n00000001_0.JPEG")]["bad_index"]) >= 0


def test_sample_order_is_torchvision_imagefolders_also_with_deleted_known_bad_files(
    tmp_path: Path,
) -> None:
    """Indices of runs made before this loader existed (with ImageFolder) stay valid."""
    from torchvision.datasets import ImageFolder

    names = ["x.JPG", "y.jpeg", "a10.jpg", "a9.jpg", "Z.PNG", "sub/z.png", "sub/deep/q.jpg"]
    for folder in ("b", "a", "A"):
        for seed, name in enumerate([*names, "sub2/.hidden.jpg"]):
            write_jpeg(tmp_path / folder / name, seed, (4, 4))
        (tmp_path / folder / "notes.txt").write_text("not an image")
    classes = sorted(["b", "a", "A"])
    expected = ImageFolder.make_dataset(
        str(tmp_path),
        {name: index for index, name in enumerate(classes)},
        extensions=tuple(IMAGE_SUFFIXES),
        allow_empty=True,
    )
    assert LabeledImageFolder(tmp_path, TO_TENSOR).samples == expected
    deleted = [tmp_path / "a" / "sub" / "deep" / "q.jpg", tmp_path / "b" / "a10.jpg"]
    for path in deleted:
        path.unlink()
    kept = LabeledImageFolder(tmp_path, TO_TENSOR, known_bad=[str(path) for path in deleted])
    assert kept.samples == expected
    assert kept.known_bad_indices == {
        index for index, (path, _) in enumerate(expected) if Path(path) in deleted
    }


def test_known_bad_unlabeled_files_keep_their_place(tmp_path: Path) -> None:
    for seed in range(3):
        write_jpeg(tmp_path / "extra" / f"{seed}.jpg", seed, (16, 16))
    before = list_unlabeled_images(tmp_path / "extra", None)
    deleted = str(before[1].absolute())
    before[1].unlink()
    after = list_unlabeled_images(tmp_path / "extra", None, known_bad=[deleted])
    assert after == before
    listed = tmp_path / "list.txt"
    listed.write_text("0.jpg\n1.jpg\n2.jpg\n")
    with pytest.raises(FileNotFoundError, match="1 of 3 listed"):
        list_unlabeled_images(tmp_path / "extra", listed)
    assert len(list_unlabeled_images(tmp_path / "extra", listed, known_bad=[deleted])) == 3
    images = UnlabeledImages(after, TO_TENSOR, 2, first_index=10, known_bad=[deleted])
    assert int(images[1]["bad_index"]) == 11 and images.path_of(11) == deleted
    torch.testing.assert_close(images[1]["image"], images[2]["image"])


# ------------------------------------------------------------------------------------------
# Start-up checks
# ------------------------------------------------------------------------------------------


def test_empty_class_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "data" / "train", classes=2, per_class=4, size=16)
    write_image_folder(tmp_path / "data" / "val", classes=2, per_class=1, size=16)
    (tmp_path / "data" / "train" / "zz_empty").mkdir()
    result = run_cli_in_process(
        [*CLI_TRAIN, f"data.root={tmp_path / 'data'}", "trainer.max_steps=3"], tmp_path
    )
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip().splitlines()
    assert any(
        "1 class folder(s) have no images" in line and "zz_empty" in line for line in message
    )
    assert "data.allow_empty_classes=true" in result.stderr


def test_allow_empty_classes_leaves_them_out_with_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "data"
    write_image_folder(root / "train", classes=3, per_class=4, size=16)
    write_image_folder(root / "val", classes=3, per_class=1, size=16)
    for path in (root / "train" / "n00000001").iterdir():
        path.unlink()
    (root / "val" / "n00000002" / "n00000002_0.JPEG").unlink()
    with pytest.raises(ValueError, match=r"n00000001.*allow_empty_classes"):
        _datamodule(root)
    with caplog.at_level(logging.WARNING):
        datamodule = _datamodule(root, "data.allow_empty_classes=true")
    assert datamodule.class_names == ["n00000000", "n00000002"]
    assert sorted(set(datamodule.splits.train_labels)) == [0, 1]
    # Validation: the left-out class's images are ignored, the empty folder is counted.
    val = datamodule.splits.val
    assert [Path(path).parent.name for path, _ in val.samples] == ["n00000000"]  # type: ignore[attr-defined]
    text = caplog.text
    assert "left out 1 class folder(s) without images" in text and "2 classes remain" in text
    assert "1 of 2 class folders have no images" in text  # validation, with numbers
    assert "training set lacks: n00000001" in text


def test_a_fraction_below_one_image_per_class_warns_with_numbers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_image_folder(tmp_path / "train", classes=3, per_class=6, size=16)
    write_image_folder(tmp_path / "val", classes=3, per_class=1, size=16)
    with caplog.at_level(logging.WARNING):
        datamodule = _datamodule(tmp_path, "data.fraction=0.0001", "data.batch_size=2")
    assert len(datamodule.train_indices) == 3  # unchanged: one per class
    assert "data.fraction=0.0001 is less than one image for 3 of 3 classes" in caplog.text
    assert "3 of 18 training images" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _datamodule(tmp_path, "data.fraction=0.5", "data.batch_size=2")
    assert "less than one image" not in caplog.text


# ------------------------------------------------------------------------------------------
# 16-bit images
# ------------------------------------------------------------------------------------------


def test_16_bit_png_is_scaled_not_saturated(tmp_path: Path) -> None:
    grey = tmp_path / "train" / "a" / "grey16.png"
    grey.parent.mkdir(parents=True)
    Image.fromarray(np.full((12, 10), 30000, dtype=np.uint16)).save(grey)
    assert Image.open(grey).mode == "I;16"  # the mode whose plain convert("RGB") is white
    assert np.asarray(Image.open(grey).convert("RGB")).mean() > 250
    image = np.asarray(load_rgb(grey))
    assert image.shape == (12, 10, 3) and (image == 30000 >> 8).all()
    colour = _png16(
        tmp_path / "train" / "a" / "rgb16.png", np.full((8, 8, 3), (40000, 20000, 1000))
    )
    assert np.asarray(load_rgb(colour))[0, 0].tolist() == [40000 >> 8, 20000 >> 8, 1000 >> 8]
    # The training set and unlabeled images decode alike.
    item = LabeledImageFolder(tmp_path / "train", TO_TENSOR)[0]
    assert abs(float(item["image"].mean()) * 255 - (30000 >> 8)) < 1
    unlabeled = UnlabeledImages([grey], TO_TENSOR, 1)[0]
    torch.testing.assert_close(unlabeled["image"], item["image"])


def test_load_rgb_names_the_file_and_why(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(UnreadableImageError, match=r"empty.jpg: cannot be read .*0 bytes"):
        load_rgb(empty)
    truncated = _truncate(write_jpeg(tmp_path / "cut.jpg", 0, (48, 48)))
    with pytest.raises(ValueError, match=r"cut.jpg: .*truncated"):
        load_rgb(truncated)


# ------------------------------------------------------------------------------------------
# predict
# ------------------------------------------------------------------------------------------


def test_predict_reports_unreadable_inputs_and_predicts_the_rest(
    faulty_run, tmp_path: Path
) -> None:
    root, run, zero, truncated = faulty_run
    inputs = tmp_path / "inputs"
    good = [write_jpeg(inputs / f"good_{index}.jpg", index) for index in range(3)]
    (inputs / "empty.jpg").write_bytes(b"")
    (inputs / "notes.png").write_text("not an image")
    checkpoint = run / "checkpoints" / "last.ckpt"
    result = run_cli_in_process(["predict", str(inputs), f"checkpoint={checkpoint}"], tmp_path)
    assert result.returncode == 2, "some inputs failed: bad input, after every good prediction"
    lines = result.stdout.splitlines()
    for path in good:
        assert any(line.startswith(str(path)) and "%" in line for line in lines), result.stdout
    errors = result.stderr.splitlines()
    assert f"mile-ssl predict: {inputs / 'empty.jpg'}: empty file (0 bytes)" in errors
    assert f"mile-ssl predict: {inputs / 'notes.png'}: not an image file PIL can read" in errors
    assert "empty.jpg" not in result.stdout, "stdout holds the predictions only"

    results = predict(checkpoint, [inputs, truncated], image_size=32)
    assert [Path(entry["path"]).name for entry in results] == [
        "empty.jpg", "good_0.jpg", "good_1.jpg", "good_2.jpg", "notes.png", truncated.name
    ]  # fmt: skip
    failures = dict(prediction_failures(results))
    assert sorted(failures) == sorted(
        str(p) for p in (inputs / "empty.jpg", inputs / "notes.png", truncated)
    )
    assert "truncated" in failures[str(truncated)]
    assert all(entry["top_k"] for entry in results if entry["error"] is None)
    table = format_predictions(results).splitlines()
    assert len(table) == 2 + 3 and all("good_" in row for row in table[2:]), table


# ------------------------------------------------------------------------------------------
# Integrity scan
# ------------------------------------------------------------------------------------------


def test_scan_finds_unreadable_files_and_the_second_scan_uses_the_cache(tmp_path: Path) -> None:
    zero, truncated = _faulty_tree(tmp_path, per_class=3)
    not_an_image = tmp_path / "val" / "n00000000" / "readme.png"
    not_an_image.write_text("this is text")
    config = compose_train_config(
        ["checkpoint=scratch", "data=folder", f"data.root={tmp_path}"]
    ).data
    first = scan_data(config)
    assert first.checked == 11 and first.from_cache == 0
    assert first.cache == tmp_path / CACHE_NAME == default_cache_path(tmp_path)
    assert dict(first.bad) == {
        str(not_an_image): "not an image file PIL can read",
        str(truncated): dict(first.bad)[str(truncated)],
        str(zero): "empty file (0 bytes)",
    }
    assert "truncated" in dict(first.bad)[str(truncated)]
    second = scan_data(config)
    assert (second.checked, second.from_cache, second.bad) == (11, 11, first.bad)
    # A changed file is read again, the others still come from the cache.
    write_jpeg(zero, 3)
    third = scan_data(config)
    assert (third.from_cache, len(third.bad)) == (10, 2)
    uncached = scan_images([zero, truncated], cache=None)
    assert (uncached.checked, uncached.from_cache, len(uncached.bad)) == (2, 0, 1)


def test_check_data_report_lists_the_bad_files_and_sets_the_status(tmp_path: Path) -> None:
    zero, truncated = _faulty_tree(tmp_path, per_class=2)
    config = compose_train_config(
        ["checkpoint=scratch", "data=folder", f"data.root={tmp_path}"]
    ).data
    text, status = check_data_report(config)
    assert status == 1
    assert f"  {zero}: empty file (0 bytes)" in text.splitlines()
    assert str(truncated) in text and "2 unreadable" in text
    zero.unlink()
    truncated.unlink()
    text, status = check_data_report(config)
    assert (status, text.count("\n")) == (0, 0) and "0 unreadable" in text
    (tmp_path / "train" / "empty_class").mkdir()
    text, status = check_data_report(config)
    assert status == 1 and "1 training class folder(s) have no images: empty_class" in text
    digits = compose_train_config(["checkpoint=scratch"]).data
    with pytest.raises(ValueError, match="data=folder"):
        check_data_report(digits)


def test_check_data_command_lists_unreadable_files(tmp_path: Path) -> None:
    zero, truncated = _faulty_tree(tmp_path / "data", per_class=2)
    result = run_cli_in_process(
        ["check-data", "data=folder", f"data.root={tmp_path / 'data'}"], tmp_path
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert str(zero) in result.stdout and str(truncated) in result.stdout
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------
# Divergence, resume, checkpoint files, Ctrl-C
# ------------------------------------------------------------------------------------------

STEPS = ["trainer.log_every_n_steps=1", "method=sigmoid"]


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "logs" / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _finite(path: Path) -> bool:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return all(
        bool(torch.isfinite(value).all()) for value in state.values() if value.is_floating_point()
    )


def test_divergence_stops_at_once_and_keeps_every_checkpoint_finite(tmp_path: Path) -> None:
    result = run_cli_in_process(
        [
            "train",
            *TINY_OVERRIDES,
            *STEPS,
            "optim.lr=1e6",
            "trainer.max_steps=30",
            "trainer.checkpoint_every_n_steps=1",
            "hydra.run.dir=run",
        ],
        tmp_path,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    message = result.stderr[result.stderr.index("error:") :]
    assert "diverged" in message and "by step" in message or "at step" in message
    assert "optim.lr=1000000.0" in message
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    assert checkpoints, "the steps before the divergence keep their checkpoints"
    assert all(_finite(path) for path in checkpoints)
    steps = [int(path.stem.removeprefix("step")) for path in checkpoints if path.stem != "last"]
    assert max(steps) < 10  # stopped within the first steps, not after all 30
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_warm_up_longer_than_the_run_is_refused(tmp_path: Path) -> None:
    result = run_cli_in_process(
        ["train", *TINY_OVERRIDES, "optim.warmup_steps=1000", "trainer.max_steps=30"], tmp_path
    )
    assert result.returncode == 2
    assert "optim.warmup_steps" in result.stderr and "trainer.max_steps" in result.stderr


def test_chance_level_results_are_flagged() -> None:
    table = format_metrics_table({"mile": {"top1": 0.101, "chance_top1": 0.1}})
    assert "chance level" in table
    assert "chance level" not in format_metrics_table({"mile": {"top1": 0.5, "chance_top1": 0.1}})


@pytest.fixture(scope="module")
def first_run(module_tmp_path: Path) -> Path:
    """Six steps with a checkpoint every two, logging every step."""
    result = run_cli_in_process(
        [
            "train",
            *TINY_OVERRIDES,
            *STEPS,
            "trainer.max_steps=6",
            "trainer.checkpoint_every_n_steps=2",
            "hydra.run.dir=first",
        ],
        module_tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return module_tmp_path / "first"


def test_resume_applies_a_new_learning_rate_and_continues_the_log(
    first_run: Path, tmp_path: Path
) -> None:
    checkpoint = first_run / "checkpoints" / "step4.ckpt"
    result = run_cli_in_process(
        [
            "train",
            *TINY_OVERRIDES,
            *STEPS,
            "trainer.max_steps=6",
            "optim.lr=0.05",
            f"trainer.resume_from={checkpoint}",
            "hydra.run.dir=resumed",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "changed on resume at step 4: optim.lr 0.1 -> 0.05" in result.stdout + result.stderr
    rows = _rows(tmp_path / "resumed")
    steps = sorted({int(row["step"]) for row in rows if row.get("train/lr")})
    assert steps[:4] == [0, 1, 2, 3], "the rows before the checkpoint are kept"
    lr = {int(row["step"]): float(row["train/lr"]) for row in rows if row.get("train/lr")}
    before = {
        int(row["step"]): float(row["train/lr"]) for row in _rows(first_run) if row.get("train/lr")
    }
    assert lr[3] == pytest.approx(before[3])
    # After the resume: the same cosine schedule at half the peak rate.
    assert lr[4] == pytest.approx(before[4] / 2)
    resolved = (tmp_path / "resumed" / "resolved_config.yaml").read_text()
    assert "lr: 0.05" in resolved


@pytest.mark.parametrize(
    ("override", "saved", "changed"),
    [
        ("method=softmax", "method.name='sigmoid'", "'softmax'"),
        ("data.strong_student_view=true", "data.strong_student_view=False", "True"),
    ],
)
def test_resume_refuses_a_changed_setting_before_writing(
    first_run: Path, tmp_path: Path, override: str, saved: str, changed: str
) -> None:
    checkpoint = first_run / "checkpoints" / "step4.ckpt"
    result = run_cli_in_process(
        [
            "train",
            *TINY_OVERRIDES,
            *STEPS,
            override,
            "trainer.max_steps=6",
            f"trainer.resume_from={checkpoint}",
            "hydra.run.dir=resumed",
        ],
        tmp_path,
    )
    assert result.returncode == 2
    assert saved in result.stderr and changed in result.stderr
    assert not (tmp_path / "resumed").exists()


def test_failed_resume_changes_nothing_in_the_run_folder(first_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name in ("resolved_config.yaml", "metrics.json"):
        (run / name).write_bytes((first_run / name).read_bytes())
    (run / "logs").mkdir()
    (run / "logs" / "metrics.csv").write_bytes((first_run / "logs" / "metrics.csv").read_bytes())
    truncated = run / "step4.ckpt"
    data = (first_run / "checkpoints" / "step4.ckpt").read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    before = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    result = run_cli_in_process(
        [
            "train",
            *TINY_OVERRIDES,
            *STEPS,
            "trainer.max_steps=6",
            f"trainer.resume_from={truncated}",
            f"hydra.run.dir={run}",
        ],
        tmp_path,
    )
    assert result.returncode == 2
    assert str(truncated) in result.stderr and "Traceback" not in result.stderr
    after = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    assert {path: after[path] for path in before} == before


class _DiskFull:
    """A ``torch.save`` that writes part of the file, then fails as a full disk does."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __call__(self, payload: Any, file: Any) -> None:
        file.write(b"PK\x03\x04 partial checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")


def test_failed_save_leaves_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    write_atomically({"step": 1}, path)
    monkeypatch.setattr(checkpoint_io.torch, "save", _DiskFull(torch.save))
    with pytest.raises(OSError, match="no space left") as info:
        write_atomically({"step": 2}, path)
    assert str(path) in str(info.value)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def _wait_for_logged_steps(process: subprocess.Popen[str], metrics: Path, steps: int) -> None:
    """Wait (at most 5 minutes) until ``metrics`` holds ``steps`` training rows."""
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) > steps):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)


def test_ctrl_c_saves_a_checkpoint_that_resumes(tmp_path: Path) -> None:
    command = [
        MILE_SSL,
        "train",
        *TINY_OVERRIDES,
        *STEPS,
        "trainer.max_steps=100000",
        "hydra.run.dir=run",
    ]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a pytest-xdist worker ignores SIGINT, and a process started
        # with SIGINT ignored keeps ignoring it (nohup's meaning), by design.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        # Into the training loop: the first step is logged (log_every_n_steps=1).
        _wait_for_logged_steps(process, tmp_path / "run" / "logs" / "metrics.csv", steps=1)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()  # never leave a 100,000-step run behind a failed test
            process.communicate()
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert checkpoint.exists() and _finite(checkpoint)
    resume_line = stdout.strip().splitlines()[-1].strip()
    assert (
        resume_line.startswith("mile-ssl train")
        and f"trainer.resume_from={checkpoint}" in resume_line
    )
    step = torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"]
    # The printed command resumes (here shortened to two more steps).
    words = shlex.split(resume_line)[2:]
    words = [
        word for word in words if not word.startswith(("trainer.max_steps=", "hydra.run.dir="))
    ]
    resumed = run_cli_in_process(
        ["train", *words, f"trainer.max_steps={step + 2}", "hydra.run.dir=resumed"], tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.momentum=1.5", "optim.momentum"),
        ("optim.weight_decay=-0.1", "optim.weight_decay"),
        ("trainer.precision=17", "trainer.precision"),
        ("data.image_size=0", "data.image_size"),
        ("optim.warmup_steps=100", "optim.warmup_steps"),
    ],
)
def test_config_values_are_checked_before_any_data_is_read(override: str, key: str) -> None:
    # data.root does not exist: the config check must come first to be seen at all.
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        compose_train_config(
            [
                "checkpoint=scratch",
                "data=folder",
                "data.root=/nonexistent",
                "trainer.max_steps=10",
                override,
            ]
        )
