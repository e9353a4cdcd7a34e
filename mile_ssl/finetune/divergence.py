"""Noticing a diverged run without making every training step wait for the device.

A training step records whether its loss is finite in a tensor on the device
(:class:`NonFiniteLossMonitor`); reading that tensor is the only host synchronisation
the check needs, and the module decides when to pay for it (see
:meth:`mile_ssl.finetune.base.FineTuneModule.optimize`).
"""

from __future__ import annotations

import torch


class DivergenceError(FloatingPointError):
    """The loss or the weights stopped being finite: training cannot go on."""


class NonFiniteLossMonitor:
    """Remembers, on the device, the first training step whose loss was not finite."""

    def __init__(self) -> None:
        self._first_step: torch.Tensor | None = None
        self._loss: torch.Tensor | None = None

    def record(self, step: int, loss: torch.Tensor) -> None:
        """Note ``loss`` of training step ``step``; queues device work only, reads nothing."""
        loss = loss.detach().float()
        if self._first_step is None or self._loss is None or self._loss.device != loss.device:
            self._first_step = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._loss = torch.zeros((), device=loss.device)
        first = ~torch.isfinite(loss) & (self._first_step < 0)
        self._first_step = torch.where(first, step, self._first_step)
        self._loss = torch.where(first, loss, self._loss)

    def first_non_finite(self) -> tuple[int, float] | None:
        """``(step, loss)`` of the first non-finite loss recorded, or ``None``.

        This reads the device (one synchronisation), and a second time only after a
        divergence.
        """
        if self._first_step is None or self._loss is None:
            return None
        step = int(self._first_step)
        return None if step < 0 else (step, float(self._loss))
