"""``data.backend=dali``: the torchvision backend's items, order and crops; exact resume."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from mile_ssl.commands.train import run_training
from mile_ssl.config import compose_train_config
from mile_ssl.data.dali import DaliLoader
from mile_ssl.data.datamodule import MILeDataModule, UnlabeledStream
from mile_ssl.data.folder import LabeledImageFolder
from mile_ssl.networks.preprocessing import Preprocessing
from tests.broken_images import corrupt_idat, cut_and_close_png, write_image
from tests.conftest import TINY_OVERRIDES, run_cli_in_process, write_image_folder

pytest.importorskip("nvidia.dali")

TRAIN_GIF = "train/n00000001/n00000001_4.gif"
VAL_GIF = "val/n00000002/n00000002_0.gif"

CLOSE = 0.02
"""Mean absolute difference (normalised units) allowed between the two backends' images:
the same windows, decoded and resampled by different libraries."""


@pytest.fixture(scope="module")
def tree(module_tmp_path: Path) -> Path:
    """Three classes of six 40 x 40 images to train on, two of each to validate on.

    All are JPEGs but one training and one validation image, GIFs, which DALI's decoder
    refuses and PIL reads (same names otherwise, so the sample order is the JPEG tree's).
    """
    root = module_tmp_path / "images"
    write_image_folder(root / "train", classes=3, per_class=6, size=40)
    write_image_folder(root / "val", classes=3, per_class=2, size=40)
    for gif in (TRAIN_GIF, VAL_GIF):
        jpeg = (root / gif).with_suffix(".JPEG")
        jpeg.unlink()
        write_image(root / gif, seed=len(gif), size=(40, 40))
    return root


def _datamodule(root: Path, backend: str, *overrides: str, **kwargs: Any) -> MILeDataModule:
    config = compose_train_config(
        [
            "checkpoint=scratch",
            "data=folder",
            f"data.root={root}",
            "data.image_size=24",
            "data.batch_size=4",
            "data.num_workers=0",
            f"data.backend={backend}",
            *overrides,
        ]
    )
    return MILeDataModule(config.data, Preprocessing(mean=(0.5, 0.4, 0.3)), **kwargs)


def _both(root: Path, *overrides: str, **kwargs: Any) -> list[tuple[dict[str, Any], ...]]:
    """Training then validation batches of both backends, side by side."""
    passes = []
    for backend in ("torchvision", "dali"):
        datamodule = _datamodule(root, backend, *overrides, **kwargs)
        passes.append([*datamodule.train_dataloader(), *datamodule.val_dataloader()])
    assert len(passes[0]) == len(passes[1])
    return list(zip(*passes, strict=True))


def _assert_same_items(reference: dict[str, Any], dali: dict[str, Any]) -> None:
    assert reference.keys() == dali.keys()
    for key, value in reference.items():
        assert (value.shape, value.dtype) == (dali[key].shape, dali[key].dtype), key
        if key != "image":
            assert torch.equal(value, dali[key]), key
    assert (reference["image"] - dali["image"]).abs().mean() < CLOSE


def test_dali_serves_the_torchvision_items_in_the_same_order_and_crops(tree: Path) -> None:
    pairs = _both(tree, "data.fraction=0.5")
    assert len(pairs) == 2 + 2  # 9 labelled images: 2 batches of 4; 6 to validate: 4 + 2
    for reference, dali in pairs:
        _assert_same_items(reference, dali)
    assert pairs[0][1]["image"].shape == (4, 3, 24, 24)
    assert pairs[-1][1]["index"].tolist() == [4, 5]


def test_semi_supervised_dali_batches_flag_the_unlabeled_images(tree: Path) -> None:
    stream = UnlabeledStream(ratio=2, uses_unlabeled=lambda step: step == 1)
    pairs = _both(tree, "data.fraction=0.5", unlabeled=stream)
    for reference, dali in pairs:
        _assert_same_items(reference, dali)
    first, second = (dali for _, dali in pairs[:2])
    assert first["labelled"].all() and len(first["index"]) == 4
    assert second["labelled"].tolist() == [True] * 4 + [False] * 8
    assert (second["label"][4:] == -1).all()


def test_dali_substitutes_unreadable_images_as_the_torchvision_backend(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "train", classes=2, per_class=4, size=40)
    write_image_folder(tmp_path / "val", classes=2, per_class=2, size=40)
    (tmp_path / "train" / "n00000000" / "n00000000_1.JPEG").write_bytes(b"")
    truncated = tmp_path / "train" / "n00000001" / "n00000001_2.JPEG"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # header intact: only decoding fails
    # PNGs whose header and end marker are intact: only decoding finds them.
    for damage, name in ((corrupt_idat, "n00000000_2"), (cut_and_close_png, "n00000001_0")):
        folder = tmp_path / "train" / name.split("_")[0]
        (folder / f"{name}.JPEG").unlink()
        damage(write_image(folder / f"{name}.png", seed=3, size=(40, 40)))
    bad_val = tmp_path / "val" / "n00000001" / "n00000001_1.JPEG"
    bad_val.write_bytes(b"not an image")
    pairs = _both(tmp_path, "data.batch_size=8")
    for reference, dali in pairs:
        _assert_same_items(reference, dali)
    marks = pairs[0][1]["bad_index"]
    assert sorted(marks[marks >= 0].tolist()) == [1, 2, 4, 6]
    assert pairs[-1][1]["bad_index"].tolist() == [-1, -1, -1, 3]


def _rows(batches: list[dict[str, Any]], key: str, index: int) -> list[torch.Tensor]:
    return [batch[key][row] for batch in batches for row in (batch["index"] == index).nonzero()]


def test_dali_decodes_a_file_only_pil_reads_with_pil_into_the_same_view(
    tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    every_image = ("data.fraction=1.0", "data.batch_size=6")  # 18 images: 3 full batches
    datamodule = _datamodule(tree, "dali", *every_image)
    reference = _datamodule(tree, "torchvision", *every_image)
    train_index = _file_names(reference.splits.train).index(Path(TRAIN_GIF).name)
    val_index = _file_names(reference.splits.val).index(Path(VAL_GIF).name)
    with caplog.at_level("WARNING", logger="mile_ssl.data.dali_items"):
        loader = datamodule.train_dataloader()
        assert isinstance(loader, DaliLoader)
        # The pass twice: the GIF is in both, and DALI is asked about it once.
        dali = [*loader, *loader]
        validation = [*datamodule.val_dataloader()]
    torchvision = [*reference.train_dataloader(), *reference.train_dataloader()]
    # The GIF's items are PIL's decode through the torchvision backend's crop and flip:
    # the same tensors, not merely close ones; and the item is not an unreadable one.
    gif_rows = _rows(dali, "image", train_index)
    assert len(gif_rows) == 2
    assert all(
        torch.equal(mine, theirs)
        for mine, theirs in zip(gif_rows, _rows(torchvision, "image", train_index), strict=True)
    )
    assert all(mark == -1 for mark in _rows(dali, "bad_index", train_index))
    (val_row,) = _rows(validation, "image", val_index)
    (val_reference,) = _rows([*reference.val_dataloader()], "image", val_index)
    assert torch.equal(val_row, val_reference)
    assert set(loader.items.pil_decoded) == {str(tree / TRAIN_GIF)}
    named = [r.getMessage() for r in caplog.records if "DALI cannot" in r.getMessage()]
    assert [message.split(":")[0] for message in named] == [
        str(tree / TRAIN_GIF),
        str(tree / VAL_GIF),
    ]
    assert "PIL decodes it instead" in named[0]


def _file_names(dataset: object) -> list[str]:
    assert isinstance(dataset, LabeledImageFolder)
    return dataset.file_names


def test_dali_refuses_the_strong_student_view_naming_the_key(tree: Path) -> None:
    with pytest.raises(ValueError, match="data.strong_student_view=true.*data.backend=torchvision"):
        _datamodule(tree, "dali", strong_student_view=True)


@pytest.mark.parametrize("backend", ["torchvision", "dali"])
def test_image_folder_run_resumes_with_the_same_weights(
    backend: str, tree: Path, tmp_path: Path
) -> None:
    # 18 images / batch 4 = 4 steps per pass; the step-3 checkpoint is mid-cycle and
    # mid-pass, and steps 4-6 run in the second pass.
    overrides = [
        *TINY_OVERRIDES,
        "data=folder",
        f"data.root={tree}",
        "data.image_size=16",
        "data.batch_size=4",
        "data.num_workers=0",
        f"data.backend={backend}",
        "method=mile",
        "mile.kt=2",
        "mile.ks=2",
        "trainer.max_steps=6",
        "trainer.checkpoint_every_n_steps=3",
    ]
    full = run_training(compose_train_config(overrides), tmp_path / "full")
    checkpoint = tmp_path / "full" / "checkpoints" / "step3.ckpt"
    resumed = run_training(
        compose_train_config([*overrides, f"trainer.resume_from={checkpoint}"]),
        tmp_path / "resumed",
    )
    full_state = torch.load(full.last_checkpoint, weights_only=True)["state_dict"]
    resumed_state = torch.load(resumed.last_checkpoint, weights_only=True)["state_dict"]
    for key, value in full_state.items():
        assert torch.equal(value, resumed_state[key]), key


def test_without_dali_the_error_says_how_to_install_it(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # nvidia.dali cannot be imported, as on a machine without the extra.
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    args = [
        "train",
        *TINY_OVERRIDES,
        "data=folder",
        f"data.root={tree}",
        "data.backend=dali",
        "hydra.run.dir=run",
    ]
    result = run_cli_in_process(args, tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "pip install 'mile-ssl[dali]'" in result.stderr
    assert "Traceback" not in result.stderr
