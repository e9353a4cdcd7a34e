"""Validation outputs collected over an epoch and turned into metrics once, on every rank."""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import torch

from mile_ssl.metrics import classification_report


class ValidationOutputs:
    """The student's logits and the labels of every validation batch of an epoch."""

    def __init__(self) -> None:
        self._batches: list[dict[str, torch.Tensor]] = []

    def add(self, logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> None:
        """Keep one batch's logits with its labels, label sets and dataset indices."""
        self._batches.append(
            {
                "logits": logits.float(),
                "label": batch["label"],
                "label_set": batch["label_set"],
                "index": batch["index"],
            }
        )

    def report(
        self, module: L.LightningModule, multi_label: bool, threshold: float
    ) -> dict[str, float] | None:
        """Metrics over all ranks' outputs, sampler padding dropped; clears the epoch.

        Returns:
            The :func:`~mile_ssl.metrics.classification_report` plus ``num_samples`` and
            ``chance_top1``, or ``None`` when no batch was seen.
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
