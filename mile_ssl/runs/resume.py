"""Continuing a run from its checkpoint: checked before anything is written, logs kept.

A resume reads the checkpoint first, so that an unreadable file or a run of another
method fails before the run directory is touched. Settings that only steer the
optimiser (``optim.*``, ``trainer.max_steps``) may change on resume: they are applied
from the resumed step on and each change is logged. Settings that define what was
learned so far (the config sections the method's checkpoints store, ``method.*`` and
for MILe ``mile.*``, and the labelled images) cannot change; the error names the key.
The log rows written before the checkpoint's step are carried into the new run's
``logs/metrics.csv``, so that a resumed run's log reads as one run.
"""

from __future__ import annotations

import csv
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mile_ssl.config import TrainConfig
from mile_ssl.config.training import optimizer_layout
from mile_ssl.finetune import module_class
from mile_ssl.finetune.settings import changed_on_resume
from mile_ssl.runs.finished_run import read_finished_run
from mile_ssl.runs.layout import run_folder

log = logging.getLogger(__name__)

METRICS_CSV = Path("logs") / "metrics.csv"

FIXED_DATA_KEYS = ("unlabeled_ratio", "strong_student_view")
"""``data.*`` keys that shape every training batch: a resume must keep them too."""


@dataclass
class RunIdentity:
    """What this run trains on and with, compared with what a checkpoint recorded.

    Attributes:
        data: The training data's fingerprint (:meth:`MILeDataModule.fingerprint`).
        labelled_digest: SHA-256 of the labelled indices (checkpoints older than the
            fingerprint record only this).
        backbone: The architecture this run builds (``name`` and builder ``kwargs``).
        batch_size: Images per device and step.
        world_size: Processes (devices x nodes).
    """

    data: dict[str, Any]
    labelled_digest: str
    backbone: dict[str, Any]
    batch_size: int
    world_size: int

    def metadata(self) -> dict[str, Any]:
        """The entries a checkpoint stores for :func:`check_identity`."""
        return {
            "data_fingerprint": self.data,
            "labelled_sha256": self.labelled_digest,
            "batch": {"batch_size": self.batch_size, "world_size": self.world_size},
        }


@dataclass
class ResumePoint:
    """What a resumed run continues from.

    Attributes:
        checkpoint: The checkpoint file.
        step: Optimiser steps taken before it was written.
        changes: ``(key, checkpoint value, this run's value)`` of the settings applied
            anew from ``step`` on.
        previous_rows: Rows of the earlier run's ``logs/metrics.csv`` before ``step``.
        previous_logs: The earlier run's ``logs`` folder.
    """

    checkpoint: Path
    step: int
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)
    previous_rows: list[dict[str, Any]] = field(default_factory=list)
    previous_logs: Path | None = None


def read_resume_point(
    config: TrainConfig, identity: RunIdentity | None = None, found_in_run_folder: bool = False
) -> ResumePoint:
    """Check ``trainer.resume_from`` against ``config`` and collect what the resume carries.

    ``data.batch_size`` and the number of devices may change (a preempted job often
    comes back on another number of GPUs): the global batch, and so the trajectory,
    changes with them, which is logged like the other changes.

    Args:
        config: This run's configuration (``trainer.resume_from`` set).
        identity: This run's data and network, compared with the checkpoint's.
        found_in_run_folder: The checkpoint was found in the run folder, not named by
            the user (said in the message of a finished run).

    Raises:
        ValueError: If the file is not a mile_ssl run checkpoint, or anything that
            defines the run differs (naming the key, or what differs, and both values).
    """
    assert config.trainer.resume_from is not None
    path = Path(config.trainer.resume_from)
    state = read_finished_run(path, exact_file=True).state
    metadata = state["metadata"]
    fixed = module_class(config.method.name).fixed_on_resume(config)
    fixed_data = {key: getattr(config.data, key) for key in FIXED_DATA_KEYS}
    changed = changed_on_resume(state, fixed) + changed_on_resume(
        {"data": metadata.get("data_stream", {})}, {"data": fixed_data}
    )
    if changed:
        name, saved, value = changed[0]
        raise ValueError(
            f"cannot resume from {path}: it was trained with {name}={saved!r}, "
            f"this run sets {value!r}; resume with the same {name}, or start a new run"
        )
    saved_layout, layout = optimizer_layout(state["optim"]), optimizer_layout(asdict(config.optim))
    if saved_layout != layout:
        raise ValueError(
            f"cannot resume from {path}: its optimiser state is that of {saved_layout}, this "
            f"run sets {layout}; resume with the same optimiser, or start a new run"
        )
    changes: list[tuple[str, Any, Any]] = []
    if identity is not None:
        check_identity(path, metadata, identity)
        changes += _batch_changes(metadata.get("batch", {}), identity)
    step = int(state["completed_steps"])
    changes += [
        (f"optim.{key}", state["optim"].get(key), value)
        for key, value in asdict(config.optim).items()
        if key in state["optim"] and state["optim"][key] != value
    ]
    saved_steps = state.get("max_steps")
    if saved_steps is not None and saved_steps != config.trainer.max_steps:
        changes.append(("trainer.max_steps", saved_steps, config.trainer.max_steps))
    if step >= config.trainer.max_steps:
        where = "the run folder already holds a finished run: " if found_in_run_folder else ""
        raise ValueError(
            f"cannot resume from {path}: {where}it is at step {step} and trainer.max_steps "
            f"is {config.trainer.max_steps}; raise trainer.max_steps to train further"
            + (", or choose another folder (hydra.run.dir=...)" if found_in_run_folder else "")
        )
    for key, before, after in changes:
        log.warning("changed on resume at step %d: %s %r -> %r", step, key, before, after)
    logs = run_folder(path) / "logs"
    return ResumePoint(
        checkpoint=path,
        step=step,
        changes=changes,
        previous_rows=read_metrics_rows(logs / METRICS_CSV.name, before_step=step),
        previous_logs=logs if logs.is_dir() else None,
    )


def check_identity(path: Path, metadata: dict[str, Any], identity: RunIdentity) -> None:
    """Refuse a resume whose data or network is not the checkpoint's.

    Checked from the coarsest difference to the finest, so that the message names the
    one that matters (a different class count, not the file hash it also changes).

    Raises:
        ValueError: Naming what differs and both values.
    """
    cannot = f"cannot resume from {path}:"
    data = identity.data
    saved = metadata.get("data_fingerprint") or {}
    saved_names = saved.get("class_names", metadata.get("class_names"))
    names = data["class_names"]
    if saved_names is not None and len(saved_names) != len(names):
        raise ValueError(
            f"{cannot} it was trained on {len(saved_names)} classes, this run's data has "
            f"{len(names)} (check data.root and data.train_dir)"
        )
    if saved_names is not None and list(saved_names) != names:
        index = next(i for i, (a, b) in enumerate(zip(saved_names, names, strict=True)) if a != b)
        raise ValueError(
            f"{cannot} its class {index} is {saved_names[index]!r}, this run's is "
            f"{names[index]!r} (another dataset, or class folders renamed)"
        )
    saved_backbone = metadata.get("backbone")
    if saved_backbone is not None and _spec(saved_backbone) != _spec(identity.backbone):
        raise ValueError(
            f"{cannot} it fine-tunes a {_spec(saved_backbone)}, this run builds a "
            f"{_spec(identity.backbone)}; resume with the checkpoint and backbone settings "
            "it was started with"
        )
    saved_counts = saved.get("images_per_class")
    if saved_counts is not None and list(saved_counts) != data["images_per_class"]:
        index = next(
            i
            for i, (a, b) in enumerate(zip(saved_counts, data["images_per_class"], strict=True))
            if a != b
        )
        raise ValueError(
            f"{cannot} class {names[index]!r} had {saved_counts[index]} training images, "
            f"it has {data['images_per_class'][index]} now (images added or removed)"
        )
    saved_files = saved.get("labelled_files_sha256")
    digest = metadata.get("labelled_sha256")
    if (saved_files is not None and saved_files != data["labelled_files_sha256"]) or (
        saved_files is None and digest not in (None, identity.labelled_digest)
    ):
        raise ValueError(
            f"{cannot} its labelled images differ from this run's (check data.root, "
            "data.fraction, data.split_file and data.split_seed, and that no training "
            "image was added, removed or renamed)"
        )
    saved_size = saved.get("image_size")
    if saved_size is not None and saved_size != data["image_size"]:
        raise ValueError(
            f"{cannot} it was trained with data.image_size={saved_size}, this run sets "
            f"{data['image_size']}; resume with the same data.image_size"
        )


def _spec(backbone: dict[str, Any]) -> str:
    """``name`` or ``name {kwargs}``: an architecture as the messages show it."""
    kwargs = {key: _plain(value) for key, value in (backbone.get("kwargs") or {}).items()}
    return f"{backbone['name']} {kwargs}" if kwargs else str(backbone["name"])


def _plain(value: Any) -> Any:
    """Tuples as lists, so that a setting compares equal before and after a checkpoint."""
    return [_plain(item) for item in value] if isinstance(value, list | tuple) else value


def _batch_changes(saved: dict[str, Any], identity: RunIdentity) -> list[tuple[str, Any, Any]]:
    """``data.batch_size`` and the process count, where they changed (allowed, logged)."""
    changes: list[tuple[str, Any, Any]] = []
    if saved.get("batch_size") not in (None, identity.batch_size):
        changes.append(("data.batch_size", saved["batch_size"], identity.batch_size))
    if saved.get("world_size") not in (None, identity.world_size):
        changes.append(("processes (devices x nodes)", saved["world_size"], identity.world_size))
    if changes:
        before = saved.get("batch_size", identity.batch_size) * saved.get(
            "world_size", identity.world_size
        )
        changes.append(("global batch", before, identity.batch_size * identity.world_size))
    return changes


def read_metrics_rows(path: Path, before_step: int) -> list[dict[str, Any]]:
    """The rows of a Lightning ``metrics.csv`` logged before ``before_step``.

    Empty cells (metrics not logged at that step) are left out of each row, as Lightning
    leaves them out when logging.
    """
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            values = {key: _number(value) for key, value in row.items() if value not in ("", None)}
            if "step" in values and values["step"] < before_step:
                rows.append(values)
    return rows


def _number(text: str) -> Any:
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text else number


def carry_tensorboard_events(previous_logs: Path | None, logs: Path) -> None:
    """Copy an earlier run's TensorBoard event files into this run's ``logs`` folder."""
    if previous_logs is None or previous_logs.resolve() == logs.resolve():
        return
    logs.mkdir(parents=True, exist_ok=True)
    for events in previous_logs.glob("events.out.tfevents.*"):
        shutil.copy2(events, logs / events.name)
