"""Predicted label sets and the example-based metrics that compare them with label sets.

A sigmoid (multi-label) model predicts ``argmax ∪ {j : sigmoid_j > threshold}``, a
softmax model its argmax alone. ReaL accuracy, F1, precision, recall and coverage are
means over the samples with a non-empty label set: an empty set carries no information
about which labels are correct (ReaL leaves 3,163 validation images unlabelled).
"""

from __future__ import annotations

import torch

from mile_ssl.metrics.inputs import (
    LabelSets,
    check_binary_matrix,
    check_scores,
    labelled_rows,
    resolve_label_sets,
)


def class_probabilities(scores: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Per-class probabilities in float64: sigmoid for multi-label models, else softmax.

    Ranking-based metrics (mAP) compare one class's score across samples, which the softmax
    normalisation changes, so they must see probabilities rather than logits for a softmax
    model. Float64 keeps saturated sigmoid outputs distinct instead of creating ties at 1.0.

    Args:
        scores: Logits ``(N, C)``.
        multi_label: Whether the model was trained with independent sigmoids.

    Returns:
        Float64 tensor ``(N, C)``.
    """
    scores = check_scores(scores).double()
    return torch.sigmoid(scores) if multi_label else torch.softmax(scores, dim=1)


def predicted_sets(scores: torch.Tensor, threshold: float, multi_label: bool) -> torch.Tensor:
    """Label set each sample is predicted to carry.

    For a sigmoid model ``P_i = {argmax_j s_ij} ∪ {j : sigmoid(s_ij) > threshold}``: the
    top-1 class is always included so every sample gets at least one label, as in the
    single-label evaluation. A softmax model is a single-label classifier, so its set is
    just ``{argmax_j s_ij}`` regardless of the threshold (hence its F1@0.25 equals F1@0.5).

    Args:
        scores: Logits ``(N, C)``.
        threshold: Probability above which a class joins the set, in ``[0, 1]``.
        multi_label: Whether the model was trained with independent sigmoids.

    Returns:
        Bool tensor ``(N, C)``.

    Raises:
        ValueError: If ``threshold`` is outside ``[0, 1]``.
    """
    scores = check_scores(scores)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    sets = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    sets.scatter_(1, scores.argmax(dim=1, keepdim=True), True)
    if multi_label:
        sets |= torch.sigmoid(scores.double()) > threshold
    return sets


def real_accuracy(scores: torch.Tensor, label_sets: LabelSets) -> float:
    """ReaL accuracy (Beyer et al., 2020): the top-1 prediction is any of the sample's labels.

    ``ReaL-Acc = (1/N') * sum_i [argmax_j s_ij in Y_i]`` over the ``N'`` samples with a
    non-empty label set ``Y_i``.

    Args:
        scores: Logits ``(N, C)``.
        label_sets: Multi-label ground truth, see :func:`label_sets_to_multi_hot`.

    Returns:
        Accuracy in ``[0, 1]``.
    """
    scores = check_scores(scores)
    multi_hot = resolve_label_sets(label_sets, *scores.shape).to(scores.device)
    keep = labelled_rows(multi_hot)
    hit = multi_hot.gather(1, scores.argmax(dim=1, keepdim=True)).squeeze(1)
    return float(hit[keep].double().mean())


def _set_counts(
    pred_sets: torch.Tensor, label_sets: LabelSets
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample ``|P ∩ Y|``, ``|P|`` and ``|Y|`` over samples with a non-empty ``Y``."""
    if not isinstance(pred_sets, torch.Tensor):
        raise TypeError(f"pred_sets must be a torch.Tensor, got {type(pred_sets).__name__}")
    pred = check_binary_matrix(pred_sets, "pred_sets")
    if pred.shape[0] == 0 or pred.shape[1] == 0:
        raise ValueError(f"pred_sets is empty (shape {tuple(pred.shape)})")
    num_samples, num_classes = pred.shape
    truth = resolve_label_sets(label_sets, num_samples, num_classes, "pred_sets")
    truth = truth.to(pred.device)
    keep = labelled_rows(truth)
    pred, truth = pred[keep], truth[keep]
    true_pos = (pred & truth).sum(dim=1).double()
    return true_pos, pred.sum(dim=1).double(), truth.sum(dim=1).double()


def sample_f1(pred_sets: torch.Tensor, label_sets: LabelSets) -> float:
    """Example-based F1 (ReaL-F1 when ``pred_sets`` is thresholded at 0.5).

    ``F1 = (1/N') * sum_i 2 TP_i / (2 TP_i + FP_i + FN_i)`` over samples with a non-empty
    label set; the denominator equals ``|P_i| + |Y_i| > 0``. It rewards predicting all of an
    image's labels and penalises extra ones, which accuracy alone cannot see.

    Args:
        pred_sets: Predicted sets ``(N, C)``, bool or 0/1 (see :func:`predicted_sets`).
        label_sets: Multi-label ground truth, see :func:`label_sets_to_multi_hot`.

    Returns:
        Mean F1 in ``[0, 1]``; equals sklearn ``f1_score(average="samples")`` on those samples.
    """
    true_pos, n_pred, n_true = _set_counts(pred_sets, label_sets)
    return float((2.0 * true_pos / (n_pred + n_true)).mean())


def sample_precision(pred_sets: torch.Tensor, label_sets: LabelSets) -> float:
    """Example-based precision: fraction of each predicted set that is correct.

    ``precision = (1/N') * sum_i TP_i / |P_i|`` over samples with a non-empty label set; an
    empty predicted set contributes 0 (sklearn's ``zero_division=0``).

    Args:
        pred_sets: Predicted sets ``(N, C)``, bool or 0/1.
        label_sets: Multi-label ground truth, see :func:`label_sets_to_multi_hot`.

    Returns:
        Mean precision in ``[0, 1]``.
    """
    true_pos, n_pred, _ = _set_counts(pred_sets, label_sets)
    per_sample = torch.where(n_pred > 0, true_pos / n_pred.clamp(min=1.0), 0.0)
    return float(per_sample.mean())


def sample_recall(pred_sets: torch.Tensor, label_sets: LabelSets) -> float:
    """Example-based recall: fraction of each sample's labels that were predicted.

    ``recall = (1/N') * sum_i TP_i / |Y_i|`` over samples with a non-empty label set.

    Args:
        pred_sets: Predicted sets ``(N, C)``, bool or 0/1.
        label_sets: Multi-label ground truth, see :func:`label_sets_to_multi_hot`.

    Returns:
        Mean recall in ``[0, 1]``.
    """
    true_pos, _, n_true = _set_counts(pred_sets, label_sets)
    return float((true_pos / n_true).mean())


def label_coverage(pred_sets: torch.Tensor, label_sets: LabelSets) -> float:
    """Mean number of predicted labels per sample.

    ``coverage = (1/N') * sum_i |P_i|`` over samples with a non-empty label set; since every
    predicted set holds at least the top-1 class, 1.15 means 15% more labels than one per
    image.

    Args:
        pred_sets: Predicted sets ``(N, C)``, bool or 0/1.
        label_sets: Multi-label ground truth, used only to select the labelled samples.

    Returns:
        Mean predicted-set size (``>= 1`` for sets from :func:`predicted_sets`).
    """
    _, n_pred, _ = _set_counts(pred_sets, label_sets)
    return float(n_pred.mean())
