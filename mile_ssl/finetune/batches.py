"""What a fine-tuning batch holds, and its ground truth as every method reads it."""

from __future__ import annotations

import torch

Batch = dict[str, torch.Tensor]
"""``image`` ``(B, 3, H, W)`` and ``label`` ``(B,)``; optionally ``labelled`` (which rows
carry a label), ``image_strong`` (the student's view), and in validation ``label_set``
and ``index``."""


def ground_truth(batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The labels of ``batch`` and, in a batch that mixes streams, their row weights.

    Ground truth is only ever read for labelled images: unlabeled images (label -1)
    weigh 0 and their label is replaced by class 0, which then never counts. Without a
    ``labelled`` entry every image is labelled and the weights are ``None``.
    """
    labelled = batch.get("labelled")
    if labelled is None:
        return batch["label"], None
    labels = torch.where(labelled, batch["label"], torch.zeros_like(batch["label"]))
    return labels, labelled.float()
