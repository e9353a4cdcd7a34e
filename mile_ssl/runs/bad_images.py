"""Unreadable training images: counted, logged with their paths, and bounded.

The data layer replaces an image that fails to decode by the next readable image of its
class and marks the item with ``bad_index`` (the index of the unreadable file). This
callback turns those marks into what the user needs: one warning per file, the list in
the run's ``bad_images.txt`` (which a resume passes back to the data layer, so deleting
the files afterwards does not shift the data), a count in ``metrics.json``, and a stop
(through :class:`~mile_ssl.runs.guard.RunGuard`) once more than ``data.max_bad_fraction``
of the training images are unreadable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch

from mile_ssl.atomic_files import write_text_atomically
from mile_ssl.data.substitution import BAD_INDEX_KEY

log = logging.getLogger(__name__)

BAD_IMAGES_FILE = "bad_images.txt"


def read_bad_images(run_dir: Path) -> list[str]:
    """The unreadable images an earlier run in ``run_dir`` recorded (none if no list)."""
    path = run_dir / BAD_IMAGES_FILE
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class BadImageMonitor(L.Callback):
    """Collect the ``bad_index`` marks of training batches.

    Args:
        image_path: Maps a training item index to its file path.
        num_images: Training images the fraction is measured against.
        max_fraction: ``data.max_bad_fraction``.
        output: The run's ``bad_images.txt``.
        known: Paths an earlier run of this training already recorded.
    """

    def __init__(
        self,
        image_path: Callable[[int], str | None],
        num_images: int,
        max_fraction: float,
        output: Path,
        known: list[str] | tuple[str, ...] = (),
    ) -> None:
        self.image_path = image_path
        self.num_images = num_images
        self.max_fraction = max_fraction
        self.output = output
        self.found: dict[str, None] = dict.fromkeys(known)

    @property
    def count(self) -> int:
        """Distinct unreadable images seen so far (on this process)."""
        return len(self.found)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Record this batch's unreadable images (the run guard stops on too many)."""
        marks = batch.get(BAD_INDEX_KEY) if isinstance(batch, dict) else None
        if marks is not None:
            new = [
                path
                for index in torch.unique(marks[marks >= 0]).tolist()
                if (path := self.image_path(int(index))) is not None and path not in self.found
            ]
            if new:
                self.found.update(dict.fromkeys(new))
                if trainer.is_global_zero:
                    self._write()

    def exceeded(self) -> bool:
        """Whether this process has seen more unreadable images than the limit allows.

        :class:`~mile_ssl.runs.guard.RunGuard` merges this with the other processes'
        answers and the run's other stop reasons in one decision.
        """
        return self.count > self.max_fraction * self.num_images

    def error(self) -> ValueError:
        """The error that stops the run: how many, the first files, where the list is."""
        shown = list(self.found)[:5]
        return ValueError(
            f"{self.count} of {self.num_images} training images are unreadable, more than "
            f"data.max_bad_fraction={self.max_fraction} allows (first: {shown}; all in "
            f"{self.output}). Run mile-ssl check-data with the same data settings, then "
            "repair or remove the files, or raise data.max_bad_fraction"
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Merge every rank's list, write it, and say how many images were replaced."""
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered: list[list[str]] = [[] for _ in range(trainer.world_size)]
            torch.distributed.all_gather_object(gathered, list(self.found))
            for paths in gathered:
                self.found.update(dict.fromkeys(paths))
        if trainer.is_global_zero and self.found:
            self._write()
            log.warning(
                "%d unreadable training images were replaced by readable ones of their class; "
                "the list is in %s",
                self.count,
                self.output,
            )

    def _write(self) -> None:
        write_text_atomically(self.output, "".join(f"{path}\n" for path in self.found))
