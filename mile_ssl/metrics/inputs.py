"""Checking metric inputs and converting label sets, shared by every metric.

The metrics take logits ``scores`` ``(N, C)``, single ``targets`` ``(N,)`` and
multi-label ``label_sets`` (a multi-hot ``(N, C)`` tensor or ``N`` sequences of class
indices, the way ImageNet-ReaL ships them). Each input is checked once here, so that a
wrong shape, dtype or index fails with a message naming the argument instead of a
silently wrong number.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import TypeAlias

import numpy as np
import torch

LabelSets: TypeAlias = torch.Tensor | np.ndarray | Sequence[Sequence[int]]
"""Multi-hot ``(N, C)`` tensor/array or ``N`` sequences of class indices."""


def check_scores(scores: torch.Tensor) -> torch.Tensor:
    """``scores`` detached, after checking it is a non-empty ``(N, C)`` float tensor without NaN.

    Raises:
        TypeError: If ``scores`` is not a tensor.
        ValueError: Naming ``scores`` and what is wrong with it.
    """
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (N, C), got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be a floating point tensor of logits, got {scores.dtype}")
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"scores is empty (shape {tuple(scores.shape)})")
    scores = scores.detach()
    if torch.isnan(scores).any():
        raise ValueError("scores contains NaN")
    return scores


def check_targets(targets: torch.Tensor, num_samples: int, num_classes: int) -> torch.Tensor:
    """``targets`` as detached longs, after checking one label in ``[0, C)`` per sample.

    Raises:
        TypeError: If ``targets`` is not a tensor.
        ValueError: Naming ``targets`` and what is wrong with it.
    """
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dtype == torch.bool or targets.is_floating_point() or targets.is_complex():
        raise ValueError(f"targets must be an integer (long) tensor, got {targets.dtype}")
    if targets.ndim != 1:
        raise ValueError(f"targets must have shape (N,), got shape {tuple(targets.shape)}")
    if targets.shape[0] != num_samples:
        raise ValueError(
            f"targets has {targets.shape[0]} entries but scores has {num_samples} samples"
        )
    targets = targets.detach().long()
    if targets.numel() and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError(
            f"targets must lie in [0, {num_classes}), got values in "
            f"[{int(targets.min())}, {int(targets.max())}]"
        )
    return targets


def check_binary_matrix(
    matrix: torch.Tensor, name: str, num_classes: int | None = None
) -> torch.Tensor:
    """``matrix`` as a detached bool ``(N, C)`` tensor, after checking it holds only 0 and 1.

    Raises:
        ValueError: Naming the argument ``name`` if its shape or values are wrong.
    """
    if matrix.ndim != 2:
        raise ValueError(f"{name} must have shape (N, C), got shape {tuple(matrix.shape)}")
    if num_classes is not None and matrix.shape[1] != num_classes:
        raise ValueError(f"{name} has {matrix.shape[1]} classes, expected {num_classes}")
    if matrix.dtype == torch.bool:
        return matrix.detach()
    if matrix.is_complex() or not ((matrix == 0) | (matrix == 1)).all():
        raise ValueError(f"{name} must be multi-hot: bool or containing only 0 and 1")
    return matrix.detach() != 0


def label_sets_to_multi_hot(label_sets: LabelSets, num_classes: int) -> torch.Tensor:
    """Convert label sets to a boolean multi-hot matrix.

    A tensor or 2-D array is taken to be multi-hot already (bool or 0/1). Any other sequence
    is read as one sequence of class indices per sample, which is how ImageNet-ReaL ships its
    labels (``real.json``); duplicates are harmless and an empty sequence is an empty set.

    Args:
        label_sets: Multi-hot ``(N, C)`` tensor/array, or ``N`` sequences of class indices.
        num_classes: Number of classes ``C``; indices must lie in ``[0, C)``.

    Returns:
        Bool tensor of shape ``(N, C)`` whose row ``i`` marks the labels of sample ``i``.

    Raises:
        ValueError: If ``num_classes`` is not positive, a multi-hot input has the wrong number
            of columns or non-binary values, or an index is not an integer in ``[0, C)``.
    """
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if isinstance(label_sets, np.ndarray) and label_sets.dtype != object and label_sets.ndim == 2:
        label_sets = torch.from_numpy(label_sets)
    if isinstance(label_sets, torch.Tensor):
        return check_binary_matrix(label_sets, "label_sets", num_classes)
    if isinstance(label_sets, str) or not isinstance(label_sets, Sequence | np.ndarray):
        raise TypeError(
            "label_sets must be a multi-hot tensor or a sequence of index sequences, "
            f"got {type(label_sets).__name__}"
        )
    rows: list[list[int]] = []
    for entry in label_sets:
        if isinstance(entry, torch.Tensor | np.ndarray):
            rows.append(entry.reshape(-1).tolist())
        elif isinstance(entry, str) or not isinstance(entry, Sequence):
            raise ValueError(
                "label_sets must contain one sequence of class indices per sample, "
                f"got an element of type {type(entry).__name__}"
            )
        else:
            rows.append(list(entry))
    lengths = torch.tensor([len(row) for row in rows], dtype=torch.long)
    flat = list(chain.from_iterable(rows))
    multi_hot = torch.zeros(len(rows), num_classes, dtype=torch.bool)
    if not flat:
        return multi_hot
    indices = torch.as_tensor(flat)
    if indices.dtype == torch.bool or indices.is_floating_point() or indices.is_complex():
        raise ValueError(f"label_sets indices must be integers, got {indices.dtype}")
    if indices.min() < 0 or indices.max() >= num_classes:
        raise ValueError(
            f"label_sets indices must lie in [0, {num_classes}), got values in "
            f"[{int(indices.min())}, {int(indices.max())}]"
        )
    sample = torch.repeat_interleave(torch.arange(len(rows)), lengths)
    multi_hot[sample, indices.long()] = True
    return multi_hot


def resolve_label_sets(
    label_sets: LabelSets, num_samples: int, num_classes: int, reference: str = "scores"
) -> torch.Tensor:
    """Multi-hot label sets checked against the ``(N, C)`` shape of ``reference``."""
    if (
        isinstance(label_sets, torch.Tensor | np.ndarray)
        and label_sets.ndim == 2
        and label_sets.shape[1] != num_classes
    ):
        raise ValueError(
            f"label_sets has {label_sets.shape[1]} classes but {reference} has {num_classes}"
        )
    multi_hot = label_sets_to_multi_hot(label_sets, num_classes)
    if multi_hot.shape[0] != num_samples:
        raise ValueError(
            f"label_sets has {multi_hot.shape[0]} samples but {reference} has {num_samples}"
        )
    return multi_hot


def labelled_rows(multi_hot: torch.Tensor) -> torch.Tensor:
    """Mask of samples with a non-empty label set; raises if there are none."""
    keep = multi_hot.any(dim=1)
    if not keep.any():
        raise ValueError("label_sets: every label set is empty, the metric is undefined")
    return keep
