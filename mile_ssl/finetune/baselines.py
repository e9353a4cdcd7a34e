"""The semi-supervised baselines: ``distill`` and ``self_train`` from a fixed teacher.

Both train the student on labelled plus unlabeled images at every step, with targets
from an already fine-tuned network that does not change (paper Sec. 4.5): SimCLR-v2's
distillation (tempered soft targets) and one generation of hard pseudo-label
self-training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from mile_ssl.config import DistillConfig, MethodConfig, MileConfig, OptimConfig
from mile_ssl.finetune.base import Batch, FineTuneModule, ground_truth
from mile_ssl.losses import distillation_loss, softmax_cross_entropy
from mile_ssl.pseudo_labels import self_training_targets
from mile_ssl.schedule import Phase, StepPosition


class FixedTeacherModule(FineTuneModule):
    """The student learns from a fixed teacher's outputs on every image.

    Args:
        backbone: Pretrained feature extractor of the student.
        feature_dim: Width of its pooled features.
        num_classes: Number of classes.
        fixed_teacher: The fine-tuned network the student learns from. It is frozen and
            kept out of this module's state dict, so checkpoints hold the student alone;
            resuming loads it again.
        method: ``distill`` or ``self_train``, and the evaluation threshold.
        distill: Temperature and supervised weight.
        optim: Optimiser and learning-rate schedule.
        channels_last: Keep networks and inputs in channels-last memory format.
        metadata: Plain data saved with every checkpoint (see :class:`FineTuneModule`).
    """

    METHODS: ClassVar[tuple[str, ...]] = ("distill", "self_train")

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        fixed_teacher: nn.Module,
        method: MethodConfig | None = None,
        distill: DistillConfig | None = None,
        optim: OptimConfig | None = None,
        channels_last: bool = True,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(backbone, feature_dim, num_classes, method, optim, channels_last, metadata)
        self.distill = distill or DistillConfig()
        # Stored outside the module tree: not trained, not checkpointed, not in DDP.
        self._fixed_teacher: nn.Module
        object.__setattr__(self, "_fixed_teacher", fixed_teacher.eval().requires_grad_(False))

    @classmethod
    def unlabeled_steps(cls, mile: MileConfig) -> Callable[[int], bool] | None:
        """Every step: the teacher labels unlabeled images throughout."""
        return lambda step: True

    def networks(self) -> list[nn.Module]:
        """Student and fixed teacher."""
        return [self.student, self._fixed_teacher]

    def position(self, step: int) -> StepPosition:
        """Every step distils."""
        return StepPosition(Phase.DISTILL, 0, step)

    def on_fit_start(self) -> None:
        """Put the fixed teacher, which Lightning does not manage, on this module's device."""
        self._fixed_teacher.to(self.device)
        if self.channels_last:
            self._fixed_teacher.to(memory_format=torch.channels_last)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """The fixed teacher's targets for ``image``; the student learns from its view."""
        position = self.position(self.completed_steps)
        with torch.inference_mode():
            teacher_logits = self._fixed_teacher(self.prepare(batch["image"])).float()
        # Inference tensors cannot be saved for backward; a clone outside is a normal one.
        teacher_logits = teacher_logits.clone()
        logits = self.student(self.student_view(batch))
        if self.method.name == "self_train":
            labels = batch["label"]
            labelled = batch.get("labelled", torch.ones_like(labels, dtype=torch.bool))
            targets = self_training_targets(teacher_logits, labels, labelled)
            loss = softmax_cross_entropy(logits, targets)
        else:
            loss = distillation_loss(logits, teacher_logits, self.distill.temperature)
            if self.distill.supervised_weight > 0:
                # Labelled images only; a batch without any adds nothing.
                labels, weights = ground_truth(batch)
                supervised = softmax_cross_entropy(logits, labels, weights)
                loss = loss + self.distill.supervised_weight * supervised
        self.optimize(self.optimizer(), loss)
        return self.end_step(position, loss)
