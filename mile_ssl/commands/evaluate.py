"""Evaluate a fine-tuned run's checkpoint: rebuild the network from it, run validation."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L

from mile_ssl.config import DataConfig
from mile_ssl.data.loaders import validation_loader
from mile_ssl.data.sources import validation_set
from mile_ssl.finetune import FineTuneModule
from mile_ssl.runs.finished_run import FinishedRun, read_finished_run


def evaluate_run(
    run: FinishedRun, data: DataConfig, *, precision: str = "32-true", accelerator: str = "auto"
) -> dict[str, float]:
    """All validation metrics of ``run``'s student on ``data``'s validation set.

    Args:
        run: The fine-tuned run.
        data: Which validation set to use.
        precision: Lightning precision of the evaluation.
        accelerator: Lightning accelerator.
    """
    # The validation set alone: the training folder is neither indexed nor needed. The
    # loader factory decodes with the backend data.backend names, as training does.
    dataset = validation_set(data, run.preprocessing, run.class_names or None)
    loader = validation_loader(data, dataset, run.preprocessing)
    return evaluate_module(run.build_module(), loader, precision=precision, accelerator=accelerator)


def evaluate_module(
    module: FineTuneModule,
    loader: Iterable[dict[str, Any]],
    *,
    precision: str = "32-true",
    accelerator: str = "auto",
) -> dict[str, float]:
    """All validation metrics of ``module``'s student on the batches of ``loader``.

    Batches need what validation reads: ``image``, ``label``, ``label_set`` and ``index``.
    """
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,  # type: ignore[arg-type]
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.validate(module, dataloaders=loader, verbose=False)
    return dict(module.validation_metrics)


def evaluate_checkpoint(
    path: str | Path, data: DataConfig, *, precision: str = "32-true", accelerator: str = "auto"
) -> dict[str, float]:
    """All validation metrics of the student saved in ``path``, on ``data``'s validation set.

    Args:
        path: Lightning checkpoint of a mile_ssl run, or the run folder.
        data: Which validation set to use.
        precision: Lightning precision of the evaluation.
        accelerator: Lightning accelerator.
    """
    return evaluate_run(read_finished_run(path), data, precision=precision, accelerator=accelerator)
