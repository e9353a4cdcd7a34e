"""A resume continues the same run or stops: data and network identity, allowed changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_NETWORK, run_cli_in_process, write_image_folder

TRAIN = [
    "train",
    *TINY_NETWORK,
    "data=folder",
    "data.image_size=32",
    "data.batch_size=4",
    "data.num_workers=0",
    "mile.kt=1",
    "mile.ks=1",
]


def _tree(root: Path, classes: int = 2, names: tuple[str, ...] | None = None) -> Path:
    write_image_folder(root / "train", classes=classes, per_class=6)
    write_image_folder(root / "val", classes=classes, per_class=1)
    for split in ("train", "val"):
        for index, name in enumerate(names or ()):
            folder = root / split / f"n{index:08d}"
            for image in folder.iterdir():
                image.rename(folder / image.name.replace(folder.name, name))
            folder.rename(root / split / name)
    return root


@pytest.fixture(scope="module")
def first_run(module_tmp_path: Path) -> Path:
    """Two steps on a two-class image folder, in run folder ``run``."""
    _tree(module_tmp_path / "data")
    result = run_cli_in_process(
        [
            *TRAIN,
            f"data.root={module_tmp_path / 'data'}",
            "trainer.max_steps=2",
            "hydra.run.dir=run",
        ],
        module_tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return module_tmp_path / "run"


def _unchanged(folder: Path, before: dict[Path, bytes]) -> None:
    """Every file as it was, but the job log, which may only have grown by the message,
    and the lock file, which names the last process that held the folder."""
    after = _files(folder)
    log, lock = folder / "cli.log", folder / ".lock"
    assert after.pop(log).startswith(before[log])
    assert after.pop(lock).startswith(b"process ")
    assert after == {path: data for path, data in before.items() if path not in (log, lock)}


def _files(folder: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("other_names", "its class 0 is 'n00000000', this run's is 'cat'"),
        ("three_classes", "it was trained on 2 classes, this run's data has 3"),
        ("more_images", "class 'n00000001' had 6 training images, it has 7 now"),
        (
            "wider_backbone",
            "this run builds a tiny_resnet {'widths': [16, 32], 'blocks_per_stage': 1}",
        ),
        ("image_size", "data.image_size=32, this run sets 48"),
    ],
)
def test_a_resume_on_other_data_or_network_stops_naming_it_and_writes_nothing(
    first_run: Path, tmp_path: Path, change: str, message: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(first_run, run)
    data, extra = tmp_path / "data", []
    if change == "other_names":  # same shape: same class count, images per class, sizes
        _tree(data, names=("cat", "dog"))
    elif change == "three_classes":
        _tree(data, classes=3)
    else:
        shutil.copytree(first_run.parent / "data", data)
    if change == "more_images":
        image = next((data / "train" / "n00000001").iterdir())
        shutil.copy(image, image.with_name("extra.JPEG"))
    if change == "wider_backbone":
        extra = ["backbone.kwargs.widths=[16,32]"]
    if change == "image_size":
        extra = ["data.image_size=48"]
    before = _files(run)
    # The run folder holds last.ckpt: the same command there resumes from it.
    result = run_cli_in_process(
        [*TRAIN, f"data.root={data}", "trainer.max_steps=4", *extra, f"hydra.run.dir={run}"],
        tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert message in result.stderr, result.stderr[-3000:]
    assert "cannot resume from" in result.stderr and "Traceback" not in result.stderr
    _unchanged(run, before)


def test_a_new_batch_size_is_applied_and_logged(first_run: Path, tmp_path: Path) -> None:
    result = run_cli_in_process(
        [
            *TRAIN,
            f"data.root={first_run.parent / 'data'}",
            "data.batch_size=2",
            "trainer.max_steps=3",
            f"trainer.resume_from={first_run / 'checkpoints' / 'last.ckpt'}",
            "hydra.run.dir=resumed",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "changed on resume at step 2: data.batch_size 4 -> 2" in output
    assert "changed on resume at step 2: global batch 4 -> 2" in output
    state = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["mile_ssl"]["metadata"]["batch"] == {"batch_size": 2, "world_size": 1}


def test_a_finished_run_folder_is_not_trained_again_silently(
    first_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(first_run, run)
    before = _files(run)
    result = run_cli_in_process(
        [
            *TRAIN,
            f"data.root={first_run.parent / 'data'}",
            "trainer.max_steps=2",
            f"hydra.run.dir={run}",
        ],
        tmp_path,
    )
    assert result.returncode == 2
    assert "the run folder already holds a finished run" in result.stderr
    assert "hydra.run.dir" in result.stderr
    _unchanged(run, before)


def test_a_checkpoint_from_before_a_setting_existed_resumes(
    first_run: Path, tmp_path: Path
) -> None:
    """A run started before an upgrade that added a ``mile`` key resumes after it; a
    setting the checkpoint does record may still not change."""
    old = torch.load(first_run / "checkpoints" / "last.ckpt", weights_only=False)
    del old["mile_ssl"]["mile"]["empty_pseudo_labels"]  # as if written before the key
    torch.save(old, tmp_path / "old.ckpt")
    resume = [
        *TRAIN,
        f"data.root={first_run.parent / 'data'}",
        f"trainer.resume_from={tmp_path / 'old.ckpt'}",
    ]
    result = run_cli_in_process([*resume, "trainer.max_steps=3", "hydra.run.dir=a"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["mile_ssl"]["completed_steps"] == 3
    assert resumed["mile_ssl"]["mile"]["empty_pseudo_labels"] == "ignore"
    changed = run_cli_in_process([*resume, "mile.rho=0.3", "hydra.run.dir=b"], tmp_path)
    assert changed.returncode == 2, changed.stderr[-3000:]
    assert "it was trained with mile.rho=0.5, this run sets 0.3" in changed.stderr
