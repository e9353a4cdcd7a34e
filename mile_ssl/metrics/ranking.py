"""Ranking metrics over label sets: mean average precision and secondary-label mAP.

Each class ranks the samples by its score; average precision measures how early the
samples carrying that class come. The AP code works on all classes at once, sorted in
chunks of columns to bound memory for ImageNet-sized inputs.
"""

from __future__ import annotations

import math

import torch

from mile_ssl.metrics.inputs import (
    LabelSets,
    check_scores,
    check_targets,
    labelled_rows,
    resolve_label_sets,
)

# Upper bound on the number of score entries sorted at once by the average-precision code;
# keeps peak memory at a few hundred MB for ImageNet-sized inputs (50k x 1000).
_AP_CHUNK_ELEMENTS = 1 << 22


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
    scores = check_scores(scores)
    multi_hot = resolve_label_sets(label_sets, *scores.shape).to(scores.device)
    keep = labelled_rows(multi_hot)
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
    scores = check_scores(scores)
    targets = check_targets(targets, *scores.shape).to(scores.device)
    multi_hot = resolve_label_sets(label_sets, *scores.shape).to(scores.device)
    keep = labelled_rows(multi_hot)
    classes = torch.arange(scores.shape[1], device=scores.device)
    valid = targets[keep, None] != classes[None, :]
    ap, n_pos = _column_average_precision(scores[keep], multi_hot[keep], valid)
    has_pos = n_pos > 0
    if not has_pos.any():
        return math.nan
    return float(ap[has_pos].mean())
