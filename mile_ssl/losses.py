"""Training objectives of the three methods (paper Sec. 3, Eq. 1)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def multi_label_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy summed over classes and averaged over the batch (Eq. 1).

    Summing over classes (rather than averaging) keeps the gradient of each class as
    large as with softmax cross-entropy, so the same learning rates work for both.

    Args:
        logits: Raw outputs ``(B, C)``.
        targets: Multi-hot targets ``(B, C)`` in {0, 1} (bool or float).

    Returns:
        Scalar loss ``-1/B sum_i sum_j [y_ij log s_ij + (1 - y_ij) log(1 - s_ij)]``.
    """
    return _per_image_bce(logits, targets).mean()


def _per_image_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of each image, summed over classes: shape ``(B,)``."""
    per_element = F.binary_cross_entropy_with_logits(
        logits.float(), targets.to(torch.float32), reduction="none"
    )
    return per_element.sum(dim=1)


def semi_supervised_bce(
    logits: torch.Tensor, targets: torch.Tensor, labelled: torch.Tensor, unlabeled_weight: float
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
    """
    per_image = _per_image_bce(logits, targets)
    loss = per_image.new_zeros(())
    for rows, weight in ((labelled, 1.0), (~labelled, unlabeled_weight)):
        if rows.any():
            loss = loss + weight * per_image[rows].mean()
    return loss


def one_hot_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`multi_label_bce` against the one-hot encoding of single labels."""
    return multi_label_bce(logits, F.one_hot(labels, logits.shape[1]))


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Standard cross-entropy on the single label, averaged over the batch."""
    return F.cross_entropy(logits.float(), labels)


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
