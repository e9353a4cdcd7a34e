"""Continuing a run from its checkpoint: checked before anything is written, logs kept.

A resume reads the checkpoint first, so that an unreadable file or a run of another
method fails before the run directory is touched. Settings that only steer the
optimiser (``optim.*``, ``trainer.max_steps``) may change on resume: they are applied
from the resumed step on and each change is logged. Settings that define what was
learned so far (``method.*``, ``mile.*``, the labelled images) cannot change; the error
names the key. The log rows written before the checkpoint's step are carried into the
new run's ``logs/metrics.csv``, so that a resumed run's log reads as one run.
"""

from __future__ import annotations

import csv
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mile_ssl.config import TrainConfig
from mile_ssl.finished_run import read_finished_run
from mile_ssl.run_layout import run_folder

log = logging.getLogger(__name__)

METRICS_CSV = Path("logs") / "metrics.csv"
FIXED_ON_RESUME = ("method", "mile")
"""Config sections that define the run: a resume must keep them."""

FIXED_DATA_KEYS = ("unlabeled_ratio", "strong_student_view")
"""``data.*`` keys that shape every training batch: a resume must keep them too."""


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


def read_resume_point(config: TrainConfig, labelled_digest: str | None = None) -> ResumePoint:
    """Check ``trainer.resume_from`` against ``config`` and collect what the resume carries.

    Args:
        config: This run's configuration (``trainer.resume_from`` set).
        labelled_digest: SHA-256 of this run's labelled images, compared with the one the
            checkpoint recorded.

    Raises:
        ValueError: If the file is not a mile_ssl run checkpoint, or a setting that
            defines the run differs (naming the key and both values).
    """
    assert config.trainer.resume_from is not None
    path = Path(config.trainer.resume_from)
    state = read_finished_run(path, exact_file=True).state
    fixed = [
        (f"{section}.{key}", state.get(section, {}), key, value)
        for section in FIXED_ON_RESUME
        for key, value in asdict(getattr(config, section)).items()
    ]
    fixed += [
        (f"data.{key}", state["metadata"].get("data_stream", {}), key, getattr(config.data, key))
        for key in FIXED_DATA_KEYS
    ]
    for name, saved, key, value in fixed:
        if key in saved and saved[key] != value:
            raise ValueError(
                f"cannot resume from {path}: it was trained with {name}={saved[key]!r}, "
                f"this run sets {value!r}; resume with the same {name}, or start a new run"
            )
    saved_digest = state["metadata"].get("labelled_sha256")
    if labelled_digest is not None and saved_digest not in (None, labelled_digest):
        raise ValueError(
            f"cannot resume from {path}: its labelled images differ from this run's (check "
            "data.root, data.fraction, data.split_file and data.split_seed, and that no "
            "training image was added or removed)"
        )
    step = int(state["completed_steps"])
    changes = [
        (f"optim.{key}", state["optim"].get(key), value)
        for key, value in asdict(config.optim).items()
        if key in state["optim"] and state["optim"][key] != value
    ]
    saved_steps = state.get("max_steps")
    if saved_steps is not None and saved_steps != config.trainer.max_steps:
        changes.append(("trainer.max_steps", saved_steps, config.trainer.max_steps))
    if step >= config.trainer.max_steps:
        raise ValueError(
            f"cannot resume from {path}: it is at step {step} and trainer.max_steps is "
            f"{config.trainer.max_steps}; raise trainer.max_steps to train further"
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
