"""Pseudo-labels of the MILe imitation phase and the statistics that reveal collapse."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def threshold_pseudo_labels(teacher_logits: torch.Tensor, rho: float) -> torch.Tensor:
    """Multi-hot pseudo-labels ``sigmoid(teacher(x)) > rho`` (Alg. 1, line 10).

    Args:
        teacher_logits: Teacher outputs ``(B, C)``.
        rho: Threshold in (0, 1).

    Returns:
        Boolean tensor ``(B, C)``.
    """
    return torch.sigmoid(teacher_logits.float()) > rho


@dataclass(frozen=True)
class PseudoLabelStats:
    """How many labels the teacher hands out, per image.

    Attributes:
        mean_size: Mean number of positive classes per image.
        empty_fraction: Share of images with no positive class.
    """

    mean_size: float
    empty_fraction: float

    def collapse_reason(self, num_classes: int) -> str | None:
        """Explain why these pseudo-labels look collapsed, or ``None`` if they do not.

        A teacher that labels nothing (most sets empty) teaches the student to output
        all-negative; one that labels more than half the classes teaches it to predict
        everything. Both happen with too high / too low ``rho`` or too short phases.
        """
        if self.empty_fraction > 0.9:
            return (
                f"{self.empty_fraction:.0%} of pseudo-label sets are empty "
                "(try a lower mile.rho or longer teacher phases, mile.kt)"
            )
        if self.mean_size > num_classes / 2:
            return (
                f"pseudo-label sets hold {self.mean_size:.1f} of {num_classes} classes on "
                "average (try a higher mile.rho)"
            )
        return None


def pseudo_label_stats(pseudo_labels: torch.Tensor) -> PseudoLabelStats:
    """Summarise a batch of multi-hot pseudo-labels ``(B, C)``."""
    sizes = pseudo_labels.sum(dim=1).float()
    return PseudoLabelStats(
        mean_size=float(sizes.mean()), empty_fraction=float((sizes == 0).float().mean())
    )


def pseudo_label_quality(
    pseudo_labels: torch.Tensor, label_sets: torch.Tensor
) -> tuple[float, float] | None:
    """Micro precision and recall of pseudo-labels against known label sets.

    Rows whose label set is empty (images without any known label, e.g. from an
    unlabeled folder) are left out.

    Args:
        pseudo_labels: Multi-hot pseudo-labels ``(B, C)``.
        label_sets: Multi-hot true label sets ``(B, C)``.

    Returns:
        ``(precision, recall)``, or ``None`` when no row has a known label set.
    """
    known = label_sets.any(dim=1)
    if not known.any():
        return None
    predicted, truth = pseudo_labels[known], label_sets[known]
    hits = float((predicted & truth).sum())
    return hits / max(float(predicted.sum()), 1.0), hits / float(truth.sum())


def pseudo_label_report(
    pseudo_labels: torch.Tensor,
    labelled: torch.Tensor | None = None,
    label_sets: torch.Tensor | None = None,
) -> dict[str, float]:
    """Pseudo-label set sizes, empty share and quality, overall and per stream.

    With ``labelled`` (semi-supervised batches) the statistics are also split into
    labelled (``_labelled``) and unlabeled (``_unlabeled``) images. Precision and recall
    are against ``label_sets``: the true label sets on the digit grids, the single
    label on image folders; images without any known label are left out, and without
    ``label_sets`` there is no quality entry.

    Args:
        pseudo_labels: Multi-hot pseudo-labels ``(B, C)``.
        labelled: Which images carry ground truth ``(B,)``, if the batch mixes streams.
        label_sets: Multi-hot label sets ``(B, C)``, if known.

    Returns:
        ``pseudo_labels_per_image``, ``pseudo_empty_fraction``, ``pseudo_precision``
        and ``pseudo_recall``, each with the group suffix.
    """
    groups = {"": torch.ones(len(pseudo_labels), dtype=torch.bool)}
    if labelled is not None:
        groups["_labelled"] = labelled.cpu()
        groups["_unlabeled"] = ~groups["_labelled"]
    pseudo_labels = pseudo_labels.cpu()
    known_sets = label_sets.cpu() if label_sets is not None else None
    report: dict[str, float] = {}
    for suffix, rows in groups.items():
        if not rows.any():
            continue
        summary = pseudo_label_stats(pseudo_labels[rows])
        report[f"pseudo_labels_per_image{suffix}"] = summary.mean_size
        report[f"pseudo_empty_fraction{suffix}"] = summary.empty_fraction
        if known_sets is None:
            continue
        quality = pseudo_label_quality(pseudo_labels[rows], known_sets[rows])
        if quality is not None:
            report[f"pseudo_precision{suffix}"], report[f"pseudo_recall{suffix}"] = quality
    return report


def self_training_targets(
    teacher_logits: torch.Tensor, labels: torch.Tensor, labelled: torch.Tensor
) -> torch.Tensor:
    """Hard targets of self-training: ground truth where known, the teacher's argmax elsewhere."""
    return torch.where(labelled, labels, teacher_logits.argmax(dim=1))
