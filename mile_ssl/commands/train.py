"""One fine-tuning run: checkpoint -> adapter -> backbone -> MILe module -> metrics.

This is the Python entry point behind ``mile-ssl train``; the demo and the benchmarks
call it with composed configs, so every route trains the same way.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L
from omegaconf import OmegaConf
from torch import nn

from mile_ssl.adapters import LoadedBackbone, load_backbone
from mile_ssl.atomic_files import remove_stale_temporaries, write_text_atomically
from mile_ssl.config import (
    TEACHER_METHODS,
    BackboneConfig,
    CheckpointConfig,
    TrainConfig,
    check_warmup,
)
from mile_ssl.config.devices import check_accelerator
from mile_ssl.data.datamodule import MILeDataModule, UnlabeledStream
from mile_ssl.data.sources import network_input_size
from mile_ssl.finetune import FineTuneModule, MILeModule, build_module
from mile_ssl.finetune.validation import BAD_VAL_IMAGES_FILE, UnreadableValidationImages
from mile_ssl.networks.backbones import BackboneSpec, build_backbone, with_drop_path
from mile_ssl.networks.preprocessing import Preprocessing
from mile_ssl.networks.vit import vit_spec_at
from mile_ssl.public_checkpoints import get_public_checkpoint, resolve_public_checkpoint
from mile_ssl.runs.bad_images import BAD_IMAGES_FILE, BadImageMonitor, read_bad_images
from mile_ssl.runs.failed_start import MarkStarted
from mile_ssl.runs.finished_run import RESOLVED_CONFIG_FILE, read_finished_run
from mile_ssl.runs.guard import StopSignals, listening_for_stop_signals
from mile_ssl.runs.layout import run_folder
from mile_ssl.runs.lock import first_process, holding_run_folder
from mile_ssl.runs.loggers import build_logger
from mile_ssl.runs.report import plot_pseudo_label_history, write_json
from mile_ssl.runs.resume import (
    FIXED_DATA_KEYS,
    RunIdentity,
    carry_tensorboard_events,
    read_resume_point,
)
from mile_ssl.runs.trainer import (
    LAST_CHECKPOINT,
    build_trainer,
    resolve_strategy,
    resolve_sync_batchnorm,
    world_size,
)
from mile_ssl.schedule import unlabeled_steps

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PSEUDO_LABELS_FILE = "pseudo_labels.json"
PSEUDO_LABELS_PLOT = "pseudo_labels.png"
SCRATCH_BACKBONE = "tiny_resnet"
"""Architecture of a ``checkpoint=scratch`` run that names no backbone."""


@dataclass
class RunResult:
    """What a finished run produced.

    Attributes:
        metrics: Final validation metrics of the student.
        output_dir: Run directory (config, checkpoints, logs, metrics).
        last_checkpoint: Lightning checkpoint of the final state (resumable).
    """

    metrics: dict[str, float]
    output_dir: Path
    last_checkpoint: Path


def initial_backbone(
    backbone: BackboneConfig, checkpoint: CheckpointConfig, image_size: int | None = None
) -> LoadedBackbone:
    """The backbone fine-tuning starts from: loaded through an adapter, or random.

    With a checkpoint and no backbone named, the checkpoint decides the architecture.
    Random initialisation happens only when asked for (``checkpoint=scratch``); then a
    backbone left unset is the small ``tiny_resnet`` of the digit grids. A ViT is built
    for ``image_size`` (the network's input size), its position embedding resampled, and
    a timm backbone with ``backbone.drop_path_rate`` (:func:`with_drop_path`).
    """
    spec = BackboneSpec(backbone.name, dict(backbone.kwargs)) if backbone.name else None
    if checkpoint.init == "checkpoint":
        path, adapter = checkpoint.path, checkpoint.adapter
        if checkpoint.name is not None:
            public = get_public_checkpoint(checkpoint.name)
            path = str(resolve_public_checkpoint(checkpoint.name))
            adapter = public.adapter if adapter == "auto" else adapter
            # The registry knows the architecture of files that do not state it.
            spec = spec or BackboneSpec(public.architecture)
        if path is None:
            raise ValueError(
                "config key 'checkpoint.path' must name a checkpoint file (or "
                "'checkpoint.name' a public checkpoint: mile-ssl checkpoints lists them); to "
                "train from random weights select checkpoint=scratch"
            )
        loaded = load_backbone(
            path,
            adapter=adapter,
            backbone=spec,
            projection_layers=checkpoint.projection_layers,
            image_size=image_size,
        )
        if backbone.drop_path_rate is None:
            return loaded
        # Rebuilt with the checkpoint's weights: the file's architecture is known only now.
        spec = with_drop_path(loaded.spec, backbone.drop_path_rate)
        module, _ = build_backbone(spec)
        module.load_state_dict(loaded.module.state_dict())
        return replace(loaded, module=module, spec=spec)
    if spec is None:
        spec = BackboneSpec(SCRATCH_BACKBONE)
    if image_size is not None:
        spec = vit_spec_at(spec, image_size)
    spec = with_drop_path(spec, backbone.drop_path_rate)
    module, feature_dim = build_backbone(spec)
    log.warning("training %s from random initialisation (checkpoint=scratch)", spec.name)
    return LoadedBackbone(
        module=module,
        feature_dim=feature_dim,
        spec=spec,
        preprocessing=Preprocessing(),
        adapter="scratch",
        source=None,
    )


def resolve_epochs(config: TrainConfig, labelled_images: int) -> TrainConfig:
    """Turn ``trainer.max_epochs`` / ``optim.warmup_epochs`` into step counts.

    Everything downstream (the MILe cycle, the LR schedule, resuming) counts steps;
    epochs are a user-facing unit only.
    """
    if config.trainer.max_epochs is None and config.optim.warmup_epochs is None:
        return config
    global_batch = config.data.batch_size * world_size(config.trainer)
    steps_per_epoch = max(1, labelled_images // global_batch)
    trainer, optim = config.trainer, config.optim
    if trainer.max_epochs is not None:
        trainer = replace(
            trainer, max_steps=max(1, math.ceil(trainer.max_epochs * steps_per_epoch))
        )
    if optim.warmup_epochs is not None:
        optim = replace(optim, warmup_steps=math.ceil(optim.warmup_epochs * steps_per_epoch))
    check_warmup(optim.warmup_steps, trainer.max_steps)
    log.info(
        "%d labelled images / global batch %d = %d steps per epoch: max_steps=%d, warmup_steps=%d",
        labelled_images,
        global_batch,
        steps_per_epoch,
        trainer.max_steps,
        optim.warmup_steps,
    )
    return replace(config, trainer=trainer, optim=optim)


def unlabeled_stream(config: TrainConfig) -> UnlabeledStream | None:
    """Which steps take unlabeled images, if any (:func:`~mile_ssl.schedule.unlabeled_steps`).

    (MILe's student phase in semi-supervised mode, every step of the teacher baselines.)
    """
    uses_unlabeled = unlabeled_steps(config.method, config.mile)
    if uses_unlabeled is None:
        return None
    return UnlabeledStream(config.data.unlabeled_ratio, uses_unlabeled)


def load_fixed_teacher(config: TrainConfig, student: LoadedBackbone) -> nn.Module | None:
    """The fine-tuned network ``distill`` / ``self_train`` learn from, or ``None``.

    Raises:
        ValueError: If the checkpoint is missing, or expects another input normalisation
            than the student's backbone (the two would see different images).
    """
    if config.method.name not in TEACHER_METHODS:
        return None
    path = config.distill.teacher_checkpoint
    if path is None:
        raise ValueError(
            f"method={config.method.name} needs config key 'distill.teacher_checkpoint' "
            "(last.ckpt of a fine-tuning run)"
        )
    teacher = read_finished_run(path, exact_file=True).build_module()
    expected = student.preprocessing.to_dict()
    if teacher.metadata["preprocessing"] != expected:
        raise ValueError(
            f"teacher {path} expects preprocessing {teacher.metadata['preprocessing']}, "
            f"the student's backbone {expected}"
        )
    return teacher.student


def run_training(
    config: TrainConfig, output_dir: str | Path, callbacks: Sequence[L.Callback] = ()
) -> RunResult:
    """Fine-tune as ``config`` says and write the run directory.

    The run holds the folder's lock (:mod:`mile_ssl.runs.lock`) while it runs, so that a
    second run into the same folder stops at once; a folder that already holds
    ``checkpoints/last.ckpt`` is resumed from it (a requeued cluster job runs the same
    command again), unless ``trainer.resume_from`` names another checkpoint.

    Args:
        config: Validated run configuration.
        output_dir: Directory for the resolved config, checkpoints, logs and metrics.
        callbacks: Extra Lightning callbacks (e.g. early stopping, custom logging).

    Returns:
        Final metrics and where the run was written.
    """
    check_accelerator(config.trainer)
    output_dir = Path(output_dir)
    # Only the first process takes the lock: the others of a multi-process run write
    # into the same folder on its behalf.
    with listening_for_stop_signals() as signals:
        if not first_process():
            return _run_locked(config, output_dir, callbacks, signals)
        with holding_run_folder(output_dir):
            for stale in remove_stale_temporaries(output_dir):
                log.warning("removed %s, left by a save that was killed", stale)
            return _run_locked(config, output_dir, callbacks, signals)


def resume_point_in_folder(config: TrainConfig, output_dir: Path) -> TrainConfig:
    """Resume from the run folder's own ``last.ckpt`` when no other checkpoint is named."""
    found = output_dir / LAST_CHECKPOINT
    if config.trainer.resume_from is not None or not found.is_file():
        return config
    log.warning("resuming from %s, found in the run folder", found)
    return replace(config, trainer=replace(config.trainer, resume_from=str(found)))


def known_bad_images(config: TrainConfig) -> list[str]:
    """Images an earlier run found unreadable: they keep their place even if since deleted."""
    if not config.trainer.resume_from:
        return []
    return read_bad_images(run_folder(config.trainer.resume_from))


def run_identity(
    config: TrainConfig, datamodule: MILeDataModule, loaded: LoadedBackbone
) -> RunIdentity:
    """What a resume must find unchanged: the data, the labelled images and the backbone."""
    return RunIdentity(
        data=datamodule.fingerprint(),
        labelled_digest=datamodule.labelled_digest,
        backbone={"name": loaded.spec.name, "kwargs": dict(loaded.spec.kwargs)},
        batch_size=config.data.batch_size,
        world_size=world_size(config.trainer),
    )


def fine_tuning_module(
    config: TrainConfig,
    loaded: LoadedBackbone,
    datamodule: MILeDataModule,
    identity: RunIdentity,
    fixed_teacher: nn.Module | None,
) -> FineTuneModule:
    """The method's module around ``loaded``, with what evaluation and export rebuild it from."""
    return build_module(
        loaded.module,
        loaded.feature_dim,
        datamodule.num_classes,
        method=config.method,
        mile=config.mile,
        optim=config.optim,
        channels_last=config.backbone.channels_last,
        fixed_teacher=fixed_teacher,
        distill=config.distill,
        metadata={
            "backbone": identity.backbone,
            "preprocessing": loaded.preprocessing.to_dict(),
            "class_names": list(datamodule.class_names),
            "data_stream": {key: getattr(config.data, key) for key in FIXED_DATA_KEYS},
            **identity.metadata(),
        },
    )


def write_run_reports(
    output_dir: Path,
    module: FineTuneModule,
    datamodule: MILeDataModule,
    loaded: LoadedBackbone,
    bad_images: int,
) -> None:
    """``metrics.json`` and, for MILe, the pseudo-label statistics of each cycle."""
    payload = {
        "metrics": dict(module.validation_metrics),
        "steps": module.completed_steps,
        "labelled_images": len(datamodule.train_indices),
        "labelled_sha256": datamodule.labelled_digest,
        "bad_images": bad_images,
        "backbone": loaded.spec.name,
        "adapter": loaded.adapter,
        "checkpoint": str(loaded.source) if loaded.source else None,
    }
    write_json(output_dir / METRICS_FILE, payload)
    if isinstance(module, MILeModule) and module.pseudo_label_history:
        write_json(output_dir / PSEUDO_LABELS_FILE, module.pseudo_label_history)
        plot_pseudo_label_history(output_dir / PSEUDO_LABELS_PLOT, module.pseudo_label_history)


def _run_locked(
    config: TrainConfig,
    output_dir: Path,
    callbacks: Sequence[L.Callback],
    signals: StopSignals,
) -> RunResult:
    named_checkpoint = config.trainer.resume_from
    config = resume_point_in_folder(config, output_dir)
    found_in_run_folder = named_checkpoint is None and config.trainer.resume_from is not None
    config = replace(config, trainer=resolve_sync_batchnorm(config.trainer))
    L.seed_everything(config.seed, workers=True, verbose=False)
    loaded = initial_backbone(config.backbone, config.checkpoint, network_input_size(config.data))
    unlabeled = unlabeled_stream(config)
    fixed_teacher = load_fixed_teacher(config, loaded)
    known_bad = known_bad_images(config)
    datamodule = MILeDataModule(
        config.data,
        loaded.preprocessing,
        unlabeled,
        strong_student_view=config.data.strong_student_view,
        known_bad_images=known_bad,
    )
    config = resolve_epochs(config, len(datamodule.train_indices))
    identity = run_identity(config, datamodule, loaded)
    # Checked before anything is written: a failed resume leaves the run folder as it was.
    resume = (
        read_resume_point(config, identity, found_in_run_folder)
        if config.trainer.resume_from
        else None
    )
    module = fine_tuning_module(config, loaded, datamodule, identity, fixed_teacher)
    if config.trainer.compile:
        module.compile_networks()
    logger = build_logger(config.trainer, output_dir, resume.previous_rows if resume else ())
    bad_images = BadImageMonitor(
        datamodule.image_path,
        datamodule.num_train_items,
        config.data.max_bad_fraction,
        output_dir / BAD_IMAGES_FILE,
        known_bad,
    )
    trainer = build_trainer(
        config.trainer,
        output_dir,
        resolve_strategy(config.trainer.strategy, module),
        [
            bad_images,
            UnreadableValidationImages(datamodule.splits.val, output_dir / BAD_VAL_IMAGES_FILE),
            MarkStarted(output_dir),
            *callbacks,
        ],
        logger,
        stop_conditions=[bad_images],
        signals=signals,
    )
    if resume is not None and config.trainer.logger == "tensorboard" and trainer.is_global_zero:
        carry_tensorboard_events(resume.previous_logs, output_dir / "logs")
    if trainer.is_global_zero:
        # The config as trained, epochs resolved to steps; written before training so
        # that an interrupted run still records it.
        write_text_atomically(
            output_dir / RESOLVED_CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.structured(config))
        )
    trainer.fit(module, datamodule=datamodule, ckpt_path=config.trainer.resume_from)
    last_checkpoint = output_dir / LAST_CHECKPOINT
    trainer.save_checkpoint(last_checkpoint, weights_only=False)
    metrics = dict(module.validation_metrics)
    if trainer.is_global_zero:
        write_run_reports(output_dir, module, datamodule, loaded, bad_images.count)
    return RunResult(
        metrics=metrics,
        output_dir=output_dir,
        last_checkpoint=last_checkpoint,
    )
