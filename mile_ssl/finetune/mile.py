"""MILe, multi-label iterated learning (paper Sec. 3, Alg. 1).

Every cycle of ``mile.kt + mile.ks`` training steps has two phases, named for what
they train (:func:`~mile_ssl.schedule.mile_position` places a step):

* teacher phase (interaction), :meth:`MILeModule.learn_from_ground_truth`: ``kt`` steps of
  binary cross-entropy on the single ground-truth labels;
* student phase (imitation), :meth:`MILeModule.imitate_teacher`: ``ks`` steps in which the
  student learns the teacher's thresholded outputs ``sigmoid(teacher(x)) > mile.rho``
  for the very batch it sees (:meth:`MILeModule.pseudo_label`).

The two variants differ only in which network the ground truth trains and when the
teacher is refreshed from the student (:data:`VARIANTS`); both refresh it in one place,
:meth:`MILeModule.refresh_teacher`, by copying weights in place.

* ``copy`` (Alg. 1): the teacher is a second trained network with its own optimiser.
  It is copied from the student at the start of every teacher phase, and its optimiser
  state is cleared then: its SGD momentum points along the previous teacher's
  trajectory. The student's optimiser state persists across cycles.
* ``snapshot`` (default): one trained network, the student, learns from the ground
  truth; the teacher is a frozen snapshot of it taken at the start of every student
  phase.

Semi-supervised MILe (``mile.semi_supervised``): student-phase batches also hold
unlabeled images (:func:`~mile_ssl.schedule.unlabeled_steps`), which the teacher labels too.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from mile_ssl.config import MileConfig
from mile_ssl.finetune.base import FineTuneModule
from mile_ssl.finetune.batches import Batch, ground_truth
from mile_ssl.finetune.networks import Classifier, copy_weights_
from mile_ssl.finetune.optimizers import make_optimizer
from mile_ssl.finetune.settings import ModuleSettings
from mile_ssl.losses import multi_label_bce, one_hot_bce, semi_supervised_bce
from mile_ssl.pseudo_labels import (
    STATISTICS,
    PhaseStatistics,
    PseudoLabelStats,
    confident_row_weights,
    pseudo_label_statistics,
    read_phase_means,
    threshold_pseudo_labels,
)
from mile_ssl.schedule import Phase, StepPosition, mile_position

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """What distinguishes the two MILe variants.

    Attributes:
        teacher_trains: The teacher is a second network trained on the ground truth, with
            its own optimiser; otherwise it is a frozen snapshot of the student, and the
            student learns from the ground truth.
        refresh_phase: The phase at whose first step the teacher is copied from the student.
    """

    teacher_trains: bool
    refresh_phase: Phase


VARIANTS = {
    "copy": Variant(teacher_trains=True, refresh_phase=Phase.TEACHER),
    "snapshot": Variant(teacher_trains=False, refresh_phase=Phase.STUDENT),
}
"""The ``mile.variant`` choices."""


class MILeModule(FineTuneModule):
    """Fine-tunes with MILe; a ``LightningModule`` usable in any Lightning code.

    Batches are mappings with ``image`` ``(B, 3, H, W)`` and ``label`` ``(B,)``; label
    sets (``label_set``), a stream flag (``labelled``) and a strong view
    (``image_strong``) are used when present.

    Arguments are :class:`FineTuneModule`'s; of the settings MILe reads ``method``
    (evaluation threshold; ``method.name`` is ``mile``), ``mile`` (the learning
    bottleneck: phase lengths, threshold, variant, semi-supervision), ``optim``,
    ``channels_last`` and ``metadata``.
    """

    METHODS: ClassVar[tuple[str, ...]] = ("mile",)
    FIXED_ON_RESUME: ClassVar[tuple[str, ...]] = ("method", "mile")

    def build_method(self, settings: ModuleSettings) -> None:
        """The teacher, a copy of the student, and the pseudo-label records."""
        self.mile = settings.mile or MileConfig()
        self.variant = VARIANTS[self.mile.variant]
        # One copy at construction; every refresh copies the weights in place.
        self.teacher: Classifier = copy.deepcopy(self.student)
        self.teacher.requires_grad_(self.variant.teacher_trains)
        self.pseudo_label_history: list[dict[str, float]] = []
        """Per cycle: mean pseudo-label statistics of its student phase."""
        self._phase_statistics = PhaseStatistics()
        self._finished_cycles: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []

    @property
    def trains_teacher(self) -> bool:
        """Whether the teacher is a second trained network (``copy``, Alg. 1)."""
        return self.variant.teacher_trains

    def networks(self) -> list[nn.Module]:
        """Student and teacher."""
        return [self.student, self.teacher]

    def position(self, step: int) -> StepPosition:
        """Phase of training step ``step`` in the cycle of ``mile.kt`` + ``mile.ks`` steps."""
        return mile_position(step, self.mile.kt, self.mile.ks)

    def trained_network(self, step: int) -> str:
        """``teacher`` in the copy variant's teacher phase, else ``student``."""
        teacher_phase = self.position(step).phase is Phase.TEACHER
        return "teacher" if self.trains_teacher and teacher_phase else "student"

    def configure_optimizers(self) -> list[Any]:
        """Student optimiser first; the teacher's second when the teacher trains."""
        optimizers = super().configure_optimizers()
        if self.trains_teacher:
            optimizers.append(make_optimizer(self.teacher, self.optim))
        return optimizers

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """One optimiser step of the network the current phase trains."""
        position = self.position(self.completed_steps)
        if position.starts_phase and position.phase is self.variant.refresh_phase:
            self.refresh_teacher()
        if position.phase is Phase.TEACHER:
            return self.end_step(position, self.learn_from_ground_truth(batch))
        loss, statistics = self.imitate_teacher(batch)
        self._end_of_phase(statistics, position)
        named = {f"train/{name}": value for name, value in zip(STATISTICS, statistics, strict=True)}
        return self.end_step(position, loss, named)

    def refresh_teacher(self) -> None:
        """Copy the student's weights and buffers into the teacher, in place.

        The only place where weights are copied. In the copy variant the teacher's
        optimiser state is cleared too, so each teacher phase starts without momentum.
        """
        copy_weights_(self.teacher, self.student)
        if self.trains_teacher:
            self.optimizer(1).optimizer.state.clear()

    def learn_from_ground_truth(self, batch: Batch) -> torch.Tensor:
        """Teacher phase: BCE on the single labels, for the teacher (copy) or student (snapshot)."""
        network, optimizer = self.student, self.optimizer(0)
        if self.trains_teacher:
            network, optimizer = self.teacher, self.optimizer(1)
            self.teacher.train()
        labels, weights = ground_truth(batch)
        loss = one_hot_bce(network(self.prepare(batch["image"])), labels, weights)
        self.optimize(optimizer, loss)
        return loss

    def imitate_teacher(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Student phase: the teacher labels ``image``; the student learns from its view.

        Returns:
            The loss, and the step's pseudo-label statistics
            (:func:`~mile_ssl.pseudo_labels.pseudo_label_statistics`, on the device).
        """
        labelled = batch.get("labelled")
        pseudo_labels = self.pseudo_label(self.prepare(batch["image"]), labelled)
        statistics = pseudo_label_statistics(pseudo_labels, labelled, batch.get("label_set"))
        loss = self.student_loss(self.student(self.student_view(batch)), pseudo_labels, labelled)
        self.optimize(self.optimizer(0), loss)
        return loss, statistics

    def pseudo_label(
        self, images: torch.Tensor, labelled: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The teacher's multi-hot pseudo-labels ``sigmoid(teacher(x)) > mile.rho``.

        With ``mile.unlabeled_rho`` set, the rows ``labelled`` marks False (unlabeled
        images) use that threshold instead. The teacher runs in eval mode (BatchNorm
        running statistics) and without autograd.
        """
        rho: float | torch.Tensor = self.mile.rho
        if labelled is not None and self.mile.unlabeled_rho is not None:
            rho = torch.where(labelled, self.mile.rho, self.mile.unlabeled_rho).unsqueeze(1)
        was_training = self.teacher.training
        self.teacher.eval()
        with torch.inference_mode():
            pseudo_labels = threshold_pseudo_labels(self.teacher(images), rho)
        self.teacher.train(was_training)
        # Inference tensors cannot be saved for backward; a clone outside is a normal one.
        return pseudo_labels.clone()

    def student_loss(
        self, logits: torch.Tensor, pseudo_labels: torch.Tensor, labelled: torch.Tensor | None
    ) -> torch.Tensor:
        """BCE of the student against the pseudo-labels, weighted as ``mile.*`` says.

        Semi-supervised batches (``labelled`` given): ``mile.empty_pseudo_labels=ignore``
        gives images with an empty pseudo-label set weight 0 unless all are empty
        (:func:`~mile_ssl.pseudo_labels.confident_row_weights`), and
        ``mile.unlabeled_weight`` averages each stream on its own.
        """
        weights = None
        if labelled is not None and self.mile.empty_pseudo_labels == "ignore":
            weights = confident_row_weights(pseudo_labels)
        if labelled is None or self.mile.unlabeled_weight is None:
            return multi_label_bce(logits, pseudo_labels, weights)
        return semi_supervised_bce(
            logits, pseudo_labels, labelled, self.mile.unlabeled_weight, weights
        )

    def _end_of_phase(self, statistics: torch.Tensor, position: StepPosition) -> None:
        """Keep a student step's statistics; at the phase end, keep the cycle's means.

        The means stay on the device until the next logging step (or checkpoint, or the
        end of training), so that the last step of a phase waits for the device no more
        than any other step; :meth:`record_finished_cycles` then reads them.
        """
        self._phase_statistics.add(statistics)
        if position.step_in_phase == self.mile.ks - 1:
            finished = self._phase_statistics.finish_phase()
            if finished is not None:
                self._finished_cycles.append((position.cycle, self.completed_steps + 1, *finished))
        if self.is_logging_step():
            self.record_finished_cycles(log_means=True)

    def record_finished_cycles(self, log_means: bool = False) -> None:
        """Read the finished cycles' means (one device read), in :attr:`pseudo_label_history`.

        A cycle whose pseudo-labels look collapsed is reported as a warning.

        Args:
            log_means: Also log the newest cycle's means (``train/cycle_*``), from a
                training step.
        """
        for cycle, step, means, present in self._finished_cycles:
            values = read_phase_means(means, present)
            self.pseudo_label_history.append({"cycle": cycle, "step": step, **values})
            summary = PseudoLabelStats(
                values["pseudo_labels_per_image"], values["pseudo_empty_fraction"]
            )
            reason = summary.collapse_reason(self.num_classes)
            if reason is not None:
                log.warning("MILe cycle %d: pseudo-labels collapsed: %s", cycle, reason)
        if log_means and self._finished_cycles:
            newest = self.pseudo_label_history[-1]
            for name in STATISTICS:
                if name in newest:
                    self.log(f"train/cycle_{name}", torch.tensor(newest[name]))
        self._finished_cycles.clear()

    def on_train_end(self) -> None:
        """Read the cycles finished since the last logging step."""
        self.record_finished_cycles()

    def checkpoint_extras(self) -> dict[str, Any]:
        """The pseudo-label history and the statistics of the phase in progress."""
        self.record_finished_cycles()
        return {
            "pseudo_label_history": self.pseudo_label_history,
            "phase_stats": self._phase_statistics.state(),
        }

    def load_checkpoint_extras(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`checkpoint_extras` saved."""
        self.pseudo_label_history = list(state.get("pseudo_label_history", []))
        self._phase_statistics.load_state(list(state.get("phase_stats", [])))
