"""Loader settings: how many worker processes, pinned memory, prefetching."""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset, Sampler

from mile_ssl.config import DataConfig
from mile_ssl.data.sampling import StepDataLoader

log = logging.getLogger(__name__)

PREFETCH_BATCHES = 4
"""Batches each worker prepares ahead of the training step."""


def usable_cpu_count() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a job's allocation)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def choose_num_workers(config: DataConfig, devices_on_node: int) -> int:
    """``data.num_workers``, or when it is null the number the machine affords.

    The usable cores are shared among the devices (processes) of this node, one per
    process kept for its main loop. The digit grids live in memory: they need none.

    Args:
        config: Data settings.
        devices_on_node: Training processes on this node.
    """
    if config.num_workers is not None:
        return config.num_workers
    if config.name == "digits":
        return 0
    return max(0, usable_cpu_count() // max(1, devices_on_node) - 1)


def log_num_workers(config: DataConfig, workers: int, devices_on_node: int) -> None:
    """Say how many workers the machine was given (only when chosen, not set)."""
    if config.num_workers is None:
        log.info(
            "data.num_workers=null: %d loader workers per process (%d usable CPU cores, "
            "%d process(es) on this node, one core each for the main loop)",
            workers,
            usable_cpu_count(),
            devices_on_node,
        )


def local_devices() -> int:
    """Training processes this node runs when no trainer says: its CUDA devices, or one."""
    return max(1, torch.cuda.device_count())


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
"""Signals that end a run at the end of a step with a resumable checkpoint (the run guard's),
which a scheduler or terminal sends to every process of a job."""


def leave_stop_signals_to_training(worker_id: int) -> None:
    """``worker_init_fn``: loader processes ignore stop signals; training handles them.

    SLURM signals every process of a job step and a terminal's Ctrl-C every process of
    its group. A loader process ended by such a signal would make the next batch fail
    ("DataLoader worker exited unexpectedly") before the run could save; the training
    process instead finishes its step, saves and shuts its loaders down. Seeds the
    worker as Lightning's own ``worker_init_fn`` would (``seed_everything(workers=True)``).
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        pl_worker_init_function(worker_id)


def data_loader(
    config: DataConfig,
    dataset: Dataset[Any],
    *,
    batch_sampler: Sampler[Any] | None = None,
    sampler: Sampler[int] | None = None,
    workers: int | None = None,
) -> DataLoader[Any]:
    """A loader with ``workers`` processes, pinned memory on CUDA and prefetching.

    ``workers`` defaults to :func:`choose_num_workers` for this node's devices.

    With a ``batch_sampler`` it is a resumable :class:`StepDataLoader` (training);
    otherwise it serves ``data.eval_batch_size`` (default ``data.batch_size``) images
    per batch in order (evaluation). Workers persist between passes, so a new pass
    does not restart them.
    """
    if workers is None:
        workers = choose_num_workers(config, local_devices())
    loader_class = DataLoader if batch_sampler is None else StepDataLoader
    return loader_class(
        dataset,
        batch_size=(config.eval_batch_size or config.batch_size) if batch_sampler is None else 1,
        sampler=sampler,
        batch_sampler=batch_sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        prefetch_factor=PREFETCH_BATCHES if workers > 0 else None,
        worker_init_fn=leave_stop_signals_to_training if workers > 0 else None,
    )
