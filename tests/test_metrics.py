import math

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    top_k_accuracy_score,
)

from mile_ssl import metrics
from mile_ssl.metrics import (
    class_probabilities,
    classification_report,
    label_coverage,
    label_sets_to_multi_hot,
    mean_average_precision,
    predicted_sets,
    real_accuracy,
    sample_f1,
    sample_precision,
    sample_recall,
    secondary_label_map,
    top1_accuracy,
    topk_accuracy,
)


def make_data(
    seed: int, n: int = 200, c: int = 12, empty_fraction: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random logits, targets and label sets that usually contain the target."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, c, generator=gen) * 2.0
    targets = torch.randint(0, c, (n,), generator=gen)
    label_sets = torch.rand(n, c, generator=gen) < 0.15
    label_sets[torch.arange(n), targets] |= torch.rand(n, generator=gen) < 0.8
    empty = torch.rand(n, generator=gen) < empty_fraction
    label_sets[empty] = False
    return scores, targets, label_sets


def ensure_nonempty(label_sets: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    out = label_sets.clone()
    out[torch.arange(len(targets)), targets] |= ~out.any(dim=1)
    return out


# --------------------------------------------------------------------------------------------
# Against scikit-learn
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top1_and_topk_match_sklearn(seed: int) -> None:
    scores, targets, _ = make_data(seed)
    expected = accuracy_score(targets.numpy(), scores.argmax(dim=1).numpy())
    assert top1_accuracy(scores, targets) == pytest.approx(expected)
    for k in (1, 3, 5, 11):
        expected_k = top_k_accuracy_score(
            targets.numpy(), scores.numpy(), k=k, labels=np.arange(scores.shape[1])
        )
        assert topk_accuracy(scores, targets, k) == pytest.approx(expected_k)
    assert topk_accuracy(scores, targets, 1) == pytest.approx(top1_accuracy(scores, targets))
    assert topk_accuracy(scores, targets, scores.shape[1]) == 1.0


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
    monkeypatch.setattr(metrics, "_AP_CHUNK_ELEMENTS", 120 * 3)  # chunks of 3 classes
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


# --------------------------------------------------------------------------------------------
# Hand-computed examples
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Input formats and empty label sets
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Softmax models and the report
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


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
