"""Label sets as lists or multi-hot, empty label sets left out, and errors naming the argument."""

from __future__ import annotations

import pytest
import torch

from mile_ssl.metrics import classification_report
from mile_ssl.metrics.accuracy import top1_accuracy, topk_accuracy
from mile_ssl.metrics.inputs import label_sets_to_multi_hot
from mile_ssl.metrics.ranking import mean_average_precision, secondary_label_map
from mile_ssl.metrics.sets import (
    label_coverage,
    predicted_sets,
    real_accuracy,
    sample_f1,
    sample_precision,
    sample_recall,
)
from tests.metrics.metric_data import make_data


def test_list_input_equals_multi_hot_input() -> None:
    scores, targets, label_sets = make_data(5, n=80, c=8, empty_fraction=0.1)
    as_lists = [row.nonzero().flatten().tolist() for row in label_sets]
    as_tuples = [tuple(reversed(row)) + tuple(row[:1]) for row in as_lists]  # order, dupes
    assert torch.equal(label_sets_to_multi_hot(as_lists, 8), label_sets)
    assert torch.equal(label_sets_to_multi_hot(as_tuples, 8), label_sets)
    assert torch.equal(label_sets_to_multi_hot(label_sets.int(), 8), label_sets)
    assert torch.equal(label_sets_to_multi_hot(label_sets.numpy(), 8), label_sets)
    pred = predicted_sets(scores, 0.3, multi_label=True)
    for fn in (sample_f1, sample_precision, sample_recall, label_coverage):
        assert fn(pred, as_lists) == fn(pred, label_sets) == fn(pred, label_sets.float())
    assert real_accuracy(scores, as_lists) == real_accuracy(scores, label_sets)
    assert mean_average_precision(scores, as_lists) == mean_average_precision(scores, label_sets)
    assert secondary_label_map(scores, targets, as_lists) == secondary_label_map(
        scores, targets, label_sets
    )
    assert classification_report(scores, targets, as_lists, True) == classification_report(
        scores, targets, label_sets, True
    )


def test_empty_label_sets_are_excluded() -> None:
    scores, targets, label_sets = make_data(6, n=150, c=10, empty_fraction=0.2)
    keep = label_sets.any(dim=1)
    assert 0 < int((~keep).sum()) < 150
    pred = predicted_sets(scores, 0.25, multi_label=True)
    for fn in (sample_f1, sample_precision, sample_recall, label_coverage):
        assert fn(pred, label_sets) == pytest.approx(fn(pred[keep], label_sets[keep]))
    assert real_accuracy(scores, label_sets) == pytest.approx(
        real_accuracy(scores[keep], label_sets[keep])
    )
    assert mean_average_precision(scores, label_sets) == pytest.approx(
        mean_average_precision(scores[keep], label_sets[keep])
    )
    assert secondary_label_map(scores, targets, label_sets) == pytest.approx(
        secondary_label_map(scores[keep], targets[keep], label_sets[keep])
    )
    full = classification_report(scores, targets, label_sets, multi_label=True)
    subset = classification_report(scores[keep], targets[keep], label_sets[keep], True)
    for key in full.keys() - {"top1", "top5"}:
        assert full[key] == pytest.approx(subset[key]), key
    # Top-k accuracy is about the original labels and keeps every sample.
    assert full["top1"] == pytest.approx(top1_accuracy(scores, targets))


def test_errors_name_the_argument() -> None:
    scores, targets, label_sets = make_data(11, n=10, c=5)
    with pytest.raises(ValueError, match="targets"):
        top1_accuracy(scores, targets[:9])
    with pytest.raises(ValueError, match="targets"):
        top1_accuracy(scores, targets.float())
    with pytest.raises(ValueError, match="targets"):
        top1_accuracy(scores, targets + 5)
    with pytest.raises(ValueError, match="scores"):
        top1_accuracy(scores[0], targets)
    with pytest.raises(ValueError, match="scores"):
        top1_accuracy(scores.long(), targets)
    with pytest.raises(ValueError, match="scores"):
        top1_accuracy(torch.empty(0, 5), torch.empty(0, dtype=torch.long))
    with pytest.raises(ValueError, match="k must"):
        topk_accuracy(scores, targets, 6)
    with pytest.raises(ValueError, match="threshold"):
        predicted_sets(scores, 1.5, multi_label=True)
    with pytest.raises(ValueError, match="label_sets"):
        real_accuracy(scores, label_sets[:, :4])
    with pytest.raises(ValueError, match="label_sets"):
        real_accuracy(scores, label_sets[:9])
    with pytest.raises(ValueError, match="label_sets"):
        real_accuracy(scores, [[0]] * 9 + [[5]])
    with pytest.raises(ValueError, match="label_sets"):
        real_accuracy(scores, [[0]] * 9 + [[-1]])
    with pytest.raises(ValueError, match="label_sets"):
        real_accuracy(scores, [[0]] * 9 + [[1.5]])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="label_sets"):
        real_accuracy(scores, label_sets.int() * 2)
    with pytest.raises(ValueError, match="empty"):
        real_accuracy(scores, [[]] * 10)
    with pytest.raises(ValueError, match="empty"):
        mean_average_precision(scores, torch.zeros(10, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="empty"):
        sample_f1(torch.ones(10, 5, dtype=torch.bool), [[]] * 10)
    with pytest.raises(ValueError, match="pred_sets"):
        sample_f1(torch.ones(10, 4, dtype=torch.bool), label_sets)
    with pytest.raises(ValueError, match="pred_sets"):
        sample_f1(torch.full((10, 5), 0.5), label_sets)
    with pytest.raises(ValueError, match="num_classes"):
        label_sets_to_multi_hot([[0]], 0)
    with pytest.raises(TypeError, match="label_sets"):
        label_sets_to_multi_hot(3, 5)  # type: ignore[arg-type]
