"""``eval_command_result`` on a small ImageNet tree: ReaL by file name, checked by hand."""

from __future__ import annotations

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
from tests.conftest import TINY_OVERRIDES, write_jpeg

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
