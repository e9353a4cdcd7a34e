"""Training objectives of the three methods (paper Sec. 3, Eq. 1).

Every loss takes optional per-image ``row_weights`` instead of a selection of rows, so
that leaving images out keeps the tensor shapes fixed and never asks the host how many
rows are left (a boolean index waits for the device). With 0/1 weights the value is the
loss of the selected rows alone, exactly as indexing them would give.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def weighted_mean(values: torch.Tensor, row_weights: torch.Tensor | None) -> torch.Tensor:
    """``sum_i w_i v_i / sum_i w_i``, or the plain mean without weights.

    Rows with weight 0 contribute nothing, not even a non-finite value. With every weight
    0 the result is 0: an empty selection adds nothing to a sum of terms.
    """
    if row_weights is None:
        return values.mean()
    weights = row_weights.to(values.dtype)
    total = weights.sum()
    weighted = torch.where(weights > 0, values * weights, values.new_zeros(()))
    # The denominator is never 0, so no NaN appears, not even in the unused branch's grad.
    return weighted.sum() / torch.where(total > 0, total, total.new_ones(()))


def multi_label_bce(
    logits: torch.Tensor, targets: torch.Tensor, row_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary cross-entropy summed over classes and averaged over the batch (Eq. 1).

    Summing over classes (rather than averaging) keeps the gradient of each class as
    large as with softmax cross-entropy, so the same learning rates work for both.

    Args:
        logits: Raw outputs ``(B, C)``.
        targets: Multi-hot targets ``(B, C)`` in {0, 1} (bool or float).
        row_weights: Per-image weights ``(B,)`` of the average (see :func:`weighted_mean`).

    Returns:
        Scalar loss ``-1/B sum_i sum_j [y_ij log s_ij + (1 - y_ij) log(1 - s_ij)]``.
    """
    return weighted_mean(per_image_bce(logits, targets), row_weights)


def per_image_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of each image, summed over classes: shape ``(B,)``."""
    per_element = F.binary_cross_entropy_with_logits(
        logits.float(), targets.to(torch.float32), reduction="none"
    )
    return per_element.sum(dim=1)


def semi_supervised_bce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    labelled: torch.Tensor,
    unlabeled_weight: float,
    row_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`multi_label_bce` averaged within each stream: ``L_labelled + w * L_unlabeled``.

    One mean over the mixed batch would give the labelled images ``1 / (1 + ratio)`` of
    the weight they have in supervised MILe, so the ground-truth phase would overwrite
    what the student learnt about them. Averaging each stream on its own (FixMatch's
    ``L_s + lambda_u * L_u``) keeps the labelled term as strong as without unlabeled
    images. A stream with no image in the batch contributes nothing.

    Args:
        logits: Raw outputs ``(B, C)``.
        targets: Multi-hot targets ``(B, C)``.
        labelled: Boolean ``(B,)``, true for images of the labelled stream.
        unlabeled_weight: ``w``, the weight of the unlabeled images' mean loss.
        row_weights: Per-image weights ``(B,)`` within each stream (default: all 1).
    """
    per_image = per_image_bce(logits, targets)
    weights = torch.ones_like(per_image) if row_weights is None else row_weights.float()
    labelled_term = weighted_mean(per_image, weights * labelled)
    unlabeled_term = weighted_mean(per_image, weights * ~labelled)
    return labelled_term + unlabeled_weight * unlabeled_term


def one_hot_bce(
    logits: torch.Tensor, labels: torch.Tensor, row_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`multi_label_bce` against the one-hot encoding of single labels.

    The encoding is a scatter rather than ``F.one_hot``, which reads the labels' minimum
    and maximum back to the host to check them on some devices: a wait in every step.
    An out-of-range label still fails, in the scatter.
    """
    one_hot = torch.zeros(
        labels.shape[0], logits.shape[1], dtype=torch.long, device=labels.device
    ).scatter_(1, labels.unsqueeze(1), 1)
    return multi_label_bce(logits, one_hot, row_weights)


def softmax_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, row_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Standard cross-entropy on the single label, averaged over the batch."""
    if row_weights is None:
        return F.cross_entropy(logits.float(), labels)
    per_image = F.cross_entropy(logits.float(), labels, reduction="none")
    return weighted_mean(per_image, row_weights)


def sigmoid_head_bias(num_classes: int) -> float:
    """Initial bias of a sigmoid head: ``-log(C)``.

    With zero bias every class starts at probability 0.5 and the first steps are spent
    pushing ``C - 1`` negatives down; ``-log(C)`` starts each near the prior ``1/C``.
    """
    return -math.log(num_classes)


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Cross-entropy from the teacher's tempered softmax to the student's (SimCLR-v2, Eq. 4).

    ``-1/B sum_i sum_j softmax(t_i / T)_j log softmax(s_i / T)_j``.
    """
    targets = torch.softmax(teacher_logits.float() / temperature, dim=1)
    log_probabilities = torch.log_softmax(student_logits.float() / temperature, dim=1)
    return -(targets * log_probabilities).sum(dim=1).mean()
