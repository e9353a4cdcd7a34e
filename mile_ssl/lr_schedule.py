"""The learning-rate factor of every step, under either ``optim.schedule``.

``cosine`` (the default) is :func:`~mile_ssl.schedule.warmup_cosine`, a pure function of
the step counter. ``plateau`` (the MILe reference code's schedule) also depends on the
validation losses seen so far: :class:`LearningRateSchedule` holds that history, and the
checkpoint holds its state (:meth:`LearningRateSchedule.state_dict`), so that a resumed
run continues on the same rates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import ReduceLROnPlateau

from mile_ssl.schedule import linear_warmup, warmup_cosine

if TYPE_CHECKING:
    from mile_ssl.config import OptimConfig


class PlateauSchedule:
    """``optim.schedule=plateau``: warm-up, then a constant rate cut on validation plateaus.

    After more than ``patience`` validations in a row without a new best loss (lower
    than the best by more than a relative 1e-4), the rate is multiplied by ``factor``,
    with no cooldown and no floor. That is torch's ``ReduceLROnPlateau`` with its
    defaults besides ``factor`` and ``patience``, and it is what decides here: it drives
    a placeholder optimiser whose one rate is the current scale (1 until the first cut),
    so that one scale applies to every parameter group of every optimiser of the run.

    Args:
        factor: What a cut multiplies the rate by, in (0, 1).
        patience: Validations without improvement tolerated before a cut.
        warmup_steps: Linear warm-up steps before the constant rate.
    """

    def __init__(self, factor: float, patience: int, warmup_steps: int = 0) -> None:
        self.warmup_steps = warmup_steps
        self._scale = torch.optim.SGD([torch.zeros(0, requires_grad=True)], lr=1.0)
        self._plateau = ReduceLROnPlateau(self._scale, factor=factor, patience=patience)

    @property
    def scale(self) -> float:
        """The product of the cuts so far (1.0 before the first)."""
        return float(self._scale.param_groups[0]["lr"])

    def factor(self, step: int) -> float:
        """Learning-rate factor of training step ``step``."""
        return linear_warmup(step, self.warmup_steps) * self.scale

    def observe(self, loss: float) -> bool:
        """Record one validation loss; whether it cut the rate."""
        before = self.scale
        self._plateau.step(loss)
        return self.scale < before

    def state_dict(self) -> dict[str, float | int]:
        """What a resumed run needs: the scale, the best loss, the counts of validations."""
        return {
            "scale": self.scale,
            "best": float(self._plateau.best),
            "bad_validations": int(self._plateau.num_bad_epochs),
            "validations": int(self._plateau.last_epoch),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output (with this run's factor and patience)."""
        self._scale.param_groups[0]["lr"] = float(state["scale"])
        self._plateau.best = float(state["best"])
        self._plateau.num_bad_epochs = int(state["bad_validations"])
        self._plateau.last_epoch = int(state["validations"])


def validation_loss_sum(
    logits: torch.Tensor, labels: torch.Tensor, label_sets: torch.Tensor, multi_label: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss ``optim.schedule=plateau`` watches, summed over a batch, and its image count.

    As the MILe reference code's ``val_loss``: sigmoid outputs take the binary
    cross-entropy against each image's validation label set, averaged over the classes
    with the positive classes weighted ``C - 1`` (so that the few positives weigh as much
    as the many negatives); softmax outputs take the cross-entropy on the single label
    (images without one, label -1, are not counted).
    """
    logits = logits.float()
    if multi_label:
        targets = label_sets.to(logits.dtype)
        weights = 1.0 + (logits.shape[1] - 1) * targets
        losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        return (losses * weights).mean(dim=1).sum(), logits.new_tensor(float(len(logits)))
    total = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
    return total, (labels >= 0).sum().to(logits.dtype)


class LearningRateSchedule:
    """The learning-rate factor of every step of a run, and what it remembers.

    ``cosine`` is :func:`~mile_ssl.schedule.warmup_cosine` of the step and keeps no
    state; ``plateau`` is a :class:`PlateauSchedule` fed the mean validation loss
    (:func:`validation_loss_sum`) at the end of each validation. The sums are added
    across ranks before it decides, so that every rank takes the same decision.

    Args:
        optim: The run's ``optim`` settings.
    """

    def __init__(self, optim: OptimConfig) -> None:
        self.warmup_steps = optim.warmup_steps
        self.plateau = (
            PlateauSchedule(optim.plateau_factor, optim.plateau_patience, optim.warmup_steps)
            if optim.schedule == "plateau"
            else None
        )
        self._losses: list[torch.Tensor] = []

    def factor(self, step: int, total_steps: int) -> float:
        """Learning-rate factor of training step ``step`` of ``total_steps``."""
        if self.plateau is None:
            return warmup_cosine(step, total_steps, self.warmup_steps)
        return self.plateau.factor(step)

    def add_validation_batch(
        self, logits: torch.Tensor, batch: Mapping[str, torch.Tensor], multi_label: bool
    ) -> None:
        """Add one validation batch to the loss the plateau watches (kept on the device)."""
        if self.plateau is not None:
            total, count = validation_loss_sum(
                logits, batch["label"], batch["label_set"], multi_label
            )
            self._losses.append(torch.stack([total, count]))

    def end_validation(self, reduce: Callable[..., Any]) -> float | None:
        """Feed this validation's mean loss to the plateau schedule; the loss, if one is watched.

        Args:
            reduce: Lightning's ``strategy.reduce``: called with ``reduce_op="sum"``, it
                adds a tensor up over every rank (the identity on one).
        """
        if self.plateau is None or not self._losses:
            return None
        total, count = reduce(torch.stack(self._losses).sum(dim=0), reduce_op="sum").tolist()
        self._losses.clear()
        loss = float(total / max(count, 1.0))
        self.plateau.observe(loss)
        return loss

    def state_dict(self) -> dict[str, float | int] | None:
        """The plateau schedule's state; ``None`` for ``cosine``, a function of the step."""
        return None if self.plateau is None else self.plateau.state_dict()

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Continue from :meth:`state_dict`'s output (a checkpoint without one: afresh)."""
        if self.plateau is not None and state is not None:
            self.plateau.load_state_dict(state)
