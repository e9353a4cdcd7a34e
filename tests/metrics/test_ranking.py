"""mAP and secondary-label mAP against scikit-learn and hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from mile_ssl.metrics import ranking as ranking_metrics
from mile_ssl.metrics.ranking import mean_average_precision, secondary_label_map
from tests.metrics.metric_data import ensure_nonempty, make_data


def sklearn_map(scores: np.ndarray, y_true: np.ndarray) -> float:
    cols = y_true.sum(axis=0) > 0
    return float(average_precision_score(y_true[:, cols], scores[:, cols], average="macro"))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_map_matches_sklearn_continuous_scores(seed: int) -> None:
    scores, targets, label_sets = make_data(seed, n=300, c=15)
    label_sets[:, 14] = False  # a class without positives is skipped
    label_sets = ensure_nonempty(label_sets, targets % 14)
    assert label_sets.any(dim=1).all()
    expected = sklearn_map(scores.numpy(), label_sets.numpy().astype(int))
    assert mean_average_precision(scores, label_sets) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_map_matches_sklearn_with_ties(seed: int) -> None:
    scores, targets, label_sets = make_data(seed, n=300, c=10)
    label_sets = ensure_nonempty(label_sets, targets)
    tied = torch.round(scores * 2.0) / 2.0  # few distinct values, many ties per class
    assert tied.unique().numel() < 40
    expected = sklearn_map(tied.numpy(), label_sets.numpy().astype(int))
    assert mean_average_precision(tied, label_sets) == pytest.approx(expected, abs=1e-12)
    constant = torch.zeros_like(scores)
    expected_constant = sklearn_map(constant.numpy(), label_sets.numpy().astype(int))
    assert mean_average_precision(constant, label_sets) == pytest.approx(expected_constant)


def test_map_chunking_does_not_change_result(monkeypatch: pytest.MonkeyPatch) -> None:
    scores, targets, label_sets = make_data(4, n=120, c=11)
    label_sets = ensure_nonempty(label_sets, targets)
    scores = torch.round(scores * 3.0) / 3.0
    full = mean_average_precision(scores, label_sets)
    secondary = secondary_label_map(scores, targets, label_sets)
    monkeypatch.setattr(ranking_metrics, "_AP_CHUNK_ELEMENTS", 120 * 3)  # chunks of 3 classes
    assert mean_average_precision(scores, label_sets) == pytest.approx(full, abs=1e-12)
    assert secondary_label_map(scores, targets, label_sets) == pytest.approx(secondary, abs=1e-12)


def sklearn_secondary_map(scores: np.ndarray, targets: np.ndarray, y_true: np.ndarray) -> float:
    keep = y_true.any(axis=1)
    scores, targets, y_true = scores[keep], targets[keep], y_true[keep]
    aps = []
    for j in range(y_true.shape[1]):
        rows = targets != j
        if y_true[rows, j].sum() == 0:
            continue
        aps.append(average_precision_score(y_true[rows, j], scores[rows, j]))
    return float(np.mean(aps))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_secondary_map_matches_sklearn(seed: int, ties: bool) -> None:
    scores, targets, label_sets = make_data(seed, n=250, c=9, empty_fraction=0.1)
    if ties:
        scores = torch.round(scores)
    expected = sklearn_secondary_map(
        scores.numpy(), targets.numpy(), label_sets.numpy().astype(int)
    )
    result = secondary_label_map(scores, targets, label_sets)
    assert result == pytest.approx(expected, abs=1e-12)


def test_secondary_map_hand_example() -> None:
    # Class 1: sample 1 has original label 1 and is removed; positives among {0, 2, 3} are
    # samples 0 and 3 (label set contains 1, original label is not 1). Ranking by score:
    # sample 3 (0.9, pos), sample 2 (0.5, neg), sample 0 (0.2, pos) -> AP = (1 + 2/3) / 2.
    # Class 0: samples 0 and 3 are removed (original label 0); sample 2's set has 0 -> one
    # positive among {1, 2}; scores 0.8 (sample 1, neg) > 0.1 (sample 2, pos) -> AP = 1/2.
    # Class 2: only sample 2 has label 2 and it is its original label -> no positive, skipped.
    scores = torch.tensor([[0.7, 0.2, 0.0], [0.8, 0.95, 0.0], [0.1, 0.5, 0.3], [0.6, 0.9, 0.0]])
    targets = torch.tensor([0, 1, 2, 0])
    label_sets = [[0, 1], [1], [2, 0], [0, 1]]
    expected = ((1 + 2 / 3) / 2 + 1 / 2) / 2
    assert secondary_label_map(scores, targets, label_sets) == pytest.approx(expected)


def test_secondary_map_without_secondary_labels_is_nan() -> None:
    scores, targets, _ = make_data(0, n=30, c=4)
    only_target = torch.nn.functional.one_hot(targets, 4).bool()
    assert math.isnan(secondary_label_map(scores, targets, only_target))


def test_map_hand_example_with_tie() -> None:
    # Class 0 scores 0.9 (pos), 0.5 (pos), 0.5 (neg), 0.1 (neg): thresholds {0.9, 0.5, 0.1},
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6. Class 1 (the other two samples' label): 0.1 (neg),
    # 0.2 (neg), 0.3 (pos), 0.4 (pos) -> ranked pos, pos -> AP = 1. mAP = (5/6 + 1) / 2.
    scores = torch.tensor([[0.9, 0.1], [0.5, 0.2], [0.5, 0.3], [0.1, 0.4]])
    label_sets = [[0], [0], [1], [1]]
    assert mean_average_precision(scores, label_sets) == pytest.approx((5 / 6 + 1) / 2)
