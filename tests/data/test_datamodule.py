from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from mile_ssl.config import compose_train_config
from mile_ssl.data.datamodule import MILeDataModule
from mile_ssl.data.imagenet import imagenet_classes, shipped_split
from mile_ssl.networks.preprocessing import Preprocessing


def _jpeg(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (36, 36), (value, 255 - value, 128)).save(path)


@pytest.fixture
def imagenet_tree(tmp_path: Path) -> tuple[Path, list[str]]:
    """Two classes; each has 3 images of the 1 % list and 2 that are not in it."""
    split = shipped_split(0.01)
    assert split is not None
    listed = split.read_text().split()
    wnids = sorted({name.split("_")[0] for name in listed[:40]})[:2]
    chosen = [name for name in listed if name.split("_")[0] in wnids]
    kept: list[str] = []
    for wnid in wnids:
        names = [name for name in chosen if name.startswith(wnid)][:3]
        kept += names
        for index, name in enumerate([*names, f"{wnid}_900001.JPEG", f"{wnid}_900002.JPEG"]):
            _jpeg(tmp_path / "train" / wnid / name, 40 * index)
    _jpeg(tmp_path / "val" / wnids[0] / "ILSVRC2012_val_00000001.JPEG", 10)
    _jpeg(tmp_path / "val" / wnids[1] / "ILSVRC2012_val_00000002.JPEG", 200)
    return tmp_path, kept


def _datamodule(root: Path, *overrides: str) -> MILeDataModule:
    config = compose_train_config(
        [
            "checkpoint=scratch",
            "data=imagenet",
            f"data.root={root}",
            "data.image_size=32",
            *overrides,
        ]
    )
    return MILeDataModule(config.data, Preprocessing())


def test_partial_copy_of_a_standard_split_fails_naming_the_missing_files(imagenet_tree) -> None:
    root, _ = imagenet_tree
    with pytest.raises(ValueError, match=r"of 12811 files listed in .*1percent.txt.*allow_missing"):
        _datamodule(root, "data.fraction=0.01")


def test_allow_missing_trains_on_the_listed_files_present(imagenet_tree) -> None:
    root, kept = imagenet_tree
    datamodule = _datamodule(root, "data.fraction=0.01", "data.allow_missing=true")
    names = [datamodule.splits.train_names[i] for i in datamodule.train_indices]  # type: ignore[index]
    assert sorted(names) == sorted(kept)
    assert datamodule.num_classes == 1000


def test_real_label_sets_follow_file_names(imagenet_tree) -> None:
    root, _ = imagenet_tree
    datamodule = _datamodule(root)
    val = datamodule.splits.val
    items = {int(item["index"]): item for item in (val[i] for i in range(len(val)))}  # type: ignore[arg-type]
    names = val.file_names  # type: ignore[attr-defined]
    by_name = {names[index]: item for index, item in items.items()}
    empty = by_name["ILSVRC2012_val_00000001.JPEG"]["label_set"]
    assert not empty.any()  # excluded from ReaL metrics
    real = by_name["ILSVRC2012_val_00000002.JPEG"]["label_set"]
    assert torch.nonzero(real).flatten().tolist() == [795, 970]
    wnid = (root / "val").glob("*/ILSVRC2012_val_00000002.JPEG").__next__().parent.name
    assert int(by_name["ILSVRC2012_val_00000002.JPEG"]["label"]) == imagenet_classes().index(wnid)


def test_stratified_split_ignores_the_shipped_lists(imagenet_tree) -> None:
    root, _ = imagenet_tree
    datamodule = _datamodule(root, "data.fraction=0.5", "data.split=stratified")
    assert len(datamodule.train_indices) == 4  # round(0.5 * 5) == 2 per class


@pytest.mark.parametrize("layout", ["lines", "kaggle_csv"])
def test_flat_validation_folder_with_a_ground_truth_file(
    imagenet_tree, tmp_path: Path, layout: str
) -> None:
    root, _ = imagenet_tree
    flat = tmp_path / "flat_val"
    wnids = sorted(p.name for p in (root / "train").iterdir())
    _jpeg(flat / "ILSVRC2012_val_00000002.JPEG", 30)
    _jpeg(flat / "ILSVRC2012_val_00000003.JPEG", 60)
    truth = tmp_path / "truth.txt"
    if layout == "lines":
        truth.write_text(
            f"ILSVRC2012_val_00000002.JPEG {wnids[1]}\nILSVRC2012_val_00000003.JPEG 7\n"
        )
    else:
        truth.write_text(
            "ImageId,PredictionString\n"
            f"ILSVRC2012_val_00000002,{wnids[1]} 1 2 3 4\n"
            f"ILSVRC2012_val_00000003,{imagenet_classes()[7]} 5 6 7 8\n"
        )
    datamodule = _datamodule(root, f"data.val_dir={flat}", f"data.val_ground_truth={truth}")
    val = datamodule.splits.val
    labels = {val.file_names[i]: int(val[i]["label"]) for i in range(len(val))}  # type: ignore[attr-defined,index]
    assert labels == {
        "ILSVRC2012_val_00000002.JPEG": imagenet_classes().index(wnids[1]),
        "ILSVRC2012_val_00000003.JPEG": 7,
    }
    truth.write_text("ILSVRC2012_val_00000002.JPEG n99999999\n")
    with pytest.raises(ValueError, match=r"truth.txt:1: unknown class 'n99999999'"):
        _datamodule(root, f"data.val_dir={flat}", f"data.val_ground_truth={truth}")


def test_bad_image_marks_stay_on_the_host_when_a_batch_moves(tiny_config) -> None:
    datamodule = MILeDataModule(tiny_config().data, Preprocessing())
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    moved = datamodule.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert moved.keys() == batch.keys()
    assert moved["image"].device.type == "meta" and moved["label"].device.type == "meta"
    # Read after every step: on the host, reading them never waits for the device.
    assert moved["bad_index"].device.type == "cpu"
    assert torch.equal(moved["bad_index"], batch["bad_index"])
