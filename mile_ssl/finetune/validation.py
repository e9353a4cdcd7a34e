"""Validation outputs collected over an epoch and turned into metrics once, on every rank.

Validation images that cannot be decoded are replaced by a readable image of their class,
as training images are (:class:`~mile_ssl.data.substitution.SubstitutingImages`), so
the metrics then count that image twice. They are not hidden: the report counts them
(``unreadable_images``, in ``metrics.json`` with the other validation metrics), and
:class:`UnreadableValidationImages` names each in a warning and lists them in the run's
``bad_val_images.txt``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import Dataset

from mile_ssl.atomic_files import write_text_atomically
from mile_ssl.data.substitution import BAD_INDEX_KEY
from mile_ssl.metrics import classification_report

log = logging.getLogger(__name__)

BAD_VAL_IMAGES_FILE = "bad_val_images.txt"
"""The run's list of unreadable validation images, one path a line."""

UNREADABLE_KEY = "unreadable_images"
"""Report entry: distinct validation images replaced because they cannot be decoded."""


class ValidationOutputs:
    """The student's logits and the labels of every validation batch of an epoch."""

    def __init__(self) -> None:
        self._batches: list[dict[str, torch.Tensor]] = []

    def add(self, logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> None:
        """Keep one batch's logits, labels, label sets, indices and unreadable-image marks.

        The marks (``bad_index``) come with image files only.
        """
        kept = {
            "logits": logits.float(),
            "label": batch["label"],
            "label_set": batch["label_set"],
            "index": batch["index"],
        }
        if BAD_INDEX_KEY in batch:
            kept[BAD_INDEX_KEY] = batch[BAD_INDEX_KEY].to(logits.device)
        self._batches.append(kept)

    def report(
        self, module: L.LightningModule, multi_label: bool, threshold: float
    ) -> dict[str, float] | None:
        """Metrics over all ranks' outputs, sampler padding dropped; clears the epoch.

        Returns:
            The :func:`~mile_ssl.metrics.classification_report` plus ``num_samples``,
            ``chance_top1`` and, for image files, ``unreadable_images``; ``None`` when
            no batch was seen.
        """
        if not self._batches:
            return None
        outputs = {
            key: torch.cat([batch[key] for batch in self._batches]) for key in self._batches[0]
        }
        self._batches.clear()
        if module.trainer.world_size > 1:
            outputs = {key: _gather(module, value) for key, value in outputs.items()}
        unique_indices, first = _first_occurrences(outputs["index"])
        outputs = {key: value[first] for key, value in outputs.items()}
        report = classification_report(
            outputs["logits"].cpu(),
            outputs["label"].cpu(),
            outputs["label_set"].cpu(),
            multi_label=multi_label,
            threshold=threshold,
        )
        report["num_samples"] = float(len(unique_indices))
        if BAD_INDEX_KEY in outputs:
            report[UNREADABLE_KEY] = float((outputs[BAD_INDEX_KEY] >= 0).sum())
        labels = outputs["label"][outputs["label"] >= 0]
        if len(labels):
            # Top-1 of always predicting the most frequent class: what "learned nothing"
            # scores, which the result table flags.
            report["chance_top1"] = float(labels.bincount().max()) / len(labels)
        return report


def _gather(module: L.LightningModule, tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (same shape on every rank) across ranks."""
    gathered = module.all_gather(tensor)
    assert isinstance(gathered, torch.Tensor)
    return gathered.flatten(0, 1)


def _first_occurrences(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique values of ``indices`` and the position of each one's first copy."""
    unique, inverse = torch.unique(indices, sorted=True, return_inverse=True)
    positions = torch.arange(indices.numel(), device=indices.device)
    first = torch.full_like(unique, indices.numel()).scatter_reduce(
        0, inverse, positions, reduce="amin"
    )
    return unique, first


class UnreadableValidationImages(L.Callback):
    """Name and list the validation images that could not be decoded.

    Each is named once in a warning, and on rank 0 the list of all found so far is
    written to ``output`` after every validation (its count is the report's
    ``unreadable_images``).

    Args:
        dataset: The validation set; its ``path_of(index)`` names an item's file.
        output: The run's ``bad_val_images.txt``; ``None`` writes no list.
    """

    def __init__(self, dataset: Dataset[Any], output: Path | None = None) -> None:
        self.dataset = dataset
        self.output = output
        self.found: dict[str, None] = {}
        self._indices: set[int] = set()

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep the indices of this batch's replaced images."""
        marks = batch.get(BAD_INDEX_KEY) if isinstance(batch, dict) else None
        if marks is not None:
            self._indices.update(int(index) for index in marks[marks >= 0].tolist())

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Merge every rank's finds, warn about new files, write the list."""
        indices = set(self._indices)
        self._indices.clear()
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered: list[list[int]] = [[] for _ in range(trainer.world_size)]
            torch.distributed.all_gather_object(gathered, sorted(indices))
            indices = {index for found in gathered for index in found}
        path_of = getattr(self.dataset, "path_of", None)
        if path_of is None:
            return
        new = [path for index in sorted(indices) if (path := path_of(index)) not in self.found]
        if not new:
            return
        self.found.update(dict.fromkeys(new))
        if not trainer.is_global_zero:
            return
        for path in new:
            log.warning(
                "validation image %s is unreadable: another image of its class is evaluated "
                "in its place, so the validation metrics count that one twice",
                path,
            )
        if self.output is not None:
            write_text_atomically(self.output, "".join(f"{path}\n" for path in self.found))
