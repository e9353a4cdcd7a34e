"""The run's logger: CSV (default), TensorBoard or Weights & Biases (pip extras).

A resumed run's CSV log starts with the rows the earlier run logged before the
checkpoint's step, so that ``logs/metrics.csv`` reads as one run however often it was
resumed (Lightning's CSV writer would otherwise start the file afresh).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from mile_ssl.config import TrainerConfig
from mile_ssl.extras import import_extra
from mile_ssl.runs.layout import run_folder


class ContinuedCSVLogger(CSVLogger):
    """A :class:`CSVLogger` whose file begins with an earlier run's rows.

    Args:
        save_dir: Run directory.
        previous_rows: Rows (``step`` included) to write before this run's own.
    """

    def __init__(self, save_dir: Path, previous_rows: Sequence[dict[str, Any]] = ()) -> None:
        super().__init__(save_dir, name="logs", version="")
        self._previous_rows = list(previous_rows)

    @property
    def experiment(self) -> Any:
        """Lightning's CSV writer, holding the earlier rows until its first save."""
        writer = super().experiment
        # Ranks other than 0 get Lightning's dummy writer, which writes nothing and whose
        # attributes are all methods.
        if self._previous_rows and isinstance(writer, ExperimentWriter):
            # Lightning's writer has just deleted the file; written back at once, the
            # earlier rows survive a kill before this run's first flush.
            writer.metrics[:0] = self._previous_rows
            self._previous_rows = []
            writer.save()
        return writer


def build_logger(
    config: TrainerConfig, output_dir: Path, previous_rows: Sequence[dict[str, Any]] = ()
) -> Logger:
    """The run's logger.

    W&B runs are identified by their run directory, so resuming from a directory's
    checkpoint continues its W&B run instead of starting a new one.

    Args:
        config: Trainer settings (``logger``, ``wandb_project``, ``resume_from``).
        output_dir: Run directory; logs go to ``output_dir/logs``.
        previous_rows: For the CSV logger: an earlier run's rows to continue.

    Raises:
        MissingExtraError: If the logger's extra (``tensorboard``, ``wandb``) is not
            installed.
    """
    if config.logger == "tensorboard":
        import_extra("tensorboard", "tensorboard", "trainer.logger=tensorboard")
        return TensorBoardLogger(output_dir, name="logs", version="")
    if config.logger == "wandb":
        import_extra("wandb", "wandb", "trainer.logger=wandb")
        run_dir = run_folder(config.resume_from) if config.resume_from else output_dir
        run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
        return WandbLogger(
            project=config.wandb_project,
            name=run_dir.name,
            id=run_id,
            resume="allow",
            save_dir=str(output_dir),
        )
    return ContinuedCSVLogger(output_dir, previous_rows)
