"""The fine-tuning LightningModule: softmax, sigmoid and MILe (paper Sec. 3, Alg. 1).

MILe alternates two phases on every cycle of ``kt + ks`` steps:

* teacher phase (interaction): the teacher, freshly copied from the student, trains
  ``kt`` steps on the single ground-truth labels with binary cross-entropy;
* student phase (imitation): the student trains ``ks`` steps on the teacher's
  thresholded sigmoid outputs ``sigmoid(teacher(x)) > rho`` for the same batch it sees.

Each training batch is exactly one optimiser step of exactly one network, so the step
counter (saved in checkpoints) determines the phase, the learning rate and the data,
and a run resumed mid-cycle continues exactly where it stopped.

Teacher optimiser state: at the start of every cycle the teacher's weights are replaced
by the student's, so its SGD momentum, which points along the previous teacher's
trajectory, is cleared; the teacher starts each cycle with empty optimiser state.
The student's optimiser state persists across cycles.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.optim import SGD, Optimizer

from mile_ssl.config import (
    MULTI_LABEL_METHODS,
    TEACHER_METHODS,
    DistillConfig,
    MethodConfig,
    MileConfig,
    OptimConfig,
)
from mile_ssl.data.views import STRONG_VIEW_KEY
from mile_ssl.losses import (
    distillation_loss,
    multi_label_bce,
    one_hot_bce,
    semi_supervised_bce,
    sigmoid_head_bias,
    softmax_cross_entropy,
)
from mile_ssl.metrics import classification_report
from mile_ssl.pseudo_labels import (
    PseudoLabelStats,
    pseudo_label_report,
    self_training_targets,
    threshold_pseudo_labels,
)
from mile_ssl.schedule import Phase, StepPosition, mile_position, warmup_cosine

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "mile_ssl"


class DivergenceError(FloatingPointError):
    """The loss or the weights stopped being finite: training cannot go on."""


class Classifier(nn.Module):
    """A backbone followed by a new linear head over its pooled features.

    Args:
        backbone: Maps images to features ``(B, feature_dim)``.
        feature_dim: Width of the features.
        num_classes: Outputs of the head.
        head_bias: Initial value of every head bias (``None`` keeps PyTorch's init).
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        head_bias: float | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)
        if head_bias is not None:
            nn.init.constant_(self.head.bias, head_bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, num_classes)``."""
        return self.head(self.backbone(images))


@torch.no_grad()
def copy_weights_(target: nn.Module, source: nn.Module) -> None:
    """Copy every parameter and buffer (BatchNorm statistics included) in place.

    In-place copying keeps the target's tensors, so optimisers and compiled graphs that
    hold them stay valid, and no network is re-allocated each cycle.
    """
    target_state = target.state_dict(keep_vars=True)
    for name, source_tensor in source.state_dict(keep_vars=True).items():
        target_state[name].copy_(source_tensor)


class MILeModule(L.LightningModule):
    """Fine-tunes a backbone with softmax, sigmoid or MILe; usable in any Lightning code.

    Batches are mappings with ``image`` ``(B, 3, H, W)`` and ``label`` ``(B,)``; in
    validation also ``label_set`` (multi-hot ``(B, C)``) for the multi-label metrics.

    Args:
        backbone: Pretrained feature extractor.
        feature_dim: Width of its pooled features.
        num_classes: Number of classes.
        method: Objective and evaluation threshold.
        mile: MILe bottleneck (used when ``method.name == "mile"``).
        optim: Optimiser and learning-rate schedule.
        channels_last: Keep networks and inputs in channels-last memory format.
        metadata: Plain data saved with every checkpoint (architecture, preprocessing,
            class names) so that evaluation and export can rebuild the network.
        fixed_teacher: The fine-tuned network the ``distill`` / ``self_train`` baselines
            learn from. It is frozen and kept out of this module's state dict, so
            checkpoints hold the student alone; resuming loads it again.
        distill: Temperature and supervised weight of the baselines.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        method: MethodConfig | None = None,
        mile: MileConfig | None = None,
        optim: OptimConfig | None = None,
        channels_last: bool = True,
        metadata: dict[str, Any] | None = None,
        fixed_teacher: nn.Module | None = None,
        distill: DistillConfig | None = None,
    ) -> None:
        super().__init__()
        self.metadata = dict(metadata or {})
        self.distill = distill or DistillConfig()
        self.automatic_optimization = False
        self.method = method or MethodConfig()
        self.mile = mile or MileConfig()
        self.optim = optim or OptimConfig()
        self.num_classes = num_classes
        self.channels_last = channels_last
        head_bias = sigmoid_head_bias(num_classes) if self.multi_label else None
        self.student = Classifier(backbone, feature_dim, num_classes, head_bias)
        self.teacher: Classifier | None = None
        if self.method.name == "mile":
            # One copy at construction; every cycle refreshes it in place.
            self.teacher = copy.deepcopy(self.student)
            if self.mile.variant == "snapshot":
                self.teacher.requires_grad_(False)
        if (fixed_teacher is None) == (self.method.name in TEACHER_METHODS):
            raise ValueError(
                f"method.name={self.method.name!r}: a fixed teacher is needed by, and only "
                f"by, {list(TEACHER_METHODS)} (set distill.teacher_checkpoint)"
            )
        self._fixed_teacher: nn.Module | None = None
        if fixed_teacher is not None:
            # Stored outside the module tree: not trained, not checkpointed, not in DDP.
            object.__setattr__(self, "_fixed_teacher", fixed_teacher.eval().requires_grad_(False))
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.completed_steps = 0
        self.validation_metrics: dict[str, float] = {}
        self._val_outputs: list[dict[str, torch.Tensor]] = []
        self._phase_stats: list[dict[str, float]] = []
        self.pseudo_label_history: list[dict[str, float]] = []
        """Per MILe cycle: mean pseudo-label statistics of its student phase."""

    @property
    def multi_label(self) -> bool:
        """Whether outputs are independent sigmoids (several classes may be predicted)."""
        return self.method.name in MULTI_LABEL_METHODS

    def on_fit_start(self) -> None:
        """Put the fixed teacher, which Lightning does not manage, on this module's device."""
        if self._fixed_teacher is not None:
            self._fixed_teacher.to(self.device)
            if self.channels_last:
                self._fixed_teacher.to(memory_format=torch.channels_last)

    @property
    def trains_teacher(self) -> bool:
        """Whether the teacher is a second trained network (Alg. 1) with its own optimiser."""
        return self.teacher is not None and self.mile.variant == "copy"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of the student, the network that is kept and evaluated."""
        return self.student(self._prepare(images))

    def position(self, step: int) -> StepPosition:
        """Phase of training step ``step``."""
        if self._fixed_teacher is not None:
            return StepPosition(Phase.DISTILL, 0, step)
        if self.teacher is None:
            return StepPosition(Phase.SUPERVISED, 0, step)
        return mile_position(step, self.mile.kt, self.mile.ks)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last and images.dim() == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def _group_settings(self) -> list[dict[str, Any]]:
        """SGD settings of the backbone and head parameter groups, from ``self.optim``."""
        head_lr = self.optim.head_lr if self.optim.head_lr is not None else self.optim.lr
        shared = {
            "momentum": self.optim.momentum,
            "nesterov": self.optim.nesterov and self.optim.momentum > 0,
            "weight_decay": self.optim.weight_decay,
        }
        return [
            {"lr": self.optim.lr, "initial_lr": self.optim.lr, **shared},
            {"lr": head_lr, "initial_lr": head_lr, **shared},
        ]

    def _make_optimizer(self, network: Classifier) -> Optimizer:
        parameters = (list(network.backbone.parameters()), list(network.head.parameters()))
        groups = [
            {"params": params, **settings}
            for params, settings in zip(parameters, self._group_settings(), strict=True)
        ]
        return SGD(groups, lr=self.optim.lr)

    def configure_optimizers(self) -> list[Optimizer]:
        """Student optimiser first; the teacher's second when the teacher trains."""
        optimizers = [self._make_optimizer(self.student)]
        if self.trains_teacher:
            assert self.teacher is not None
            optimizers.append(self._make_optimizer(self.teacher))
        return optimizers

    def _optimizer(self, index: int) -> Any:
        optimizers = self.optimizers()
        return optimizers[index] if isinstance(optimizers, list) else optimizers

    def _total_steps(self) -> int:
        max_steps = self.trainer.max_steps
        if max_steps is None or max_steps < 1:
            raise ValueError("MILeModule needs Trainer(max_steps=...) for its LR schedule")
        return int(max_steps)

    def _optimize(self, optimizer: Any, loss: torch.Tensor) -> None:
        factor = warmup_cosine(self.completed_steps, self._total_steps(), self.optim.warmup_steps)
        for group in optimizer.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        if not torch.isfinite(loss):
            # Before the update: the weights, and every checkpoint, stay those of the
            # last good step.
            network = "teacher" if optimizer is not self._optimizer(0) else "student"
            raise self._divergence(
                f"at step {self.completed_steps + 1}",
                self.completed_steps,
                optimizer,
                f"{network} network: the loss is {float(loss)}; nothing from this step was saved",
            )
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()

    def _divergence(self, when: str, step: int, optimizer: Any, what: str) -> DivergenceError:
        """The error that stops a diverged run, naming the step, phase and learning rate."""
        return DivergenceError(
            f"training diverged {when} ({self.position(step).phase.value} phase, learning "
            f"rate {optimizer.optimizer.param_groups[0]['lr']:.4g}, optim.lr={self.optim.lr}): "
            f"{what}. Lower optim.lr (or raise optim.warmup_steps) and start again or resume "
            "from the last checkpoint"
        )

    def on_train_start(self) -> None:
        """Check the step counters agree, and apply this run's optimiser settings.

        A resumed run restores the optimiser state saved with the checkpoint, settings
        included; the settings of this run's config replace them, so a resume with a new
        ``optim.lr`` trains at that rate (``mile_ssl.resume`` logs the change).
        """
        if self.completed_steps != self.trainer.global_step:
            raise RuntimeError(
                f"step counter {self.completed_steps} disagrees with Lightning's global_step "
                f"{self.trainer.global_step}; was the checkpoint written by another program?"
            )
        optimizers = self.optimizers()
        for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
            for group, settings in zip(
                optimizer.optimizer.param_groups, self._group_settings(), strict=True
            ):
                group.update(settings)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One optimiser step of the network the current phase trains."""
        position = self.position(self.completed_steps)
        labelled = batch.get("labelled")
        if labelled is not None and position.phase in (Phase.SUPERVISED, Phase.TEACHER):
            # Ground truth is only ever read for labelled images (all of their views).
            batch = {key: value[labelled] for key, value in batch.items()}
        images = self._prepare(batch["image"])
        labels = batch["label"]
        if position.phase is Phase.SUPERVISED:
            # With a strong view, softmax and sigmoid train on it: the baseline that
            # a Noisy Student style MILe run must be compared with.
            logits = self.student(self._student_view(batch, images))
            if self.method.name == "softmax":
                loss = softmax_cross_entropy(logits, labels)
            else:
                loss = one_hot_bce(logits, labels)
            self._optimize(self._optimizer(0), loss)
        elif position.phase is Phase.TEACHER:
            loss = self._teacher_step(images, labels, position)
        elif position.phase is Phase.DISTILL:
            loss = self._distill_step(images, self._student_view(batch, images), labels, batch)
        else:
            loss = self._student_step(images, self._student_view(batch, images), position, batch)
        self.completed_steps += 1
        self.log(f"train/{position.phase.value}_loss", loss.detach(), prog_bar=True)
        self.log("train/lr", self._optimizer(0).optimizer.param_groups[0]["lr"])
        self.log("train/cycle", float(position.cycle))
        return loss.detach()

    def _teacher_step(
        self, images: torch.Tensor, labels: torch.Tensor, position: StepPosition
    ) -> torch.Tensor:
        assert self.teacher is not None
        if not self.trains_teacher:
            # snapshot variant: the single network learns from ground truth.
            loss = one_hot_bce(self.student(images), labels)
            self._optimize(self._optimizer(0), loss)
            return loss
        teacher_optimizer = self._optimizer(1)
        if position.starts_phase:
            copy_weights_(self.teacher, self.student)
            teacher_optimizer.optimizer.state.clear()
        self.teacher.train()
        loss = one_hot_bce(self.teacher(images), labels)
        self._optimize(teacher_optimizer, loss)
        return loss

    def _student_view(self, batch: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """The strongly augmented view when the batch has one, else the images as they are."""
        strong = batch.get(STRONG_VIEW_KEY)
        return images if strong is None else self._prepare(strong)

    def _student_step(
        self,
        images: torch.Tensor,
        student_images: torch.Tensor,
        position: StepPosition,
        batch: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """The teacher labels ``images``; the student learns from ``student_images``."""
        assert self.teacher is not None
        if position.starts_phase and not self.trains_teacher:
            copy_weights_(self.teacher, self.student)
        pseudo_labels = self.pseudo_label(images)
        stats = pseudo_label_report(pseudo_labels, batch.get("labelled"), batch.get("label_set"))
        self._record_phase_stats(stats, position)
        logits = self.student(student_images)
        labelled = batch.get("labelled")
        if labelled is not None and self.mile.empty_pseudo_labels == "ignore":
            confident = pseudo_labels.any(dim=1)
            # With no confident image at all, every image is kept (as all-negative).
            if confident.any():
                logits, pseudo_labels = logits[confident], pseudo_labels[confident]
                labelled = labelled[confident]
        if labelled is None or self.mile.unlabeled_weight is None:
            loss = multi_label_bce(logits, pseudo_labels)
        else:
            loss = semi_supervised_bce(logits, pseudo_labels, labelled, self.mile.unlabeled_weight)
        self._optimize(self._optimizer(0), loss)
        return loss

    def _distill_step(
        self,
        images: torch.Tensor,
        student_images: torch.Tensor,
        labels: torch.Tensor,
        batch: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """The fixed teacher's targets for ``images``; the student sees ``student_images``."""
        assert self._fixed_teacher is not None
        with torch.inference_mode():
            teacher_logits = self._fixed_teacher(images).float()
        teacher_logits = teacher_logits.clone()
        labelled = batch.get("labelled", torch.ones_like(labels, dtype=torch.bool))
        logits = self.student(student_images)
        if self.method.name == "self_train":
            loss = softmax_cross_entropy(
                logits, self_training_targets(teacher_logits, labels, labelled)
            )
        else:
            loss = distillation_loss(logits, teacher_logits, self.distill.temperature)
            if self.distill.supervised_weight > 0 and labelled.any():
                supervised = softmax_cross_entropy(logits[labelled], labels[labelled])
                loss = loss + self.distill.supervised_weight * supervised
        self._optimize(self._optimizer(0), loss)
        return loss

    def pseudo_label(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's multi-hot pseudo-labels for ``images`` (teacher in eval mode)."""
        assert self.teacher is not None
        was_training = self.teacher.training
        self.teacher.eval()
        with torch.inference_mode():
            pseudo_labels = threshold_pseudo_labels(self.teacher(images), self.mile.rho)
        self.teacher.train(was_training)
        # Inference tensors cannot be saved for backward; a clone outside is a normal one.
        return pseudo_labels.clone()

    def _record_phase_stats(self, stats: dict[str, float], position: StepPosition) -> None:
        """Log one student step's statistics; at the phase end, the cycle's means.

        Cycle means also go to :attr:`pseudo_label_history` (saved in checkpoints), and a
        cycle whose pseudo-labels look collapsed is reported as a warning.
        """
        for name, value in stats.items():
            self.log(f"train/{name}", value)
        self._phase_stats.append(stats)
        if position.step_in_phase != self.mile.ks - 1:
            return
        means = {
            name: sum(values) / len(values)
            for name in self._phase_stats[-1]
            if (values := [step[name] for step in self._phase_stats if name in step])
        }
        self._phase_stats.clear()
        for name, value in means.items():
            self.log(f"train/cycle_{name}", value)
        self.pseudo_label_history.append(
            {"cycle": position.cycle, "step": self.completed_steps + 1, **means}
        )
        summary = PseudoLabelStats(means["pseudo_labels_per_image"], means["pseudo_empty_fraction"])
        reason = summary.collapse_reason(self.num_classes)
        if reason is not None:
            log.warning("MILe cycle %d: pseudo-labels collapsed: %s", position.cycle, reason)

    def on_validation_epoch_start(self) -> None:
        """Evaluate every rank with rank 0's BatchNorm statistics.

        DDP broadcasts buffers at the start of each training forward, so after the last
        training step each rank still holds statistics updated with its own batch; left
        alone, ranks would evaluate slightly different networks.
        """
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            for buffer in self.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Keep the student's logits; metrics need the whole validation set."""
        logits = self.student(self._prepare(batch["image"]))
        self._val_outputs.append(
            {
                "logits": logits.float(),
                "label": batch["label"],
                "label_set": batch["label_set"],
                "index": batch["index"],
            }
        )

    def on_validation_epoch_end(self) -> None:
        """Gather every rank's outputs, drop sampler padding, compute metrics once."""
        if not self._val_outputs:
            return
        outputs = {
            key: torch.cat([output[key] for output in self._val_outputs])
            for key in self._val_outputs[0]
        }
        self._val_outputs.clear()
        if self.trainer.world_size > 1:
            outputs = {key: _gather(self, value) for key, value in outputs.items()}
        indices = outputs["index"]
        unique_indices, first = _first_occurrences(indices)
        outputs = {key: value[first] for key, value in outputs.items()}
        report = classification_report(
            outputs["logits"].cpu(),
            outputs["label"].cpu(),
            outputs["label_set"].cpu(),
            multi_label=self.multi_label,
            threshold=self.method.eval_threshold,
        )
        report["num_samples"] = float(len(unique_indices))
        labels = outputs["label"][outputs["label"] >= 0]
        if len(labels):
            # Top-1 of always predicting the most frequent class: what "learned nothing"
            # scores, which the result table flags.
            report["chance_top1"] = float(labels.bincount().max()) / len(labels)
        self.validation_metrics = report
        for name, value in report.items():
            # Every rank holds the same value; syncing averages identical numbers.
            self.log(f"val/{name}", value, sync_dist=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the step counter and the settings the schedule depends on.

        Raises:
            DivergenceError: If a weight or BatchNorm statistic is not finite: such a
                state must not be saved over the last good checkpoint.
        """
        broken = [
            name
            for name, tensor in checkpoint["state_dict"].items()
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
        ]
        if broken:
            raise self._divergence(
                f"by step {self.completed_steps}",
                max(self.completed_steps - 1, 0),
                self._optimizer(0),
                f"{len(broken)} weights or BatchNorm statistics are not finite (first: "
                f"{broken[:3]}); this checkpoint was not written and the earlier ones are "
                "intact",
            )
        checkpoint[CHECKPOINT_KEY] = {
            "version": 1,
            "completed_steps": self.completed_steps,
            "max_steps": self.trainer.max_steps if self._trainer is not None else None,
            "num_classes": self.num_classes,
            "method": asdict(self.method),
            "mile": asdict(self.mile),
            "optim": asdict(self.optim),
            "metadata": self.metadata,
            "pseudo_label_history": self.pseudo_label_history,
            "phase_stats": self._phase_stats,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the step counter; refuse a checkpoint of a different schedule."""
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            raise ValueError(
                f"checkpoint has no '{CHECKPOINT_KEY}' entry; it was not written by MILeModule"
            )
        expected = {"method": asdict(self.method), "mile": asdict(self.mile)}
        for key, value in expected.items():
            if key == "mile" and self.teacher is None:
                continue
            if state[key] != value:
                raise ValueError(
                    f"cannot resume: the checkpoint's {key} settings {state[key]} differ from "
                    f"this run's {value}"
                )
        self.completed_steps = int(state["completed_steps"])
        self.pseudo_label_history = list(state.get("pseudo_label_history", []))
        self._phase_stats = list(state.get("phase_stats", []))


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
