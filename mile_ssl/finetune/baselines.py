"""The semi-supervised baselines: ``distill`` and ``self_train`` from a fixed teacher.

Both train the student on labelled plus unlabeled images at every step, with targets
from an already fine-tuned network that does not change (paper Sec. 4.5): SimCLR-v2's
distillation (tempered soft targets) and one generation of hard pseudo-label
self-training.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from mile_ssl.config import DistillConfig
from mile_ssl.finetune.base import FineTuneModule
from mile_ssl.finetune.batches import Batch, ground_truth
from mile_ssl.finetune.settings import ModuleSettings
from mile_ssl.losses import distillation_loss, softmax_cross_entropy
from mile_ssl.pseudo_labels import self_training_targets
from mile_ssl.schedule import Phase, StepPosition


class FixedTeacherModule(FineTuneModule):
    """The student learns from a fixed teacher's outputs on every image.

    Arguments are :class:`FineTuneModule`'s; of the settings it reads ``method``
    (``distill`` or ``self_train``, and the evaluation threshold), ``distill``
    (temperature and supervised weight), ``fixed_teacher``, ``optim``, ``channels_last``
    and ``metadata``. The fixed teacher is frozen and kept out of this module's state
    dict, so checkpoints hold the student alone; resuming loads it again. Only training
    needs it: a module built without one (from a checkpoint, to evaluate, predict or
    export) is the student alone, and refuses to train.
    """

    METHODS: ClassVar[tuple[str, ...]] = ("distill", "self_train")

    def build_method(self, settings: ModuleSettings) -> None:
        """Keep the fixed teacher, frozen, outside the module tree."""
        self.distill = settings.distill or DistillConfig()
        teacher = settings.fixed_teacher
        # Stored outside the module tree: not trained, not checkpointed, not in DDP.
        self._fixed_teacher: nn.Module | None
        object.__setattr__(
            self,
            "_fixed_teacher",
            None if teacher is None else teacher.eval().requires_grad_(False),
        )

    def networks(self) -> list[nn.Module]:
        """Student and fixed teacher (the student alone when built without one)."""
        return [self.student, *([] if self._fixed_teacher is None else [self._fixed_teacher])]

    def position(self, step: int) -> StepPosition:
        """Every step distils."""
        return StepPosition(Phase.DISTILL, 0, step)

    def fixed_teacher(self) -> nn.Module:
        """The network the student learns from.

        Raises:
            ValueError: If the module was built without one (to evaluate a checkpoint).
        """
        if self._fixed_teacher is None:
            raise ValueError(
                f"method.name={self.method.name!r} learns from a fixed teacher, and this "
                "module was built without one (set config key 'distill.teacher_checkpoint')"
            )
        return self._fixed_teacher

    def on_fit_start(self) -> None:
        """Put the fixed teacher, which Lightning does not manage, on this module's device."""
        self.fixed_teacher().to(self.device)
        if self.channels_last:
            self.fixed_teacher().to(memory_format=torch.channels_last)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """The fixed teacher's targets for ``image``; the student learns from its view."""
        position = self.position(self.completed_steps)
        with torch.inference_mode():
            teacher_logits = self.fixed_teacher()(self.prepare(batch["image"])).float()
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
