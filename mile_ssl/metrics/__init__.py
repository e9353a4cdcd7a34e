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

The metrics live by concern: input checks and label-set conversion in
:mod:`mile_ssl.metrics.inputs`, single-label accuracy in :mod:`mile_ssl.metrics.accuracy`,
predicted sets and the example-based set metrics in :mod:`mile_ssl.metrics.sets`, mAP in
:mod:`mile_ssl.metrics.ranking`. This module computes them all at once
(:func:`classification_report`) and offers the predicted sets and probabilities that
prediction shows.
"""

from __future__ import annotations

import torch

from mile_ssl.metrics.accuracy import top1_accuracy, topk_accuracy
from mile_ssl.metrics.inputs import LabelSets, check_scores, check_targets, resolve_label_sets
from mile_ssl.metrics.ranking import mean_average_precision, secondary_label_map
from mile_ssl.metrics.sets import (
    class_probabilities,
    label_coverage,
    predicted_sets,
    real_accuracy,
    sample_f1,
    sample_precision,
    sample_recall,
)

__all__ = ["class_probabilities", "classification_report", "predicted_sets"]


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
    scores = check_scores(scores)
    num_samples, num_classes = scores.shape
    targets = check_targets(targets, num_samples, num_classes)
    if label_sets is None:
        multi_hot = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        multi_hot.scatter_(1, targets.to(scores.device)[:, None], True)
    else:
        multi_hot = resolve_label_sets(label_sets, num_samples, num_classes)
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
