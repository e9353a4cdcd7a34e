"""The loader factory: ``data.backend`` chooses the decoder; worker processes, pinned memory.

Training, validation and ``mile-ssl eval`` all get their loaders here, so that one
setting, ``data.backend``, decides for every one of them whether PIL/torchvision or NVIDIA
DALI decodes the images.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset, Sampler

from mile_ssl.config import DataConfig
from mile_ssl.data.dali import DaliLoader, validation_batches
from mile_ssl.data.dali_items import DaliItems
from mile_ssl.data.dali_pipeline import DaliPipelines
from mile_ssl.data.sampling import SemiSupervisedBatchSampler, StepBatchSampler, StepDataLoader
from mile_ssl.data.substitution import SubstitutingImages
from mile_ssl.networks.preprocessing import Preprocessing

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


def dali_loader(
    config: DataConfig,
    preprocessing: Preprocessing,
    datasets: Sequence[Dataset[Any]],
    batches: StepBatchSampler | SemiSupervisedBatchSampler | list[list[int]],
    max_batch: int,
    *,
    workers: int,
    device: torch.device | None = None,
) -> DaliLoader:
    """A DALI loader of ``datasets`` (image files), decoding on ``device`` if it is a GPU.

    Without a ``device``, the current CUDA device if there is one, else the CPU. A step
    sampler makes it a training loader (random windows), a list of batches a validation
    loader (resize and centre crop).
    """
    if device is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    device_id = device.index if device is not None and device.type == "cuda" else None
    pipelines = DaliPipelines(
        config.image_size, preprocessing, max_batch, threads=workers + 1, device_id=device_id
    )
    files = [dataset for dataset in datasets if isinstance(dataset, SubstitutingImages)]
    training = not isinstance(batches, list)
    log.info(
        "data.backend=dali: %s images decoded by NVIDIA DALI on %s",
        "training" if training else "validation",
        f"cuda:{device_id}" if device_id is not None else "the CPU",
    )
    return DaliLoader(DaliItems(files), pipelines, batches, training=training)


def validation_loader(
    config: DataConfig,
    dataset: Dataset[Any],
    preprocessing: Preprocessing,
    *,
    sampler: Sampler[int] | None = None,
    workers: int | None = None,
    device: torch.device | None = None,
) -> Iterable[dict[str, torch.Tensor]]:
    """The batches of ``dataset`` in order, decoded by the backend ``data.backend`` names.

    Args:
        config: Data settings (backend, batch sizes, workers).
        dataset: The validation images, with the evaluation view of ``preprocessing``.
        preprocessing: The normalisation DALI applies (the dataset's own view applies it
            for the torchvision backend).
        sampler: The items of this process (a rank's shard), default every item.
        workers: Loader processes (torchvision) or DALI threads less one; default
            :func:`choose_num_workers` for this node's devices.
        device: Where DALI decodes (see :func:`dali_loader`).
    """
    if workers is None:
        workers = choose_num_workers(config, local_devices())
    if config.backend != "dali":
        return data_loader(config, dataset, sampler=sampler, workers=workers)
    batch_size = config.eval_batch_size or config.batch_size
    indices = list(sampler) if sampler is not None else None
    batches = validation_batches(len(dataset), batch_size, indices)  # type: ignore[arg-type]
    return dali_loader(
        config, preprocessing, [dataset], batches, batch_size, workers=workers, device=device
    )
