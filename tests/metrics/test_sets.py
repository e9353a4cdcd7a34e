"""Predicted sets, ReaL accuracy and example-based F1, precision, recall and coverage."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import f1_score, precision_score, recall_score

from mile_ssl.metrics.sets import (
    label_coverage,
    predicted_sets,
    real_accuracy,
    sample_f1,
    sample_precision,
    sample_recall,
)
from tests.metrics.metric_data import ensure_nonempty, make_data


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.25, 0.5, 0.8])
def test_sample_f1_precision_recall_match_sklearn(seed: int, threshold: float) -> None:
    scores, targets, label_sets = make_data(seed)
    label_sets = ensure_nonempty(label_sets, targets)
    pred = predicted_sets(scores, threshold, multi_label=True)
    y_true, y_pred = label_sets.numpy().astype(int), pred.numpy().astype(int)
    assert sample_f1(pred, label_sets) == pytest.approx(f1_score(y_true, y_pred, average="samples"))
    assert sample_precision(pred, label_sets) == pytest.approx(
        precision_score(y_true, y_pred, average="samples")
    )
    assert sample_recall(pred, label_sets) == pytest.approx(
        recall_score(y_true, y_pred, average="samples")
    )


def test_precision_of_empty_prediction_is_zero_like_sklearn() -> None:
    gen = torch.Generator().manual_seed(3)
    truth = torch.rand(60, 7, generator=gen) < 0.3
    truth[:, 0] = True
    pred = torch.rand(60, 7, generator=gen) < 0.2
    pred[:10] = False
    y_true, y_pred = truth.numpy().astype(int), pred.numpy().astype(int)
    expected = precision_score(y_true, y_pred, average="samples", zero_division=0)
    assert sample_precision(pred, truth) == pytest.approx(expected)
    assert sample_f1(pred, truth) == pytest.approx(
        f1_score(y_true, y_pred, average="samples", zero_division=0)
    )


def test_real_accuracy_hand_example() -> None:
    scores = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 1.0, 5.0]])
    # top-1 predictions: 0, 1, 2
    label_sets = [[0, 2], [2], [1, 2]]
    assert real_accuracy(scores, label_sets) == pytest.approx(2 / 3)
    # The third sample has no labels and is dropped: 1 correct out of 2.
    assert real_accuracy(scores, [[0], [2], []]) == pytest.approx(1 / 2)


def test_label_coverage_and_f1_hand_example() -> None:
    # sigmoid(2) = 0.88, sigmoid(0) = 0.5, sigmoid(-1) = 0.27, sigmoid(-3) = 0.05
    scores = torch.tensor([[2.0, -3.0, -3.0], [2.0, 0.0, -1.0], [2.0, 2.0, 2.0]])
    label_sets = [[0], [0, 1], [1]]
    sets_05 = predicted_sets(scores, 0.5, multi_label=True)
    assert sets_05.tolist() == [[True, False, False], [True, False, False], [True, True, True]]
    assert label_coverage(sets_05, label_sets) == pytest.approx((1 + 1 + 3) / 3)
    # F1 per sample: 1, 2*1/(1+2) = 2/3, 2*1/(3+1) = 1/2
    assert sample_f1(sets_05, label_sets) == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    sets_025 = predicted_sets(scores, 0.25, multi_label=True)
    assert sets_025.sum(dim=1).tolist() == [1, 3, 3]
    assert label_coverage(sets_025, label_sets) == pytest.approx(7 / 3)
    # Coverage ignores a sample with no labels.
    assert label_coverage(sets_025, [[0], [0, 1], []]) == pytest.approx(2.0)


def test_argmax_always_in_predicted_set() -> None:
    scores = torch.full((4, 6), -10.0)
    scores[torch.arange(4), torch.tensor([0, 5, 2, 2])] = -5.0
    sets = predicted_sets(scores, 0.5, multi_label=True)
    assert sets.sum(dim=1).tolist() == [1, 1, 1, 1]
    assert sets.nonzero()[:, 1].tolist() == [0, 5, 2, 2]
