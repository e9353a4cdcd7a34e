from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from mile_ssl.data.digits import (
    CLASS_NAMES,
    DigitGridConfig,
    DigitGridDataset,
    DigitGrids,
    make_digit_grids,
    make_test_grids,
)

SPLIT_CONFIG = DigitGridConfig(num_train=10_000, num_val=2_000, num_test=2_000, seed=0)


@pytest.fixture(scope="module")
def splits() -> tuple[DigitGrids, DigitGrids]:
    return make_digit_grids(SPLIT_CONFIG)


@pytest.fixture(scope="module")
def test_grids() -> DigitGrids:
    return make_test_grids(SPLIT_CONFIG)


@pytest.fixture(scope="module")
def source() -> tuple[np.ndarray, np.ndarray]:
    bunch = load_digits()
    return np.asarray(bunch.images), np.asarray(bunch.target)


def _fields(grids: DigitGrids) -> dict[str, torch.Tensor]:
    return {
        "images": grids.images,
        "labels": grids.labels,
        "label_sets": grids.label_sets,
        "cells": grids.cells,
        "source_indices": grids.source_indices,
        "label_cell": grids.label_cell,
    }


def test_class_names() -> None:
    assert CLASS_NAMES == ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")


def test_shapes_and_dtypes(splits: tuple[DigitGrids, DigitGrids]) -> None:
    for grids, n in zip(splits, (10_000, 2_000), strict=True):
        assert len(grids) == n
        assert grids.images.shape == (n, 1, 24, 24)
        assert grids.images.dtype == torch.uint8
        assert grids.labels.shape == (n,)
        assert grids.labels.dtype == torch.long
        assert grids.label_sets.shape == (n, 10)
        assert grids.label_sets.dtype == torch.bool
        assert grids.cells.shape == (n, 9)
        assert grids.cells.dtype == torch.long
        assert grids.source_indices.shape == (n, 9)
        assert grids.source_indices.dtype == torch.long
        assert grids.label_cell.shape == (n,)
        assert grids.label_cell.dtype == torch.long
        assert int(grids.images.max()) == 255
        assert int(grids.images.min()) == 0


def test_same_seed_identical_different_seed_differs() -> None:
    cfg = DigitGridConfig(num_train=500, num_val=100, seed=3)
    first = make_digit_grids(cfg)
    second = make_digit_grids(cfg)
    for a, b in zip(first, second, strict=True):
        for name, tensor in _fields(a).items():
            assert torch.equal(tensor, _fields(b)[name]), name

    other = make_digit_grids(DigitGridConfig(num_train=500, num_val=100, seed=4))
    for a, b in zip(first, other, strict=True):
        assert not torch.equal(a.source_indices, b.source_indices)
        assert not torch.equal(a.images, b.images)


def _same_grids(a: DigitGrids, b: DigitGrids) -> bool:
    return all(torch.equal(tensor, _fields(b)[name]) for name, tensor in _fields(a).items())


def test_train_grids_independent_of_num_val_and_num_test() -> None:
    small, _ = make_digit_grids(DigitGridConfig(num_train=300, num_val=10, num_test=5, seed=1))
    large, _ = make_digit_grids(DigitGridConfig(num_train=300, num_val=1_000, num_test=900, seed=1))
    assert _same_grids(small, large)


def test_val_grids_independent_of_num_train_and_num_test() -> None:
    _, few = make_digit_grids(DigitGridConfig(num_train=20, num_val=200, num_test=0, seed=2))
    _, many = make_digit_grids(DigitGridConfig(num_train=900, num_val=200, num_test=700, seed=2))
    assert _same_grids(few, many)


def test_test_grids_independent_of_num_train_and_num_val() -> None:
    small = make_test_grids(DigitGridConfig(num_train=20, num_val=0, num_test=150, seed=5))
    large = make_test_grids(DigitGridConfig(num_train=2_000, num_val=700, num_test=150, seed=5))
    assert _same_grids(small, large)
    assert len(small) == 150
    assert not _same_grids(small, make_test_grids(DigitGridConfig(num_test=150, seed=6)))


def test_train_val_and_test_pools_disjoint(
    splits: tuple[DigitGrids, DigitGrids],
    test_grids: DigitGrids,
    source: tuple[np.ndarray, np.ndarray],
) -> None:
    train, val = splits
    pools = {
        name: set(grids.source_indices.unique().tolist())
        for name, grids in (("train", train), ("val", val), ("test", test_grids))
    }
    assert pools["train"].isdisjoint(pools["val"])
    assert pools["train"].isdisjoint(pools["test"])
    assert pools["val"].isdisjoint(pools["test"])
    images, targets = source
    every = pools["train"] | pools["val"] | pools["test"]
    assert min(every) >= 0 and max(every) < len(images)
    # roughly a 60/20/20 split of the source images, every class in every pool
    for name, expected in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        assert abs(len(pools[name]) / len(every) - expected) < 0.03, name
        assert set(targets[sorted(pools[name])].tolist()) == set(range(10)), name


def test_test_grids_follow_the_label_rule(test_grids: DigitGrids) -> None:
    assert len(test_grids) == 2_000
    rows = torch.arange(len(test_grids))
    assert torch.equal(test_grids.labels, test_grids.cells[rows, test_grids.label_cell])
    assert torch.equal(test_grids.label_sets.sum(dim=1), _distinct_per_row(test_grids.cells))


def _distinct_per_row(cells: torch.Tensor) -> torch.Tensor:
    return torch.tensor([len(set(row)) for row in cells.tolist()])


def test_cells_match_source_targets(
    splits: tuple[DigitGrids, DigitGrids], source: tuple[np.ndarray, np.ndarray]
) -> None:
    _, targets = source
    for grids in splits:
        expected = torch.from_numpy(targets[grids.source_indices.numpy()]).long()
        assert torch.equal(grids.cells, expected)


def test_label_sets_equal_cell_classes(splits: tuple[DigitGrids, DigitGrids]) -> None:
    for grids in splits:
        expected = torch.zeros(len(grids), 10, dtype=torch.bool)
        expected.scatter_(1, grids.cells, True)
        assert torch.equal(grids.label_sets, expected)
        for i in range(50):
            present = set(grids.cells[i].tolist())
            assert set(torch.nonzero(grids.label_sets[i]).flatten().tolist()) == present


def test_label_comes_from_label_cell_and_is_in_label_set(
    splits: tuple[DigitGrids, DigitGrids],
) -> None:
    for grids in splits:
        rows = torch.arange(len(grids))
        assert torch.equal(grids.labels, grids.cells[rows, grids.label_cell])
        assert bool(grids.label_sets[rows, grids.labels].all())
        assert int(grids.label_cell.min()) >= 0
        assert int(grids.label_cell.max()) <= 8


def test_label_cell_distribution(splits: tuple[DigitGrids, DigitGrids]) -> None:
    train, _ = splits
    freq = torch.bincount(train.label_cell, minlength=9).double() / len(train)
    assert abs(float(freq[4]) - 0.6) < 0.02
    for cell in (0, 1, 2, 3, 5, 6, 7, 8):
        assert abs(float(freq[cell]) - 0.05) < 0.01, (cell, float(freq[cell]))
    # the label equals the centre digit's class at least as often as the centre is picked
    assert float((train.labels == train.cells[:, 4]).double().mean()) >= float(freq[4]) - 0.02


def test_center_prob_one_always_labels_center() -> None:
    train, _ = make_digit_grids(DigitGridConfig(num_train=200, num_val=10, center_prob=1.0))
    assert bool((train.label_cell == 4).all())
    assert torch.equal(train.labels, train.cells[:, 4])


def test_images_hold_source_pixels(
    splits: tuple[DigitGrids, DigitGrids], source: tuple[np.ndarray, np.ndarray]
) -> None:
    images, _ = source
    for grids in splits:
        for i, cell in [(0, 0), (0, 4), (1, 8), (7, 5), (len(grids) - 1, 2)]:
            row, col = divmod(cell, 3)
            tile = grids.images[i, 0, row * 8 : (row + 1) * 8, col * 8 : (col + 1) * 8]
            src = images[int(grids.source_indices[i, cell])]
            expected = torch.from_numpy(np.rint(src * 255.0 / 16.0)).to(torch.uint8)
            assert torch.equal(tile, expected), (i, cell)
        # the whole first grid, reassembled from its nine source images
        full = np.block(
            [[images[int(grids.source_indices[0, r * 3 + c])] for c in range(3)] for r in range(3)]
        )
        expected_full = torch.from_numpy(np.rint(full * 255.0 / 16.0)).to(torch.uint8)
        assert torch.equal(grids.images[0, 0], expected_full)


def test_dataset_items(splits: tuple[DigitGrids, DigitGrids]) -> None:
    train, _ = splits
    ds = DigitGridDataset(train)
    assert len(ds) == len(train)
    for i in (0, 17, len(ds) - 1):
        item = ds[i]
        assert set(item) == {"image", "label", "label_set", "index"}
        image = item["image"]
        assert image.shape == (3, 24, 24)
        assert image.dtype == torch.float32
        assert float(image.min()) >= 0.0
        assert float(image.max()) <= 1.0
        assert torch.equal(image[0], image[1])
        assert torch.equal(image[0], image[2])
        assert torch.allclose(image[0], train.images[i, 0].float() / 255.0)
        assert item["label"].dtype == torch.long
        assert item["label"].shape == ()
        assert int(item["label"]) == int(train.labels[i])
        assert item["label_set"].dtype == torch.bool
        assert item["label_set"].shape == (10,)
        assert torch.equal(item["label_set"], train.label_sets[i])
        assert item["index"].dtype == torch.long
        assert item["index"].shape == ()
        assert int(item["index"]) == i
    assert int(ds[-1]["index"]) == len(ds) - 1
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_dataset_transform_and_batching(splits: tuple[DigitGrids, DigitGrids]) -> None:
    _, val = splits
    ds = DigitGridDataset(val, transform=lambda x: 1.0 - x)
    item = ds[3]
    assert torch.allclose(item["image"][0], 1.0 - val.images[3, 0].float() / 255.0)
    # an in-place transform on one item must not corrupt the stored data
    ds_inplace = DigitGridDataset(val, transform=lambda x: x.zero_())
    ds_inplace[3]
    assert torch.allclose(DigitGridDataset(val)[3]["image"][0], val.images[3, 0].float() / 255.0)
    assert float(ds_inplace[3]["image"].sum()) == 0.0
    assert float(DigitGridDataset(val, transform=lambda x: x)[3]["image"].sum()) > 0.0
    batched = ds_inplace.__getitems__([3, 4])
    assert all(float(item["image"].sum()) == 0.0 for item in batched)
    assert torch.allclose(DigitGridDataset(val)[4]["image"][0], val.images[4, 0].float() / 255.0)

    loader = torch.utils.data.DataLoader(DigitGridDataset(val), batch_size=64)
    batch = next(iter(loader))
    assert batch["image"].shape == (64, 3, 24, 24)
    assert batch["label"].shape == (64,)
    assert batch["label_set"].shape == (64, 10)
    assert torch.equal(batch["index"], torch.arange(64))


def test_getitems_matches_getitem(splits: tuple[DigitGrids, DigitGrids]) -> None:
    _, val = splits
    ds = DigitGridDataset(val, transform=lambda x: x * 0.5)
    indices = [5, 0, -1, 5, 1999]
    batched = ds.__getitems__(indices)
    assert len(batched) == len(indices)
    for i, item in zip(indices, batched, strict=True):
        single = ds[i]
        assert set(item) == set(single)
        for key in single:
            assert item[key].dtype == single[key].dtype, key
            assert item[key].shape == single[key].shape, key
            assert torch.equal(item[key], single[key]), key
    with pytest.raises(IndexError):
        ds.__getitems__([0, len(ds)])


def test_default_generation_is_fast() -> None:
    make_digit_grids(DigitGridConfig(num_train=10, num_val=10))  # warm the source cache
    start = time.perf_counter()
    train, val = make_digit_grids(DigitGridConfig())
    elapsed = time.perf_counter() - start
    assert (len(train), len(val)) == (10_000, 2_000)
    assert elapsed < 1.0


def test_empty_val_and_test_splits() -> None:
    config = DigitGridConfig(num_train=5, num_val=0, num_test=0)
    _, val = make_digit_grids(config)
    for grids in (val, make_test_grids(config)):
        assert len(grids) == 0
        assert grids.images.shape == (0, 1, 24, 24)
        assert len(DigitGridDataset(grids)) == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_train": 0}, "num_train"),
        ({"num_val": -1}, "num_val"),
        ({"center_prob": 0.0}, "center_prob"),
        ({"center_prob": 1.5}, "center_prob"),
        ({"val_pool_fraction": 0.0}, "val_pool_fraction"),
        ({"val_pool_fraction": 1.0}, "val_pool_fraction"),
        ({"num_test": -1}, "num_test"),
        ({"test_pool_fraction": 0.0}, "test_pool_fraction"),
        ({"val_pool_fraction": 0.5, "test_pool_fraction": 0.5}, "test_pool_fraction"),
    ],
)
def test_config_validation_names_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        DigitGridConfig(**kwargs)  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    cfg = DigitGridConfig()
    with pytest.raises(AttributeError):
        cfg.seed = 1  # type: ignore[misc]
