"""When a run saves and when it stops: signals, periodic checkpoints, the final state.

A cluster ends jobs with a signal: SLURM sends SIGTERM before killing a preempted or
timed-out job (and, with ``sbatch --signal=USR1@90``, SIGUSR1 ahead of the time limit);
a user presses Ctrl-C (SIGINT). Lightning's own handling saves nothing and exits 0 on
SIGTERM, and a checkpoint written from inside a signal handler could catch the weights
half updated. Here a signal only sets a flag; the decision is taken at the end of a
step, by every rank together, and the run then saves ``checkpoints/last.ckpt`` and
stops with :class:`RunInterruptedError` (the command line prints the resume command and
exits 130 for Ctrl-C, 143 for the scheduler's signals). Under SLURM, SIGUSR1 (the
requeue signal of Lightning's ``SLURMEnvironment``) also asks ``scontrol`` to requeue
the job; the requeued job finds ``last.ckpt`` in its run folder and goes on.

The same end-of-step decision saves ``last.ckpt`` every ``trainer.checkpoint_every_minutes``
of wall time, every ``trainer.checkpoint_every_n_steps`` steps (kept as ``step<N>.ckpt``
too) and after the last step, before the final validation, so that a validation failure
never discards the training. It also carries the bad-image limit
(:class:`~mile_ssl.runs.bad_images.BadImageMonitor`), so that a multi-process run pays one
small all-reduce per decision for all of them. With one process the decision is taken
every step (reading a few flags); with several, at the logging steps, at the steps that
save anyway, and at the last step, so that no other step waits for the others.
"""

from __future__ import annotations

import logging
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment

from mile_ssl.adapters.reading import LAST_CHECKPOINT_NAME
from mile_ssl.atomic_files import link_atomically
from mile_ssl.data.loaders import STOP_SIGNALS
from mile_ssl.runs.layout import slurm_job_id

log = logging.getLogger(__name__)


# Positions in the decision vector every rank contributes to (merged by maximum).
_SIGNAL, _TIME_DUE, _TOO_MANY_BAD = range(3)


class RunInterruptedError(Exception):
    """A signal stopped training; ``checkpoint`` resumes it.

    Attributes:
        checkpoint: The resumable checkpoint written at the stop.
        step: Optimiser steps it holds.
        signal_number: The signal that asked for the stop.
        requeued: Whether the SLURM job was requeued.
    """

    def __init__(
        self, checkpoint: Path, step: int, signal_number: int, requeued: bool = False
    ) -> None:
        name = signal.Signals(signal_number).name
        what = "interrupted" if signal_number == signal.SIGINT else f"preempted ({name})"
        super().__init__(f"{what} after step {step}; resumable checkpoint: {checkpoint}")
        self.checkpoint = checkpoint
        self.step = step
        self.signal_number = signal_number
        self.requeued = requeued

    @property
    def preempted(self) -> bool:
        """Whether a scheduler's signal (not Ctrl-C) stopped the run."""
        return self.signal_number != signal.SIGINT

    def resume_message(self, overrides: Sequence[str], run_dir: Path) -> str:
        """What happened and the command that resumes into the same run folder.

        Args:
            overrides: The stopped run's ``mile-ssl train`` overrides.
            run_dir: Its run folder.
        """
        kept = [
            item
            for item in overrides
            if not item.startswith(("trainer.resume_from=", "hydra.run.dir="))
        ]
        command = [*kept, f"trainer.resume_from={self.checkpoint}", f"hydra.run.dir={run_dir}"]
        requeued = " The SLURM job was requeued and resumes by itself." if self.requeued else ""
        return (
            f"mile-ssl train: {self}.{requeued} Resume with:\n"
            f"  mile-ssl train {shlex.join(command)}"
        )


class StopCondition(Protocol):
    """A reason to stop a run that one rank can see (e.g. too many unreadable images)."""

    def exceeded(self) -> bool:
        """Whether this rank has seen enough to stop the run."""
        ...

    def error(self) -> Exception:
        """The error that stops the run, naming the cause and the fix."""
        ...


class StopSignals:
    """The first stop signal of this process, recorded from the start of a run.

    Listening begins before the run reads its data, so that a scheduler's signal during
    start-up is not lost: training then saves after its first step and stops. A second
    Ctrl-C interrupts at once, as usual.
    """

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict[int, Any] = {}

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received = self.received or signum
        if signum == signal.SIGINT:
            previous = self._previous.get(signum)
            fallback = signal.default_int_handler
            signal.signal(signal.SIGINT, previous if callable(previous) else fallback)

    def listen(self) -> None:
        """Install the handlers (again: Lightning installs its own SIGTERM handler)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            if signum == signal.SIGINT and signal.getsignal(signum) == signal.SIG_IGN:
                continue  # started with Ctrl-C ignored (nohup, a background job): keep it so
            previous = signal.signal(signum, self._record)
            if previous != self._record and signum not in self._previous:
                self._previous[signum] = previous

    def restore(self) -> None:
        """Give the signals back to whoever had them before :meth:`listen`."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}


@contextmanager
def listening_for_stop_signals() -> Iterator[StopSignals]:
    """Record stop signals for the block (a run), then restore the earlier handlers."""
    signals = StopSignals()
    signals.listen()
    try:
        yield signals
    finally:
        signals.restore()


class RunGuard(L.Callback):
    """Save and stop at the end of a step, on signals, intervals and the last step.

    Args:
        checkpoint_dir: The run's ``checkpoints`` folder.
        every_minutes: Save ``last.ckpt`` after this much wall time since the last save
            (``None``: never by time).
        every_n_steps: Also keep ``step<N>.ckpt`` every N steps (``None``: never).
        decide_every_n_steps: With several processes, the interval of the joint decision
            (the logging interval); other steps take no collective.
        conditions: Further reasons to stop, merged into the same decision.
        signals: The run's signal recorder (default: one that listens from training on).
    """

    def __init__(
        self,
        checkpoint_dir: Path,
        every_minutes: float | None = None,
        every_n_steps: int | None = None,
        decide_every_n_steps: int = 1,
        conditions: Sequence[StopCondition] = (),
        signals: StopSignals | None = None,
    ) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.every_seconds = None if every_minutes is None else 60.0 * every_minutes
        self.every_n_steps = every_n_steps
        self.decide_every_n_steps = max(1, decide_every_n_steps)
        self.conditions = list(conditions)
        self._own_signals = signals is None
        self.signals = signals or StopSignals()
        self._last_save = time.monotonic()

    @property
    def last_checkpoint(self) -> Path:
        """The newest state of the run: ``checkpoints/last.ckpt``."""
        return self.checkpoint_dir / LAST_CHECKPOINT_NAME

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Take the stop signals back from the handler Lightning installed for SIGTERM."""
        self._last_save = time.monotonic()
        self.signals.listen()
        # Lightning's handler may have seen a SIGTERM since; the recorder has it too, and
        # Lightning would otherwise end the run with status 0 and no checkpoint.
        trainer._signal_connector.received_sigterm = False
        epoch_loop = trainer.fit_loop.epoch_loop
        if trainer.world_size > 1 and hasattr(epoch_loop, "_broadcast_sigterm_tensor"):
            # Lightning 2.6 broadcasts its SIGTERM flag before every step; the flag is
            # never set with the handlers above, and the decision below covers SIGTERM.
            epoch_loop._broadcast_sigterm_tensor = lambda: None  # type: ignore[method-assign]

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Take the joint decision where one is due, then save and stop as it says."""
        step = trainer.global_step
        last_step = trainer.max_steps is not None and step >= trainer.max_steps
        keep_step = bool(self.every_n_steps) and step % self.every_n_steps == 0  # type: ignore[operator]
        if not (
            trainer.world_size == 1
            or last_step
            or keep_step
            or step % self.decide_every_n_steps == 0
        ):
            return
        decision = self._decide(trainer)
        if decision[_TOO_MANY_BAD]:
            self._save(trainer, self.last_checkpoint)
            seen_here = [condition for condition in self.conditions if condition.exceeded()]
            raise seen_here[0].error() if seen_here else _seen_elsewhere()
        if decision[_SIGNAL]:
            signum = int(decision[_SIGNAL])
            self._save(trainer, self.last_checkpoint)
            requeued = signum == signal.SIGUSR1 and self._requeue(trainer)
            raise RunInterruptedError(self.last_checkpoint, step, signum, requeued)
        if keep_step:
            self._save(trainer, self.checkpoint_dir / f"step{step}.ckpt", also_last=True)
        elif last_step or decision[_TIME_DUE]:
            self._save(trainer, self.last_checkpoint)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Give the signals back, if this guard installed the recorder itself."""
        if self._own_signals:
            self.signals.restore()

    def _decide(self, trainer: L.Trainer) -> list[int]:
        """This rank's flags, merged with every other rank's by one all-reduce (maximum)."""
        time_due = (
            self.every_seconds is not None
            and time.monotonic() - self._last_save >= self.every_seconds
        )
        local = [
            self.signals.received,
            int(time_due),
            int(any(condition.exceeded() for condition in self.conditions)),
        ]
        if trainer.world_size == 1 or not torch.distributed.is_initialized():
            return local
        merged = torch.tensor(local, dtype=torch.int64, device=trainer.strategy.root_device)
        torch.distributed.all_reduce(merged, op=torch.distributed.ReduceOp.MAX)
        return [int(value) for value in merged.tolist()]

    def _save(self, trainer: L.Trainer, path: Path, also_last: bool = False) -> None:
        """Save on every rank's behalf; ``also_last`` makes ``last.ckpt`` the same file."""
        trainer.save_checkpoint(path)
        if also_last and trainer.is_global_zero:
            link_atomically(path, self.last_checkpoint)
        self._last_save = time.monotonic()

    def _requeue(self, trainer: L.Trainer) -> bool:
        """Under SLURM, ask it to requeue this job (rank 0 only); whether it agreed."""
        job = slurm_job_id() if SLURMEnvironment.detect() else None
        if job is None or not trainer.is_global_zero:
            return job is not None
        try:
            result = subprocess.run(
                ["scontrol", "requeue", job], capture_output=True, text=True, check=False
            )
        except FileNotFoundError:
            log.warning("cannot requeue SLURM job %s: scontrol is not on the PATH", job)
            return False
        if result.returncode != 0:
            log.warning("scontrol requeue %s failed: %s", job, result.stderr.strip())
            return False
        log.warning("requeued SLURM job %s; it resumes from %s", job, self.last_checkpoint)
        return True


def _seen_elsewhere() -> Exception:
    return ValueError(
        "another process of this run found too many unreadable training images; its log names them"
    )
