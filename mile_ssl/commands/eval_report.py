"""The result of evaluating a run checkpoint: metrics plus what was evaluated on what.

A number without its checkpoint, dataset and label sets cannot be compared with a
published one, so the result carries all three. For ``data=imagenet`` the metrics
include ImageNet-ReaL (``real_acc``, ``real_f1``, ``coverage``, ``secondary_map``),
matched to the validation images by file name.

The network sees its input as in training: the run's image size and decoder, unless
the data overrides set them (:meth:`~mile_ssl.runs.finished_run.FinishedRun.data_config`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mile_ssl.commands.evaluate import evaluate_run
from mile_ssl.config import DataConfig
from mile_ssl.data.sources import class_names_without_images
from mile_ssl.runs.finished_run import read_finished_run
from mile_ssl.runs.report import format_metrics_table

log = logging.getLogger(__name__)

EVAL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("top1", "top-1"),
    ("top5", "top-5"),
    ("real_acc", "ReaL-acc"),
    ("real_f1", "ReaL-F1"),
    ("map", "mAP"),
    ("secondary_map", "2nd-mAP"),
    ("coverage", "coverage"),
)
"""Columns of :func:`format_eval_result`: the ImageNet protocol's numbers."""


def _label_sets_source(data: DataConfig) -> str | None:
    if data.val_label_sets is not None:
        return str(data.val_label_sets)
    if data.name == "imagenet":
        return "ImageNet-ReaL (real.json shipped with mile_ssl), matched by file name"
    if data.name == "digits":
        return "digit grids: every digit present in the image"
    return None


def eval_command_result(
    run_checkpoint: str | Path,
    data_config: DataConfig | None = None,
    *,
    overrides: Sequence[str] = (),
    precision: str = "32-true",
    accelerator: str = "auto",
) -> dict[str, Any]:
    """Evaluate a run checkpoint on a validation set.

    Args:
        run_checkpoint: Lightning checkpoint of a mile_ssl run (or the run folder).
        data_config: The validation data, every setting as given (e.g.
            ``compose_train_config([...]).data``); default: the data of ``overrides``,
            seen as the run saw its input in training unless they say otherwise
            (:meth:`~mile_ssl.runs.finished_run.FinishedRun.data_config`).
        overrides: Data overrides (``data=...``, ``data.KEY=...``) when no
            ``data_config`` is given; none: the run's own validation set.
        precision: Lightning precision of the evaluation.
        accelerator: Lightning accelerator.

    Returns:
        ``{"checkpoint": {...}, "dataset": {...}, "metrics": {...}}``: the metrics of
        :func:`mile_ssl.commands.evaluate.evaluate_run` (fractions, plus ``num_samples``),
        the checkpoint's architecture, method, classes and training steps, and the
        dataset's name, folders, image size, backend and label-set source.

    Raises:
        ValueError: Naming the checkpoint and the dataset if their classes differ.
    """
    run = read_finished_run(run_checkpoint)
    if data_config is None:
        data_config = run.data_config(overrides)
    source, state, metadata = run.checkpoint_path, run.state, run.metadata
    class_names = run.class_names
    dataset_classes = class_names_without_images(data_config)
    if dataset_classes is not None and class_names and class_names != dataset_classes:
        only_model = sorted(set(class_names) - set(dataset_classes))[:5]
        only_data = sorted(set(dataset_classes) - set(class_names))[:5]
        raise ValueError(
            f"{source} was trained on {len(class_names)} classes but data={data_config.name} "
            f"(root {data_config.root}) has {len(dataset_classes)}"
            + (f"; only in the checkpoint: {only_model}" if only_model else "")
            + (f"; only in the dataset: {only_data}" if only_data else "")
            + ("" if only_model or only_data else "; the class order differs")
        )
    images = data_config.name != "digits"
    log.info(
        "evaluating %s on data=%s%s",
        source,
        data_config.name,
        f" at data.image_size={data_config.image_size}, data.backend={data_config.backend}"
        if images
        else "",
    )
    metrics = evaluate_run(run, data_config, precision=precision, accelerator=accelerator)
    return {
        "checkpoint": {
            "path": str(source),
            "backbone": dict(metadata.get("backbone") or {}),
            "method": dict(state["method"]),
            "mile": dict(state["mile"]) if state["method"].get("name") == "mile" else None,
            "num_classes": run.num_classes,
            "completed_steps": int(state["completed_steps"]),
            "preprocessing": dict(metadata.get("preprocessing") or {}),
        },
        "dataset": {
            "name": data_config.name,
            "root": data_config.root,
            "val_dir": data_config.val_dir if data_config.name != "digits" else None,
            "image_size": data_config.image_size if images else None,
            "backend": data_config.backend,
            "label_sets": _label_sets_source(data_config),
            "num_samples": int(metrics.get("num_samples", 0)),
        },
        "metrics": metrics,
    }


def format_eval_result(result: dict[str, Any]) -> str:
    """The metrics as a one-row table (percent), headed by the checkpoint and dataset."""
    checkpoint, dataset = result["checkpoint"], result["dataset"]
    columns = [column for column in EVAL_COLUMNS if column[0] in result["metrics"]]
    header = (
        f"checkpoint: {checkpoint['path']} ({checkpoint['backbone'].get('name')}, "
        f"{checkpoint['method'].get('name')}, {checkpoint['completed_steps']} steps)\n"
        f"data: {dataset['name']} {dataset['root'] or ''} "
        f"({dataset['num_samples']} validation images; label sets: {dataset['label_sets']})"
    )
    table = format_metrics_table(
        {checkpoint["method"].get("name", "run"): result["metrics"]}, columns
    )
    return f"{header}\n{table}"
