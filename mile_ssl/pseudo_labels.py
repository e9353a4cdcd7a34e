"""Pseudo-labels of the MILe imitation phase and the statistics that reveal collapse.

The per-step statistics are computed on the device as one fixed-length tensor
(:func:`pseudo_label_statistics`), with NaN where a statistic does not apply to the
batch, so that a training step never waits for the host; :class:`PhaseStatistics`
collects them over a student phase and reads them back once, at the phase end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


def threshold_pseudo_labels(
    teacher_logits: torch.Tensor, rho: float | torch.Tensor
) -> torch.Tensor:
    """Multi-hot pseudo-labels ``sigmoid(teacher(x)) > rho`` (Alg. 1, line 10).

    Args:
        teacher_logits: Teacher outputs ``(B, C)``.
        rho: Threshold in (0, 1), or a ``(B, 1)`` tensor of one threshold per row.

    Returns:
        Boolean tensor ``(B, C)``.
    """
    return torch.sigmoid(teacher_logits.float()) > rho


def confident_row_weights(pseudo_labels: torch.Tensor) -> torch.Tensor:
    """1 for images with a non-empty pseudo-label set, 0 for the others, unless all are empty.

    ``mile.empty_pseudo_labels=ignore``: the teacher is not confident about an image it
    gives no label, and training it as all-negative pushes the student towards the
    empty-set collapse. When no image has a label at all, every image is kept (as
    all-negative), so that the step still has a loss.

    Returns:
        Float weights ``(B,)`` in {0, 1}.
    """
    confident = pseudo_labels.any(dim=1)
    return (confident | ~confident.any()).float()


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


GROUPS = ("", "_labelled", "_unlabeled")
"""Name suffixes of the statistics: all images, the labelled and the unlabeled stream."""

STATISTICS = tuple(
    f"{name}{suffix}"
    for suffix in GROUPS
    for name in (
        "pseudo_labels_per_image",
        "pseudo_empty_fraction",
        "pseudo_precision",
        "pseudo_recall",
    )
)
"""Names of the entries of :func:`pseudo_label_statistics`, in order."""


def pseudo_label_statistics(
    pseudo_labels: torch.Tensor,
    labelled: torch.Tensor | None = None,
    label_sets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pseudo-label set sizes, empty share and quality, overall and per stream, on the device.

    With ``labelled`` (semi-supervised batches) the statistics are also split into
    labelled (``_labelled``) and unlabeled (``_unlabeled``) images. Precision and recall
    are micro-averaged against ``label_sets``: the true label sets on the digit grids,
    the single label on image folders; images without any known label are left out.
    A statistic without images to measure (no unlabeled image, no known label set, no
    ``label_sets``) is NaN.

    Args:
        pseudo_labels: Multi-hot pseudo-labels ``(B, C)``.
        labelled: Which images carry ground truth ``(B,)``, if the batch mixes streams.
        label_sets: Multi-hot label sets ``(B, C)``, if known.

    Returns:
        Float tensor ``(len(STATISTICS),)``, ordered as :data:`STATISTICS`.
    """
    predicted = pseudo_labels.bool()
    sizes = predicted.sum(dim=1).float()
    everyone = torch.ones_like(sizes, dtype=torch.bool)
    groups = [everyone] if labelled is None else [everyone, labelled.bool(), ~labelled.bool()]
    nan = sizes.new_full((), float("nan"))
    values = []
    for rows in groups:
        count = rows.sum()
        # 0 / 0 is NaN: a group without images has no statistic.
        values.append((sizes * rows).sum() / count)
        values.append(((sizes == 0) & rows).sum() / count)
        if label_sets is None:
            values.extend([nan, nan])
            continue
        truth = label_sets.bool()
        known = truth.any(dim=1) & rows
        hits = ((predicted & truth).sum(dim=1) * known).sum().float()
        predicted_count = (sizes * known).sum()
        true_count = (truth.sum(dim=1) * known).sum().float()
        precision = hits / predicted_count.clamp(min=1.0)
        values.append(torch.where(known.any(), precision, nan))
        values.append(hits / true_count)  # true_count is 0 exactly when nothing is known
    values.extend([nan] * (len(STATISTICS) - len(values)))
    return torch.stack(values)


def statistics_dict(values: torch.Tensor | list[float]) -> dict[str, float]:
    """The statistics that apply, by name, from one step's values (read to the host)."""
    numbers = values.tolist() if isinstance(values, torch.Tensor) else values
    return {
        name: value
        for name, value in zip(STATISTICS, numbers, strict=True)
        if not math.isnan(value)
    }


class PhaseStatistics:
    """The per-step pseudo-label statistics of one student phase, kept on the device.

    Nothing is read back until :func:`read_phase_means` reads what :meth:`finish_phase`
    kept, once per phase; the steps recorded so far are saved in checkpoints
    (:meth:`state`) so that a run resumed mid-phase ends the phase with the same means.
    """

    def __init__(self) -> None:
        self._steps: list[torch.Tensor] = []

    def add(self, values: torch.Tensor) -> None:
        """Record one step's :func:`pseudo_label_statistics`."""
        self._steps.append(values.detach())

    def finish_phase(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The phase's means, still on the device; clears the phase (reads nothing).

        Returns:
            Mean of each statistic over the steps it applies to, and which statistics
            apply to the phase's last step (the others are left out when read, by
            :func:`read_phase_means`); ``None`` for a phase without steps.
        """
        if not self._steps:
            return None
        device = self._steps[-1].device
        steps = torch.stack([step.to(device) for step in self._steps]).double()
        self._steps.clear()
        present = ~steps.isnan()
        means = torch.where(present, steps, 0.0).sum(dim=0) / present.sum(dim=0).clamp(min=1)
        return means, present[-1]

    def state(self) -> list[dict[str, float]]:
        """The steps recorded so far, one mapping per step (the checkpoint's ``phase_stats``)."""
        if not self._steps:
            return []
        device = self._steps[-1].device
        steps = torch.stack([step.to(device) for step in self._steps]).cpu().double()
        return [statistics_dict(step) for step in steps]

    def load_state(self, steps: list[dict[str, Any]]) -> None:
        """Restore the steps saved by :meth:`state`."""
        nan = float("nan")
        self._steps = [
            torch.tensor([float(step.get(name, nan)) for name in STATISTICS]) for step in steps
        ]


def read_phase_means(means: torch.Tensor, present: torch.Tensor) -> dict[str, float]:
    """The statistics :meth:`PhaseStatistics.finish_phase` kept, as numbers (one read)."""
    host = torch.cat([means, present.to(means.dtype)]).cpu()
    count = len(STATISTICS)
    return {
        name: float(host[index]) for index, name in enumerate(STATISTICS) if host[count + index]
    }


def self_training_targets(
    teacher_logits: torch.Tensor, labels: torch.Tensor, labelled: torch.Tensor
) -> torch.Tensor:
    """Hard targets of self-training: ground truth where known, the teacher's argmax elsewhere."""
    return torch.where(labelled, labels, teacher_logits.argmax(dim=1))
