"""Multi-label digit grids: the small, offline stand-in for the paper's multi-label MNIST.

Each sample is a 3x3 grid of 8x8 digit images from scikit-learn's bundled digits set
(so 24x24 pixels, no download needed). Like ImageNet, every grid is annotated with a
*single* label although it shows several objects: the centre digit with probability
``center_prob`` (0.6 in the paper, App. A.1) and otherwise one of the eight other cells
uniformly. Evaluation instead uses the full multi-hot set of digit classes present in
the grid, which is what MILe is meant to recover from single-label supervision.

Training, validation and test grids draw their cells from three disjoint pools of source
digit images; the test grids come only from :func:`make_test_grids`, so settings are
chosen on validation and reported on images no choice has seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mile_ssl.data.views import image_fields
from mile_ssl.extras import extra_imports

CLASS_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))
NUM_CLASSES = len(CLASS_NAMES)
GRID_SIDE = 3
NUM_CELLS = GRID_SIDE * GRID_SIDE
CENTER_CELL = NUM_CELLS // 2
DIGIT_SIZE = 8
IMAGE_SIZE = GRID_SIDE * DIGIT_SIZE
_DIGIT_MAX = 16


@dataclass(frozen=True)
class DigitGridConfig:
    """How many grids to build and how their single training label is drawn.

    Attributes:
        num_train: Number of training grids.
        num_val: Number of validation grids (0 gives an empty validation split).
        num_test: Number of held-out test grids, built by :func:`make_test_grids` only
            (0 gives an empty test split).
        center_prob: Probability that the training label is the centre cell's digit; the
            remaining mass is spread evenly over the eight other cells, so the paper's
            0.6 gives 0.05 per outer cell.
        val_pool_fraction: Fraction of the source digit images (stratified by class)
            reserved for validation grids, so validation never shows a digit image that
            training has seen.
        test_pool_fraction: Fraction of the source digit images reserved for test
            grids, disjoint from the training and validation pools, so that settings
            chosen on validation can be reported on images no choice has seen.
        seed: Seed from which the pool split and every split's grids are derived.
    """

    num_train: int = 10_000
    num_val: int = 2_000
    num_test: int = 2_000
    center_prob: float = 0.6
    val_pool_fraction: float = 0.2
    test_pool_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_train < 1:
            raise ValueError(f"num_train must be >= 1, got {self.num_train}")
        if self.num_val < 0:
            raise ValueError(f"num_val must be >= 0, got {self.num_val}")
        if self.num_test < 0:
            raise ValueError(f"num_test must be >= 0, got {self.num_test}")
        if not 0.0 < self.center_prob <= 1.0:
            raise ValueError(f"center_prob must be in (0, 1], got {self.center_prob}")
        if not 0.0 < self.val_pool_fraction < 1.0:
            raise ValueError(f"val_pool_fraction must be in (0, 1), got {self.val_pool_fraction}")
        if not 0.0 < self.test_pool_fraction < 1.0 - self.val_pool_fraction:
            raise ValueError(
                "test_pool_fraction must be in (0, 1 - val_pool_fraction), got "
                f"{self.test_pool_fraction} with val_pool_fraction {self.val_pool_fraction}"
            )

    def cell_probs(self) -> np.ndarray:
        """Probability of each cell (row-major, centre at index 4) providing the label."""
        probs = np.full(NUM_CELLS, (1.0 - self.center_prob) / (NUM_CELLS - 1))
        probs[CENTER_CELL] = self.center_prob
        return probs


@dataclass
class DigitGrids:
    """One split of digit grids, stored as whole tensors for cheap batched access.

    Attributes:
        images: ``uint8`` tensor ``(N, 1, 24, 24)`` with values in 0..255.
        labels: ``long`` tensor ``(N,)``, the single (ambiguous) training label.
        label_sets: ``bool`` tensor ``(N, 10)``, every digit class present in the grid;
            the multi-label ground truth used for evaluation.
        cells: ``long`` tensor ``(N, 9)``, the digit class in each cell (row-major, the
            centre is index 4).
        source_indices: ``long`` tensor ``(N, 9)``, index of each cell's image into
            ``sklearn.datasets.load_digits().images``; lets callers verify that splits
            share no source image and trace any pixel back to its digit.
        label_cell: ``long`` tensor ``(N,)``, which cell the training label was taken
            from (``labels == cells[arange(N), label_cell]``).
    """

    images: Tensor
    labels: Tensor
    label_sets: Tensor
    cells: Tensor
    source_indices: Tensor
    label_cell: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@lru_cache(maxsize=1)
def _load_source_digits() -> tuple[np.ndarray, np.ndarray]:
    """Return the bundled 8x8 digits as ``uint8`` 0..255 images and their classes.

    Cached because ``load_digits`` parses a CSV on every call.
    """
    with extra_imports("demo", "data=digits"):
        from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = np.asarray(bunch.images, dtype=np.float64)
    images = np.rint(raw * (255.0 / _DIGIT_MAX)).clip(0, 255).astype(np.uint8)
    targets = np.asarray(bunch.target, dtype=np.int64)
    images.setflags(write=False)
    targets.setflags(write=False)
    return images, targets


@dataclass(frozen=True)
class _Pools:
    """Disjoint index sets into the source digits, one per split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _split_pools(targets: np.ndarray, config: DigitGridConfig, rng: np.random.Generator) -> _Pools:
    """Split image indices into disjoint train/val/test pools, stratified by class.

    Every class keeps at least one image in each pool so every split can show every
    digit.
    """
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for cls in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(targets == cls))
        n_val = max(int(round(config.val_pool_fraction * len(idx))), 1)
        n_test = max(int(round(config.test_pool_fraction * len(idx))), 1)
        if n_val + n_test >= len(idx):
            raise ValueError(
                f"val_pool_fraction {config.val_pool_fraction} + test_pool_fraction "
                f"{config.test_pool_fraction} leave no training image of digit {cls}"
            )
        parts["val"].append(idx[:n_val])
        parts["test"].append(idx[n_val : n_val + n_test])
        parts["train"].append(idx[n_val + n_test :])
    return _Pools(**{name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()})


def _seed_streams(config: DigitGridConfig) -> dict[str, np.random.SeedSequence]:
    """Independent seed streams for the pool split and each split's grids.

    Each split draws from its own child of one ``SeedSequence``, so a split's grids
    depend on its own size only: resizing one split never changes another.
    """
    children = np.random.SeedSequence(config.seed).spawn(4)
    return dict(zip(("pools", "train", "val", "test"), children, strict=True))


def _pools(config: DigitGridConfig, stream: np.random.SeedSequence) -> _Pools:
    _, targets = _load_source_digits()
    return _split_pools(targets, config, np.random.default_rng(stream))


def _build_grids(
    num: int,
    pool: np.ndarray,
    cell_probs: np.ndarray,
    rng: np.random.Generator,
) -> DigitGrids:
    """Sample ``num`` grids whose cells are drawn uniformly (with replacement) from ``pool``."""
    images, targets = _load_source_digits()
    source = pool[rng.integers(0, len(pool), size=(num, NUM_CELLS))]
    cells = targets[source]
    label_cell = rng.choice(NUM_CELLS, size=num, p=cell_probs)
    labels = cells[np.arange(num), label_cell]

    label_sets = np.zeros((num, NUM_CLASSES), dtype=bool)
    label_sets[np.repeat(np.arange(num), NUM_CELLS), cells.reshape(-1)] = True

    tiles = images[source].reshape(num, GRID_SIDE, GRID_SIDE, DIGIT_SIZE, DIGIT_SIZE)
    grid = tiles.transpose(0, 1, 3, 2, 4).reshape(num, 1, IMAGE_SIZE, IMAGE_SIZE)

    return DigitGrids(
        images=torch.from_numpy(np.ascontiguousarray(grid)),
        labels=torch.from_numpy(labels.astype(np.int64)),
        label_sets=torch.from_numpy(label_sets),
        cells=torch.from_numpy(cells.astype(np.int64)),
        source_indices=torch.from_numpy(source.astype(np.int64)),
        label_cell=torch.from_numpy(label_cell.astype(np.int64)),
    )


def make_digit_grids(config: DigitGridConfig | None = None) -> tuple[DigitGrids, DigitGrids]:
    """Build the train and validation digit grids (never the test grids).

    The pool split and each split's grids use independent child streams of one
    ``SeedSequence``, so the result depends only on ``config`` (no global RNG state) and
    changing ``num_val`` or ``num_test`` does not change the training grids.

    Args:
        config: Sizes, label noise and seed; defaults to :class:`DigitGridConfig()`.

    Returns:
        ``(train, val)``, whose grids draw from disjoint pools of source digit images.
    """
    config = config or DigitGridConfig()
    streams = _seed_streams(config)
    pools = _pools(config, streams["pools"])
    probs = config.cell_probs()
    train = _build_grids(
        config.num_train, pools.train, probs, np.random.default_rng(streams["train"])
    )
    val = _build_grids(config.num_val, pools.val, probs, np.random.default_rng(streams["val"]))
    return train, val


def make_test_grids(config: DigitGridConfig | None = None) -> DigitGrids:
    """Build the held-out test grids of ``config``: ``config.num_test`` of them.

    Kept apart from :func:`make_digit_grids` so that training and setting selection
    cannot read them by accident. Their source images come from a third pool, disjoint
    from the training and validation pools, and their grids from their own seed
    stream, so neither ``num_train`` nor ``num_val`` changes them.

    Args:
        config: Sizes, label noise and seed; defaults to :class:`DigitGridConfig()`.
    """
    config = config or DigitGridConfig()
    streams = _seed_streams(config)
    pools = _pools(config, streams["pools"])
    return _build_grids(
        config.num_test, pools.test, config.cell_probs(), np.random.default_rng(streams["test"])
    )


class DigitGridDataset(Dataset[dict[str, Tensor]]):
    """Map-style dataset over a :class:`DigitGrids` split.

    Images come out as ``float32`` ``(3, 24, 24)`` in [0, 1]: the grey channel is
    repeated so standard RGB backbones apply unchanged. The float RGB tensor for the
    whole split is built once, on first access, so an item costs an index and a small
    copy (the copy keeps in-place transforms from corrupting the cache). ``__getitems__``
    serves whole batches with one gather, which ``DataLoader`` uses automatically.

    Args:
        grids: The split to serve.
        transform: Optional callable applied to each float ``(3, 24, 24)`` image; it
            may return both views of :class:`~mile_ssl.data.views.WeakStrongViews`.
    """

    def __init__(self, grids: DigitGrids, transform: Callable[[Tensor], Any] | None = None) -> None:
        self.grids = grids
        self.transform = transform
        self._indices = torch.arange(len(grids), dtype=torch.long)
        self._rgb: Tensor | None = None

    def __len__(self) -> int:
        return len(self.grids)

    def _images(self) -> Tensor:
        """Float RGB images of the whole split, ``(N, 3, 24, 24)`` in [0, 1], built once."""
        if self._rgb is None:
            grey = self.grids.images.to(torch.float32).div_(255.0)
            self._rgb = grey.expand(-1, 3, -1, -1).contiguous()
        return self._rgb

    def _check_index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index out of range for {len(self)} grids")
        return index

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        """Return ``{"image", "label", "label_set", "index"}`` for grid ``index``.

        A :class:`~mile_ssl.data.views.WeakStrongViews` transform adds ``image_strong``.
        """
        index = self._check_index(index)
        return {
            **image_fields(self.transform, self._images()[index].clone()),
            "label": self.grids.labels[index],
            "label_set": self.grids.label_sets[index],
            "index": self._indices[index],
        }

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Tensor]]:
        """Batched form of :meth:`__getitem__`: one gather per field instead of per item."""
        idx = torch.as_tensor([self._check_index(i) for i in indices], dtype=torch.long)
        images = self._images().index_select(0, idx).unbind(0)
        labels = self.grids.labels.index_select(0, idx).unbind(0)
        label_sets = self.grids.label_sets.index_select(0, idx).unbind(0)
        return [
            {
                **image_fields(self.transform, image),
                "label": label,
                "label_set": label_set,
                "index": i,
            }
            for image, label, label_set, i in zip(
                images, labels, label_sets, idx.unbind(0), strict=True
            )
        ]
