"""The Lightning Trainer of a run, from the ``trainer.*`` settings.

Precision, strategy and SyncBatchNorm are resolved against the hardware here, before
any data is read, so that a setting the machine cannot honour fails early; the Trainer
writes checkpoints atomically (:mod:`mile_ssl.runs.checkpoint_io`), and
:class:`~mile_ssl.runs.guard.RunGuard` decides when they are written and turns signals
(Ctrl-C, a scheduler's SIGTERM / SIGUSR1) into a resumable checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.loggers import Logger

from mile_ssl.adapters.reading import LAST_CHECKPOINT_NAME
from mile_ssl.config import TrainerConfig
from mile_ssl.finetune import FineTuneModule
from mile_ssl.runs.checkpoint_io import AtomicCheckpointIO
from mile_ssl.runs.guard import RunGuard, StopCondition, StopSignals
from mile_ssl.runs.layout import CHECKPOINT_FOLDER
from mile_ssl.runs.loggers import build_logger
from mile_ssl.runs.progress import StepProgressBar

log = logging.getLogger(__name__)

LAST_CHECKPOINT = Path(CHECKPOINT_FOLDER) / LAST_CHECKPOINT_NAME
"""Where in the run directory the resumable checkpoint of the latest state is kept."""


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto`` -> ``bf16-mixed`` where the hardware runs bf16 natively, else ``32-true``."""
    if precision != "auto":
        return precision
    use_gpu = accelerator in ("gpu", "cuda") or (
        accelerator == "auto" and torch.cuda.is_available()
    )
    if use_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bf16-mixed" if native_bf16 else "32-true"


def resolve_strategy(strategy: str, module: FineTuneModule) -> str:
    """Let DDP tolerate parameters without gradients when MILe trains two networks.

    Each step of the ``copy`` variant updates either the teacher or the student, so the
    other network's parameters get no gradient in that step, which plain DDP rejects.
    """
    if strategy == "ddp" and module.trains_teacher:
        return "ddp_find_unused_parameters_true"
    return strategy


def build_trainer(
    config: TrainerConfig,
    output_dir: Path,
    strategy: str | None = None,
    callbacks: Sequence[L.Callback] = (),
    logger: Logger | None = None,
    stop_conditions: Sequence[StopCondition] = (),
    signals: StopSignals | None = None,
) -> L.Trainer:
    """A Lightning Trainer writing checkpoints and logs under ``output_dir``.

    Checkpoints are written by :class:`~mile_ssl.runs.guard.RunGuard` alone (Lightning's
    own ``ModelCheckpoint`` is off): ``last.ckpt`` is always the newest state, whatever
    checkpoint a run resumed from, and never gets a ``-v1`` sibling.

    Args:
        config: Trainer settings.
        output_dir: Run directory.
        strategy: Replaces ``config.strategy`` (see :func:`resolve_strategy`).
        callbacks: Lightning callbacks to add to the checkpointing one.
        logger: The run's logger (default: :func:`build_logger`'s).
        stop_conditions: Reasons to stop the run merged into the guard's decision.
        signals: The run's signal recorder, if it listens from before training.
    """
    logger = logger or build_logger(config, output_dir)
    guard = RunGuard(
        output_dir / CHECKPOINT_FOLDER,
        every_minutes=config.checkpoint_every_minutes,
        every_n_steps=config.checkpoint_every_n_steps,
        decide_every_n_steps=config.log_every_n_steps,
        conditions=stop_conditions,
        signals=signals,
    )
    # Steps, MILe's phase and cycle; Lightning's own bar counts epochs.
    progress = [StepProgressBar()] if config.progress_bar else []
    plugins: list[Any] = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        # The guard saves at the end of a step and requeues; Lightning's own handler
        # would save from inside the signal handler, mid-step.
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return L.Trainer(
        max_steps=config.max_steps,
        max_epochs=-1,
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=strategy or config.strategy,
        precision=resolve_precision(config.precision, config.accelerator),  # type: ignore[arg-type]
        val_check_interval=config.val_every_n_steps or config.max_steps,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=config.log_every_n_steps,
        logger=logger,
        # Last, so that it decides on what the other callbacks recorded in the same step
        # (the unreadable images of its batch).
        callbacks=[*progress, *callbacks, guard],
        enable_checkpointing=False,
        plugins=plugins,
        enable_progress_bar=config.progress_bar,
        enable_model_summary=False,
        deterministic=config.deterministic,
        sync_batchnorm=config.sync_batchnorm,
        use_distributed_sampler=False,
        default_root_dir=output_dir,
    )


def _probe_trainer(config: TrainerConfig) -> L.Trainer:
    """A Trainer that only resolves the accelerator, devices and strategy settings."""
    return L.Trainer(
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def world_size(config: TrainerConfig) -> int:
    """Number of processes the Trainer settings start (devices x nodes, as Lightning sees it)."""
    return _probe_trainer(config).world_size


def resolve_sync_batchnorm(config: TrainerConfig) -> TrainerConfig:
    """Check ``trainer.sync_batchnorm`` against the hardware before any data is read.

    torch's SyncBatchNorm runs on GPUs only. With one process there is nothing to
    synchronise, so on a CPU it is switched off (solo-learn recipes set it for GPUs);
    several CPU processes cannot honour it, which is an error naming the key.

    Raises:
        ValueError: For ``sync_batchnorm`` with several processes on CPUs.
    """
    if not config.sync_batchnorm:
        return config
    probe = _probe_trainer(config)
    if not isinstance(probe.accelerator, CPUAccelerator):
        return config
    if probe.world_size > 1:
        raise ValueError(
            "trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm does not run on "
            f"CPUs) and this run starts {probe.world_size} CPU processes; set "
            "trainer.sync_batchnorm=false (sync_batchnorm=False in a solo-learn recipe)"
        )
    log.info("trainer.sync_batchnorm ignored: one CPU process has nothing to synchronise")
    return replace(config, sync_batchnorm=False)
