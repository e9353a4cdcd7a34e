"""Single-label and multi-label (ImageNet-ReaL style) evaluation metrics.

Everything here is a pure function over CPU torch tensors so the same code serves the
Lightning modules, offline evaluation scripts and tests. Conventions shared by all functions:

* ``scores`` are logits of shape ``(N, C)``. Whether they belong to a sigmoid (multi-label)
  or a softmax model is passed explicitly where it matters, because the predicted label
  set and the class probabilities differ between the two.
* ``targets`` are the single original labels, an integer tensor of shape ``(N,)``.
* ``label_sets`` are the multi-label ground truth (e.g. ImageNet-ReaL), either a multi-hot
  ``(N, C)`` tensor or a sequence of ``N`` sequences of class indices. A sample with an empty
  label set carries no information about which labels are correct (ReaL leaves 3,163
  validation images unlabelled), so it is left out of every label-set metric.

Accuracy-like results are fractions in ``[0, 1]``; scaling to percentages is left to the
reporting layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import chain
from typing import TypeAlias

import numpy as np
import torch

LabelSets: TypeAlias = torch.Tensor | np.ndarray | Sequence[Sequence[int]]
"""Multi-hot ``(N, C)`` tensor/array or ``N`` sequences of class indices."""

# Upper bound on the number of score entries sorted at once by the average-precision code;
# keeps peak memory at a few hundred MB for ImageNet-sized inputs (50k x 1000).
_AP_CHUNK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------------------------
# Input validation and conversion
# --------------------------------------------------------------------------------------------


def _check_scores(scores: torch.Tensor) -> torch.Tensor:
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


def _check_targets(targets: torch.Tensor, num_samples: int, num_classes: int) -> torch.Tensor:
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


def _check_binary_matrix(
    matrix: torch.Tensor, name: str, num_classes: int | None = None
) -> torch.Tensor:
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
        return _check_binary_matrix(label_sets, "label_sets", num_classes)
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


def _resolve_label_sets(
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


def _labelled_rows(multi_hot: torch.Tensor) -> torch.Tensor:
    """Mask of samples with a non-empty label set; raises if there are none."""
    keep = multi_hot.any(dim=1)
    if not keep.any():
        raise ValueError("label_sets: every label set is empty, the metric is undefined")
    return keep


# --------------------------------------------------------------------------------------------
# Single-label accuracy
# --------------------------------------------------------------------------------------------


def top1_accuracy(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of samples whose highest-scoring class is the original label.

    ``top1 = (1/N) * sum_i [argmax_j s_ij == t_i]``; identical for logits and probabilities
    because both softmax and sigmoid preserve the per-sample ordering of classes.

    Args:
        scores: Logits ``(N, C)``.
        targets: Original single labels ``(N,)``.

    Returns:
        Accuracy in ``[0, 1]``.
    """
    scores = _check_scores(scores)
    targets = _check_targets(targets, *scores.shape)
    return float((scores.argmax(dim=1) == targets).double().mean())


def topk_accuracy(scores: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    """Fraction of samples whose original label is among the ``k`` highest scores.

    ``topk = (1/N) * sum_i [t_i in top_k(s_i)]``; ties at the k-th place are broken
    arbitrarily, as with ``torch.topk``.

    Args:
        scores: Logits ``(N, C)``.
        targets: Original single labels ``(N,)``.
        k: Number of top classes that count as a hit, ``1 <= k <= C``.

    Returns:
        Accuracy in ``[0, 1]``.

    Raises:
        ValueError: If ``k`` is outside ``[1, C]``.
    """
    scores = _check_scores(scores)
    targets = _check_targets(targets, *scores.shape)
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must lie in [1, {scores.shape[1]}], got {k}")
    top = scores.topk(k, dim=1).indices
    return float((top == targets[:, None]).any(dim=1).double().mean())


# --------------------------------------------------------------------------------------------
# Predicted label sets and label-set metrics
# --------------------------------------------------------------------------------------------


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
    scores = _check_scores(scores).double()
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
    scores = _check_scores(scores)
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
    scores = _check_scores(scores)
    multi_hot = _resolve_label_sets(label_sets, *scores.shape).to(scores.device)
    keep = _labelled_rows(multi_hot)
    hit = multi_hot.gather(1, scores.argmax(dim=1, keepdim=True)).squeeze(1)
    return float(hit[keep].double().mean())


def _set_counts(
    pred_sets: torch.Tensor, label_sets: LabelSets
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample ``|P ∩ Y|``, ``|P|`` and ``|Y|`` over samples with a non-empty ``Y``."""
    if not isinstance(pred_sets, torch.Tensor):
        raise TypeError(f"pred_sets must be a torch.Tensor, got {type(pred_sets).__name__}")
    pred = _check_binary_matrix(pred_sets, "pred_sets")
    if pred.shape[0] == 0 or pred.shape[1] == 0:
        raise ValueError(f"pred_sets is empty (shape {tuple(pred.shape)})")
    num_samples, num_classes = pred.shape
    truth = _resolve_label_sets(label_sets, num_samples, num_classes, "pred_sets")
    truth = truth.to(pred.device)
    keep = _labelled_rows(truth)
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


# --------------------------------------------------------------------------------------------
# Ranking metrics
# --------------------------------------------------------------------------------------------


def _column_average_precision(
    scores: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average precision of every column of ``scores`` against the matching ``positive`` column.

    Within column ``j`` only rows with ``valid[:, j]`` take part. With thresholds at the
    distinct scores (tied scores form one threshold, as in sklearn),
    ``AP = sum_k (R_k - R_{k-1}) * P_k``: each threshold's precision weighted by the recall it
    adds. Columns are processed in chunks to bound the memory of the sort.

    Returns:
        ``(ap, n_pos)``, both float64 of shape ``(C,)``; ``ap`` is NaN where ``n_pos == 0``.
    """
    num_samples, num_classes = scores.shape
    chunk = max(1, _AP_CHUNK_ELEMENTS // max(num_samples, 1))
    aps: list[torch.Tensor] = []
    counts: list[torch.Tensor] = []
    for start in range(0, num_classes, chunk):
        cols = slice(start, start + chunk)
        col_scores = scores[:, cols]
        col_pos = positive[:, cols]
        if valid is not None:
            col_pos = col_pos & valid[:, cols]
        sorted_scores, order = col_scores.sort(dim=0, descending=True)
        is_pos = col_pos.gather(0, order).double()
        true_pos = is_pos.cumsum(dim=0)
        if valid is None:
            ranks = torch.arange(1, num_samples + 1, dtype=torch.float64, device=scores.device)
            seen = ranks[:, None].expand_as(true_pos)
        else:
            seen = valid[:, cols].gather(0, order).double().cumsum(dim=0)
        precision = true_pos / seen.clamp(min=1.0)
        # A threshold sits at the last row of each run of tied scores.
        last = torch.ones_like(sorted_scores, dtype=torch.bool)
        last[:-1] = sorted_scores[1:] != sorted_scores[:-1]
        if last.all():
            # No ties: every row is a threshold and adds recall only where it is a positive.
            gained = is_pos
        else:
            # true_pos never decreases, so the running max of its values at thresholds is the
            # count at the previous threshold.
            tp_at_last = torch.where(last, true_pos, 0.0)
            tp_before = torch.zeros_like(true_pos)
            tp_before[1:] = tp_at_last.cummax(dim=0).values[:-1]
            gained = torch.where(last, true_pos - tp_before, 0.0)
        n_pos = true_pos[-1]
        aps.append((gained * precision).sum(dim=0) / n_pos)
        counts.append(n_pos)
    return torch.cat(aps), torch.cat(counts)


def mean_average_precision(scores: torch.Tensor, label_sets: LabelSets) -> float:
    """Macro mean over classes of the average precision of ranking samples by class score.

    For class ``j`` the samples are sorted by ``s_ij`` and
    ``AP_j = sum_k (R_k - R_{k-1}) * P_k`` over distinct score thresholds; ``mAP`` is the mean
    over classes with at least one positive (AP is undefined without one). Matches sklearn
    ``average_precision_score(average="macro")`` on those classes. Pass probabilities (see
    :func:`class_probabilities`) for a softmax model, whose logits are not comparable across
    samples.

    Args:
        scores: Per-class scores ``(N, C)`` (logits or probabilities).
        label_sets: Multi-label ground truth, see :func:`label_sets_to_multi_hot`; samples
            with an empty set are excluded.

    Returns:
        mAP in ``[0, 1]``.
    """
    scores = _check_scores(scores)
    multi_hot = _resolve_label_sets(label_sets, *scores.shape).to(scores.device)
    keep = _labelled_rows(multi_hot)
    ap, n_pos = _column_average_precision(scores[keep], multi_hot[keep])
    return float(ap[n_pos > 0].mean())


def secondary_label_map(
    scores: torch.Tensor, targets: torch.Tensor, label_sets: LabelSets
) -> float:
    """Mean average precision on the labels ReaL adds beyond the original one.

    This is the "secondary label recovery" metric of the paper's App. A.2. For class ``j``
    the ranking contains only samples whose original label is not ``j`` (those are what
    single-label training already fits), and the positives are the samples among them whose
    label set contains ``j``. The result is the macro mean of ``AP_j`` over classes with at
    least one such positive, measuring how well a model recovers the alternative labels it
    was never trained on.

    Args:
        scores: Per-class scores ``(N, C)`` (logits or probabilities, see
            :func:`mean_average_precision`).
        targets: Original single labels ``(N,)``.
        label_sets: Multi-label ground truth, see :func:`label_sets_to_multi_hot`; samples
            with an empty set are excluded.

    Returns:
        Secondary mAP in ``[0, 1]``, or NaN when no sample has a label besides its original
        one (e.g. when the label sets are just the original labels).
    """
    scores = _check_scores(scores)
    targets = _check_targets(targets, *scores.shape).to(scores.device)
    multi_hot = _resolve_label_sets(label_sets, *scores.shape).to(scores.device)
    keep = _labelled_rows(multi_hot)
    classes = torch.arange(scores.shape[1], device=scores.device)
    valid = targets[keep, None] != classes[None, :]
    ap, n_pos = _column_average_precision(scores[keep], multi_hot[keep], valid)
    has_pos = n_pos > 0
    if not has_pos.any():
        return math.nan
    return float(ap[has_pos].mean())


# --------------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------------


def classification_report(
    scores: torch.Tensor,
    targets: torch.Tensor,
    label_sets: LabelSets | None,
    multi_label: bool,
    threshold: float = 0.5,
) -> dict[str, float]:
    """Compute every metric reported in the paper in one pass.

    Keys: ``top1``, ``top5`` (only when ``C >= 5``), ``real_acc``, ``real_f1`` (F1 at
    ``threshold``), ``f1@0.25``, ``f1@0.5``, ``precision@0.25``, ``recall@0.25``,
    ``coverage`` (at ``threshold``), ``map`` and ``secondary_map``. Top-k accuracies use all
    samples; the rest skip samples with an empty label set. The ranking metrics use
    :func:`class_probabilities`, since softmax logits are not comparable across samples.

    Args:
        scores: Logits ``(N, C)``.
        targets: Original single labels ``(N,)``.
        label_sets: Multi-label ground truth; ``None`` uses ``{targets[i]}`` for sample ``i``
            (then ``secondary_map`` is NaN).
        multi_label: Whether the model was trained with independent sigmoids.
        threshold: Sigmoid threshold for ``real_f1`` and ``coverage``.

    Returns:
        Mapping from metric name to a float (fractions, not percentages).
    """
    scores = _check_scores(scores)
    num_samples, num_classes = scores.shape
    targets = _check_targets(targets, num_samples, num_classes)
    if label_sets is None:
        multi_hot = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        multi_hot.scatter_(1, targets.to(scores.device)[:, None], True)
    else:
        multi_hot = _resolve_label_sets(label_sets, num_samples, num_classes)
    multi_hot = multi_hot.to(scores.device)

    sets = {t: predicted_sets(scores, t, multi_label) for t in {0.25, 0.5, threshold}}
    probabilities = class_probabilities(scores, multi_label)

    report = {"top1": top1_accuracy(scores, targets)}
    if num_classes >= 5:
        report["top5"] = topk_accuracy(scores, targets, 5)
    report.update(
        {
            "real_acc": real_accuracy(scores, multi_hot),
            "real_f1": sample_f1(sets[threshold], multi_hot),
            "f1@0.25": sample_f1(sets[0.25], multi_hot),
            "f1@0.5": sample_f1(sets[0.5], multi_hot),
            "precision@0.25": sample_precision(sets[0.25], multi_hot),
            "recall@0.25": sample_recall(sets[0.25], multi_hot),
            "coverage": label_coverage(sets[threshold], multi_hot),
            "map": mean_average_precision(probabilities, multi_hot),
            "secondary_map": secondary_label_map(probabilities, targets, multi_hot),
        }
    )
    return report
