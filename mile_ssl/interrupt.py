"""Ctrl-C during training: stop at the end of the step with a resumable checkpoint.

Lightning's own handling of ``KeyboardInterrupt`` exits with status 1 and saves nothing,
and an interrupt that lands inside an optimiser step would leave the weights half
updated. Here the first Ctrl-C only sets a flag; at the end of the step (on every rank
at the same step) the full training state is saved and :class:`RunInterruptedError` ends the
run. A second Ctrl-C interrupts at once, as usual.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L


class RunInterruptedError(Exception):
    """The user interrupted training; ``checkpoint`` resumes it.

    Attributes:
        checkpoint: The resumable checkpoint written at the interruption.
        step: Optimiser steps it holds.
    """

    def __init__(self, checkpoint: Path, step: int) -> None:
        super().__init__(f"interrupted after step {step}; resumable checkpoint: {checkpoint}")
        self.checkpoint = checkpoint
        self.step = step


class GracefulInterrupt(L.Callback):
    """Turn the first Ctrl-C (SIGINT) into a checkpoint at the end of the current step.

    Args:
        checkpoint: Where the resumable checkpoint is written.
    """

    def __init__(self, checkpoint: Path) -> None:
        self.checkpoint = checkpoint
        self.requested = False
        self._previous: Any = None

    def _request(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Take over SIGINT (only the main thread may install signal handlers)."""
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._request)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Save and stop if Ctrl-C was pressed on any rank during this step."""
        requested = self.requested
        if trainer.world_size > 1:
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if requested:
            trainer.save_checkpoint(self.checkpoint)
            raise RunInterruptedError(self.checkpoint, trainer.global_step)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Give SIGINT back to whoever had it before training."""
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
