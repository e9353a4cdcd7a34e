"""softmax and sigmoid fine-tuning: the student learns from the single label every step."""

from __future__ import annotations

from typing import ClassVar

import torch

from mile_ssl.finetune.base import FineTuneModule
from mile_ssl.finetune.batches import Batch, ground_truth
from mile_ssl.losses import one_hot_bce, softmax_cross_entropy


class SupervisedModule(FineTuneModule):
    """Fine-tunes with cross-entropy (``softmax``) or one-hot BCE (``sigmoid``).

    The baselines MILe is compared with (paper Sec. 4). With a strong view in the batch
    (``image_strong``), they train on it: the baseline that a Noisy Student style MILe
    run must be compared with. Arguments are :class:`FineTuneModule`'s.
    """

    METHODS: ClassVar[tuple[str, ...]] = ("softmax", "sigmoid")

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """One optimiser step of the student on the ground truth."""
        position = self.position(self.completed_steps)
        labels, weights = ground_truth(batch)
        logits = self.student(self.student_view(batch))
        if self.method.name == "softmax":
            loss = softmax_cross_entropy(logits, labels, weights)
        else:
            loss = one_hot_bce(logits, labels, weights)
        self.optimize(self.optimizer(), loss)
        return self.end_step(position, loss)
