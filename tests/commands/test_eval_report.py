"""``eval_command_result`` on a small ImageNet tree: ReaL by file name, checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mile_ssl.commands.eval_report import eval_command_result, format_eval_result
from mile_ssl.commands.train import run_training
from mile_ssl.config import compose_train_config
from mile_ssl.data.augment import eval_transform
from mile_ssl.data.imagenet import imagenet_classes, real_label_sets, shipped_split
from mile_ssl.metrics import classification_report
from mile_ssl.networks.preprocessing import Preprocessing
from mile_ssl.runs.finished_run import read_finished_run
from tests.conftest import (
    TINY_NETWORK,
    TINY_OVERRIDES,
    folder_run_overrides,
    run_cli_in_process,
    write_image_folder,
    write_jpeg,
)

VAL_IMAGES = 8
"""``ILSVRC2012_val_00000001`` (no ReaL label) to ``..._00000008``; some have two labels."""


@pytest.fixture(scope="module")
def imagenet_tree(module_tmp_path: Path) -> Path:
    """Training images of two classes (names from the 1 % list); validation images filed
    under the wnid of their first ReaL label, as in the real validation folder."""
    root = module_tmp_path / "imagenet"
    split = shipped_split(0.01)
    assert split is not None
    listed = split.read_text().split()
    wnids = sorted({name.split("_")[0] for name in listed[:40]})[:2]
    for wnid in wnids:
        for index, name in enumerate([name for name in listed if name.startswith(wnid)][:3]):
            write_jpeg(root / "train" / wnid / name, index, size=(40, 44))
    classes = imagenet_classes()
    real = real_label_sets()
    for number in range(1, VAL_IMAGES + 1):
        name = f"ILSVRC2012_val_{number:08d}.JPEG"
        wnid = classes[real[name][0]] if real[name] else wnids[0]
        write_jpeg(root / "val" / wnid / name, 100 + number, size=(40, 44))
    return root


def _overrides(root: Path) -> list[str]:
    return [
        *TINY_OVERRIDES,
        "data=imagenet",
        f"data.root={root}",
        "data.image_size=32",
        "data.batch_size=4",
        "data.num_workers=0",
    ]


@pytest.fixture(scope="module")
def run_checkpoint(imagenet_tree: Path, module_tmp_path: Path) -> Path:
    config = compose_train_config(
        [*_overrides(imagenet_tree), "trainer.max_steps=2", "mile.kt=1", "mile.ks=1"]
    )
    return run_training(config, module_tmp_path / "eval_run").last_checkpoint


def _direct_metrics(checkpoint: Path, root: Path) -> dict[str, float]:
    """Logits image by image, labels from the folder, ReaL sets looked up by file name."""
    module = read_finished_run(checkpoint).build_module().eval()
    transform = eval_transform(32, Preprocessing.from_dict(module.metadata["preprocessing"]))
    classes = imagenet_classes()
    real = real_label_sets()
    logits, targets, label_sets = [], [], []
    for path in sorted((root / "val").glob("*/*.JPEG"), key=lambda path: path.name):
        with torch.no_grad():
            logits.append(module(transform(Image.open(path).convert("RGB"))[None])[0])
        targets.append(classes.index(path.parent.name))
        label_sets.append(real[path.name])
    return classification_report(
        torch.stack(logits),
        torch.tensor(targets),
        label_sets,
        multi_label=module.method.name != "softmax",
        threshold=module.method.eval_threshold,
    )


def test_real_metrics_match_a_direct_computation(run_checkpoint: Path, imagenet_tree: Path) -> None:
    # A 1 % split list the tree mostly lacks must not stop an evaluation.
    data = compose_train_config([*_overrides(imagenet_tree), "data.fraction=0.01"]).data
    result = eval_command_result(run_checkpoint, data, accelerator="cpu")

    metrics = result["metrics"]
    for key in ("top1", "top5", "real_acc", "real_f1", "coverage", "secondary_map"):
        assert key in metrics, key
    expected = _direct_metrics(run_checkpoint, imagenet_tree)
    assert set(expected) <= set(metrics)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), key
    assert metrics["num_samples"] == VAL_IMAGES

    assert result["checkpoint"]["path"] == str(run_checkpoint)
    assert result["checkpoint"]["num_classes"] == 1000
    assert result["checkpoint"]["completed_steps"] == 2
    assert result["checkpoint"]["method"]["name"] == "mile"
    assert result["dataset"]["name"] == "imagenet"
    assert result["dataset"]["root"] == str(imagenet_tree)
    assert "ImageNet-ReaL" in result["dataset"]["label_sets"]
    assert result["dataset"]["num_samples"] == VAL_IMAGES
    text = format_eval_result(result)
    assert "ReaL-F1" in text and "top-5" in text and str(run_checkpoint) in text


def test_class_mismatch_names_checkpoint_and_dataset(
    run_checkpoint: Path, imagenet_tree: Path, tmp_path: Path
) -> None:
    for wnid in ("cat", "dog"):
        write_jpeg(tmp_path / "train" / wnid / "a.jpg", 1, size=(40, 44))
        write_jpeg(tmp_path / "val" / wnid / "b.jpg", 2, size=(40, 44))
    data = compose_train_config(
        [*TINY_OVERRIDES, "data=folder", f"data.root={tmp_path}", "data.num_workers=0"]
    ).data
    with pytest.raises(ValueError, match=r"last\.ckpt was trained on 1000 classes.*has 2"):
        eval_command_result(run_checkpoint, data, accelerator="cpu")


def test_evaluation_needs_no_training_folder(
    run_checkpoint: Path, imagenet_tree: Path, tmp_path: Path
) -> None:
    import shutil

    # A machine that holds the validation images only, and an unlabeled folder setting
    # left over from a semi-supervised run that does not exist here.
    shutil.copytree(imagenet_tree / "val", tmp_path / "val")
    data = compose_train_config(
        [
            *_overrides(tmp_path),
            "data.fraction=0.01",
            f"data.unlabeled_root={tmp_path / 'absent'}",
        ]
    ).data
    metrics = eval_command_result(run_checkpoint, data, accelerator="cpu")["metrics"]
    expected = _direct_metrics(run_checkpoint, imagenet_tree)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), key


def test_folder_evaluation_uses_the_checkpoint_classes(tmp_path: Path) -> None:
    for split, count in (("train", 8), ("val", 3)):
        for label, wnid in enumerate(("cat", "dog")):
            for index in range(count):
                write_jpeg(
                    tmp_path / "data" / split / wnid / f"{wnid}{index}.jpg",
                    10 * label + index,
                    size=(40, 44),
                )
    overrides = [*TINY_OVERRIDES, "data=folder", "data.image_size=32", "data.batch_size=4"]
    run = run_training(
        compose_train_config([*overrides, f"data.root={tmp_path / 'data'}", "trainer.max_steps=2"]),
        tmp_path / "run",
    )
    (tmp_path / "data" / "train").rename(tmp_path / "elsewhere")
    data = compose_train_config([*overrides, f"data.root={tmp_path / 'data'}"]).data
    metrics = eval_command_result(run.last_checkpoint, data, accelerator="cpu")["metrics"]
    assert metrics["num_samples"] == 6
    assert metrics["top1"] == pytest.approx(run.metrics["top1"])


@pytest.fixture(scope="module")
def run_at_64_pixels(module_tmp_path: Path) -> tuple[Path, Path]:
    """A two-step run trained on 64-pixel crops of 72-pixel JPEGs: (image root, run folder).

    Any size but the shipped 224 shows whether eval sees the images as training did. The
    network is 16 channels wide: this torch build's CPU backward of a channels-last 1x1
    stride-2 convolution with 8 input channels corrupts memory from 48-pixel inputs on.
    """
    root = module_tmp_path / "folder64"
    write_image_folder(root / "train", classes=2, per_class=4, size=72)
    write_image_folder(root / "val", classes=2, per_class=3, size=72)
    overrides = [item for item in folder_run_overrides(root) if "image_size" not in item]
    config = compose_train_config(
        [*TINY_NETWORK, "backbone.kwargs.widths=[16,32]", *overrides, "data.image_size=64"]
    )
    return root, run_training(config, module_tmp_path / "run64").output_dir


def _saved_metrics(run: Path) -> dict[str, float]:
    saved = json.loads((run / "metrics.json").read_text())["metrics"]
    return {key: value for key, value in saved.items() if isinstance(value, float | int)}


def test_eval_without_overrides_reproduces_the_runs_metrics(
    run_at_64_pixels: tuple[Path, Path], tmp_path: Path
) -> None:
    root, run = run_at_64_pixels
    saved = _saved_metrics(run)
    # Without data overrides: the run's own validation set, as it trained; with the data
    # named but no image size: the run's 64 pixels, not the shipped 224.
    for data in ([], ["data=folder", f"data.root={root}", "data.num_workers=0"]):
        result = run_cli_in_process(["eval", f"checkpoint={run}", *data, "--json"], tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        evaluated = json.loads(result.stdout)
        assert evaluated["dataset"]["image_size"] == 64, data
        assert evaluated["dataset"]["backend"] == "torchvision"
        metrics = evaluated["metrics"]
        assert {key: metrics[key] for key in saved} == saved, data  # the same numbers
        assert "differs from the run" not in result.stderr


def test_an_eval_override_that_differs_from_training_is_said(
    run_at_64_pixels: tuple[Path, Path], tmp_path: Path
) -> None:
    root, run = run_at_64_pixels
    data = ["data=folder", f"data.root={root}", "data.num_workers=0", "data.image_size=32"]
    result = run_cli_in_process(["eval", f"checkpoint={run}", *data, "--json"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["dataset"]["image_size"] == 32
    said = [line for line in result.stderr.splitlines() if "differs from the run" in line]
    assert len(said) == 1 and "data.image_size=32" in said[0] and "data.image_size=64" in said[0]


def test_eval_decodes_with_the_backend_the_run_trained_with_or_the_one_set(
    tmp_path: Path,
) -> None:
    pytest.importorskip("nvidia.dali")
    from tests.broken_images import write_image

    # A GIF among the validation JPEGs: DALI's decoder refuses it and names it in a
    # warning before PIL decodes it; the torchvision backend reads it without a word.
    root = tmp_path / "images"
    write_image_folder(root / "train", classes=2, per_class=4, size=40)
    write_image_folder(root / "val", classes=2, per_class=2, size=40)
    gif = root / "val" / "n00000001" / "n00000001_0.gif"
    (root / "val" / "n00000001" / "n00000001_0.JPEG").unlink()
    write_image(gif, seed=3, size=(40, 40))
    config = compose_train_config([*TINY_NETWORK, *folder_run_overrides(root), "data.backend=dali"])
    run = run_training(config, tmp_path / "run").output_dir
    saved = _saved_metrics(run)

    by_dali = run_cli_in_process(["eval", f"checkpoint={run}", "--json"], tmp_path)
    assert by_dali.returncode == 0, by_dali.stderr[-2000:]
    assert json.loads(by_dali.stdout)["dataset"]["backend"] == "dali"
    assert "validation images decoded by NVIDIA DALI" in by_dali.stderr
    assert f"{gif}: DALI cannot decode it" in by_dali.stderr
    metrics = json.loads(by_dali.stdout)["metrics"]
    assert {key: metrics[key] for key in saved} == saved

    data = ["data=folder", f"data.root={root}", "data.num_workers=0", "data.backend=torchvision"]
    by_pil = run_cli_in_process(["eval", f"checkpoint={run}", *data, "--json"], tmp_path)
    assert by_pil.returncode == 0, by_pil.stderr[-2000:]
    assert json.loads(by_pil.stdout)["dataset"]["backend"] == "torchvision"
    assert "DALI" not in by_pil.stderr.replace("data.backend=dali", "")
    assert "data.backend=torchvision differs from the run" in by_pil.stderr
