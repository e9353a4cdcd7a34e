"""The full report: its keys, softmax models, and label sets defaulting to the targets."""

from __future__ import annotations

import math

import pytest
import torch

from mile_ssl.metrics import class_probabilities, classification_report, predicted_sets
from mile_ssl.metrics.accuracy import topk_accuracy
from mile_ssl.metrics.ranking import mean_average_precision, secondary_label_map
from mile_ssl.metrics.sets import label_coverage, sample_f1
from tests.metrics.metric_data import make_data


def test_softmax_predicts_exactly_one_label() -> None:
    scores, targets, label_sets = make_data(7)
    scores[:, :3] = 0.0  # near-uniform rows where several softmax outputs exceed 0.25
    scores[:5] = 0.0
    for threshold in (0.0, 0.1, 0.25, 0.5):
        sets = predicted_sets(scores, threshold, multi_label=False)
        assert sets.sum(dim=1).eq(1).all()
        assert torch.equal(sets.nonzero()[:, 1], scores.argmax(dim=1))
    report = classification_report(scores, targets, label_sets, multi_label=False)
    assert report["f1@0.25"] == report["f1@0.5"] == report["real_f1"]
    assert report["coverage"] == 1.0
    assert report["precision@0.25"] == pytest.approx(report["real_acc"])


def test_report_keys_and_values() -> None:
    scores, targets, label_sets = make_data(8, n=100, c=6, empty_fraction=0.05)
    report = classification_report(scores, targets, label_sets, multi_label=True, threshold=0.4)
    assert set(report) == {
        "top1",
        "top5",
        "real_acc",
        "real_f1",
        "f1@0.25",
        "f1@0.5",
        "precision@0.25",
        "recall@0.25",
        "coverage",
        "map",
        "secondary_map",
    }
    assert all(isinstance(v, float) for v in report.values())
    assert report["real_f1"] == pytest.approx(
        sample_f1(predicted_sets(scores, 0.4, True), label_sets)
    )
    assert report["coverage"] == pytest.approx(
        label_coverage(predicted_sets(scores, 0.4, True), label_sets)
    )
    assert report["top5"] == pytest.approx(topk_accuracy(scores, targets, 5))
    probs = torch.sigmoid(scores.double())
    assert report["map"] == pytest.approx(mean_average_precision(probs, label_sets))
    assert report["secondary_map"] == pytest.approx(secondary_label_map(probs, targets, label_sets))
    for key in ("top1", "top5", "real_acc", "real_f1", "f1@0.25", "map", "secondary_map"):
        assert 0.0 <= report[key] <= 1.0


def test_report_softmax_ranks_by_probability() -> None:
    scores, targets, label_sets = make_data(9, n=100, c=6)
    report = classification_report(scores, targets, label_sets, multi_label=False)
    probs = torch.softmax(scores.double(), dim=1)
    assert torch.allclose(class_probabilities(scores, multi_label=False), probs)
    assert report["map"] == pytest.approx(mean_average_precision(probs, label_sets))


def test_report_without_label_sets_uses_targets() -> None:
    scores, targets, _ = make_data(10, n=90, c=4)
    report = classification_report(scores, targets, None, multi_label=True)
    assert "top5" not in report
    assert report["real_acc"] == pytest.approx(report["top1"])
    assert math.isnan(report["secondary_map"])
    one_hot = torch.nn.functional.one_hot(targets, 4).bool()
    explicit = classification_report(scores, targets, one_hot, multi_label=True)
    assert explicit.keys() == report.keys()
    for key in report.keys() - {"secondary_map"}:
        assert explicit[key] == report[key]
