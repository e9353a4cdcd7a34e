"""Single-label accuracy: is the original label the top (or among the top k) scores."""

from __future__ import annotations

import torch

from mile_ssl.metrics.inputs import check_scores, check_targets


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
    scores = check_scores(scores)
    targets = check_targets(targets, *scores.shape)
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
    scores = check_scores(scores)
    targets = check_targets(targets, *scores.shape)
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must lie in [1, {scores.shape[1]}], got {k}")
    top = scores.topk(k, dim=1).indices
    return float((top == targets[:, None]).any(dim=1).double().mean())
