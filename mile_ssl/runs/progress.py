"""The training progress bar: steps of the run, MILe's phase and cycle, loss and images/s.

A run is a number of optimiser steps (``trainer.max_steps``), not of epochs, and MILe
alternates teacher and student phases within cycles, so Lightning's default bar ("Epoch
49: 1/2" with every logged loss) says little about where a run stands. This bar counts
steps over the whole run (a resumed run starts at its step), names the phase and cycle
of the latest step, shows the loss of that phase alone and the images trained per second.

Lightning shows it on rank 0 only; ``trainer.progress_bar=false`` leaves it out.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities.data import extract_batch_size

from mile_ssl.schedule import Phase, StepPosition

MILE_PHASES = (Phase.TEACHER, Phase.STUDENT)
"""Phases whose name and cycle the bar shows: those of MILe's alternation."""

THROUGHPUT_WINDOW = 50
"""Steps over which images/s is averaged: recent enough to follow a change of speed."""


def step_description(
    completed: int, max_steps: int | None, position: StepPosition | None, cycles: int
) -> str:
    """What the bar shows before the bar itself, e.g. ``step 3/4, teacher phase, cycle 2/2``.

    Args:
        completed: Training steps done so far.
        max_steps: Steps of the whole run (``None``: not known).
        position: Phase and cycle of the latest step (``None``: not known).
        cycles: MILe cycles of the whole run.

    Returns:
        ``step N/M``, followed by the phase and the 1-based cycle for MILe's phases only:
        every step of the other methods is alike.
    """
    text = f"step {completed}" if max_steps is None else f"step {completed}/{max_steps}"
    if position is not None and position.phase in MILE_PHASES:
        text += f", {position.phase.value} phase, cycle {position.cycle + 1}/{cycles}"
    return text


def completed_steps(trainer: L.Trainer, module: L.LightningModule) -> int:
    """Steps done: the fine-tuning module's own counter, else Lightning's global step."""
    return int(getattr(module, "completed_steps", trainer.global_step))


def latest_position(module: L.LightningModule, completed: int) -> StepPosition | None:
    """Phase of the latest step (of the first one before any): the module's schedule says."""
    position = getattr(module, "position", None)
    return position(max(completed - 1, 0)) if callable(position) else None


def run_length(trainer: L.Trainer) -> int | None:
    """Steps of the whole run (``trainer.max_steps``); ``None`` when not counted in steps."""
    return trainer.max_steps if trainer.max_steps > 0 else None


def total_cycles(module: L.LightningModule, max_steps: int | None) -> int:
    """Cycles the whole run holds: one more than the cycle of its last step."""
    position = latest_position(module, max_steps) if max_steps is not None else None
    return position.cycle + 1 if position is not None else 1


def phase_loss(metrics: Mapping[str, Any], position: StepPosition | None) -> float | None:
    """The latest logged loss of ``position``'s phase (``train/<phase>_loss``), if logged yet."""
    if position is None:
        return None
    value = metrics.get(f"train/{position.phase.value}_loss")
    return None if value is None else float(value)


class ImageRate:
    """Images trained per second over the latest steps, time outside training left out.

    Each step is timed from the end of the previous one, so data loading counts; the
    clock restarts after validation and at the start of training, so neither counts.

    Args:
        window: Steps averaged over.
    """

    def __init__(self, window: int = THROUGHPUT_WINDOW) -> None:
        self._steps: deque[tuple[float, int]] = deque(maxlen=window)
        self._since: float | None = None

    def restart(self) -> None:
        """Start timing the next step now."""
        self._since = time.perf_counter()

    def add(self, images: int) -> None:
        """Record a step of ``images`` images ending now."""
        now = time.perf_counter()
        if self._since is not None:
            self._steps.append((now - self._since, images))
        self._since = now

    def per_second(self) -> float | None:
        """Images per second over the window; ``None`` before a step was timed."""
        seconds = sum(duration for duration, _ in self._steps)
        if seconds <= 0:
            return None
        return sum(images for _, images in self._steps) / seconds


def batch_images(batch: Any) -> int:
    """Images in a training batch: its ``image`` entry, else Lightning's batch-size guess."""
    if isinstance(batch, Mapping) and hasattr(batch.get("image"), "shape"):
        return int(batch["image"].shape[0])
    return int(extract_batch_size(batch))


class StepProgressBar(TQDMProgressBar):
    """One bar for the whole run, in steps; see the module docstring.

    images/s counts every rank's images: a rank's rate times the world size (every rank
    trains batches of the same size).

    Args:
        refresh_rate: Redraw every this many steps.
    """

    BAR_FORMAT = "{desc}|{bar}| [{elapsed}<{remaining}{postfix}]"

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self._rate = ImageRate()

    @property
    def train_description(self) -> str:
        """Step, and for MILe phase and cycle, of the latest step (:func:`step_description`)."""
        trainer = self.trainer
        module = trainer.lightning_module
        done = completed_steps(trainer, module)
        max_steps = run_length(trainer)
        position = latest_position(module, done)
        return step_description(done, max_steps, position, total_cycles(module, max_steps))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Open the bar at the step the run starts from (not 0 when resumed)."""
        super().on_train_start(trainer, pl_module)
        done = completed_steps(trainer, pl_module)
        bar = self.train_progress_bar
        bar.reset(total=run_length(trainer))
        bar.initial = bar.n = done
        self._show(trainer, pl_module)
        self._rate.restart()

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        """Nothing: an epoch is no unit of a run, the bar goes on."""

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Time the step; redraw every ``refresh_rate`` steps and at the last one."""
        self._rate.add(batch_images(batch))
        done = completed_steps(trainer, pl_module)
        if self._should_update(done, trainer.max_steps):  # -1 when not counted: never equal
            self._show(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing: the bar was redrawn at the epoch's last step."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Close the validation bar; the time it took is no training time."""
        super().on_validation_end(trainer, pl_module)
        self._rate.restart()

    def get_metrics(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        """The latest step's phase loss and images/s (Lightning shows every logged value)."""
        position = latest_position(pl_module, completed_steps(trainer, pl_module))
        items: dict[str, int | str | float | dict[str, float]] = {}
        loss = phase_loss(trainer.progress_bar_metrics, position)
        if loss is not None:
            items["loss"] = loss
        rate = self._rate.per_second()
        if rate is not None:
            total = rate * trainer.world_size
            # Whole images where there are many; a slow step (a ViT-g on a CPU) keeps one
            # decimal rather than showing 0.
            items["images/s"] = round(total) if total >= 10 else round(total, 1)
        return items

    def _show(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        bar = self.train_progress_bar
        if bar.disable:
            return
        bar.n = completed_steps(trainer, pl_module)
        bar.set_description(self.train_description, refresh=False)
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.refresh()
