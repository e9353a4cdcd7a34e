"""What every fine-tuning method shares: optimisers, schedule, divergence, validation, checkpoints.

A method is a subclass that says which networks it trains (:meth:`FineTuneModule.networks`),
what phase a step is in (:meth:`FineTuneModule.position`) and what one training step does.
Every class is built the same way, from one :class:`~mile_ssl.finetune.settings.ModuleSettings`
record (:meth:`FineTuneModule.from_settings`), of which each reads what it uses;
the step counter, the learning rate, the divergence check, the logging, validation and
the checkpoint entry live here, so that every method resumes and reports the same way.

Each training batch is exactly one optimiser step of exactly one network, so the step
counter (saved in checkpoints) determines the phase, the learning rate and the data,
and a run resumed mid-way continues exactly where it stopped.

No training step waits for the device outside Lightning's logging steps: losses and
statistics stay on the device and are copied to the host in one transfer at logging
steps (:meth:`FineTuneModule.end_step`), logged as CPU tensors so that Lightning's
progress bar reads them without a device round trip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, ClassVar, Self

import lightning as L
import torch
from torch import nn
from torch.optim import Optimizer

from mile_ssl.adapters.diagnostics import non_finite_tensors
from mile_ssl.config import MULTI_LABEL_METHODS, TEACHER_METHODS, MethodConfig, OptimConfig
from mile_ssl.data.views import STRONG_VIEW_KEY
from mile_ssl.finetune.batches import Batch
from mile_ssl.finetune.divergence import DivergenceError, NonFiniteLossMonitor
from mile_ssl.finetune.networks import Classifier
from mile_ssl.finetune.optimizers import group_settings, make_optimizer, warn_about_recipe
from mile_ssl.finetune.settings import ModuleSettings, changed_on_resume
from mile_ssl.finetune.validation import ValidationOutputs
from mile_ssl.losses import sigmoid_head_bias
from mile_ssl.lr_schedule import LearningRateSchedule
from mile_ssl.schedule import Phase, StepPosition

CHECKPOINT_KEY = "mile_ssl"
"""Key of the module's entry in a Lightning checkpoint (steps, settings, metadata)."""


class FineTuneModule(L.LightningModule):
    """The shared base of the fine-tuning methods; usable in any Lightning code.

    Batches are mappings with ``image`` ``(B, 3, H, W)`` and ``label`` ``(B,)``; in
    validation also ``label_set`` (multi-hot ``(B, C)``) and ``index``.

    Args:
        backbone: Pretrained feature extractor.
        feature_dim: Width of its pooled features.
        num_classes: Number of classes.
        **settings: Further :class:`~mile_ssl.finetune.settings.ModuleSettings` fields by
            name (``method.name`` one of the class's :attr:`METHODS`); each class reads
            those it uses, and an unknown name is a ``TypeError``.
    """

    METHODS: ClassVar[tuple[str, ...]] = ()
    """Values of ``method.name`` the class trains; the first is its default."""

    FIXED_ON_RESUME: ClassVar[tuple[str, ...]] = ("method",)
    """Config sections a resume must keep (:meth:`fixed_on_resume`)."""

    def __init__(
        self, backbone: nn.Module, feature_dim: int, num_classes: int, **settings: Any
    ) -> None:
        given = ModuleSettings(backbone, feature_dim, num_classes, **settings)
        super().__init__()
        self.method = given.method or MethodConfig(self.METHODS[0])
        if self.method.name not in self.METHODS:
            raise ValueError(
                f"method.name={self.method.name!r}: {type(self).__name__} trains "
                f"{list(self.METHODS)}; mile_ssl.finetune.build_module picks the class"
            )
        if given.fixed_teacher is not None and self.method.name not in TEACHER_METHODS:
            raise ValueError(
                f"method.name={self.method.name!r}: a fixed teacher is only for "
                f"{list(TEACHER_METHODS)} (distill.teacher_checkpoint)"
            )
        self.optim = given.optim or OptimConfig()
        self.metadata = dict(given.metadata or {})
        self.num_classes = num_classes
        self.channels_last = given.channels_last
        self.automatic_optimization = False
        head_bias = sigmoid_head_bias(num_classes) if self.multi_label else None
        self.student = Classifier(backbone, feature_dim, num_classes, head_bias)
        if self.channels_last:
            self.student.to(memory_format=torch.channels_last)
        self.completed_steps = 0
        self.validation_metrics: dict[str, float] = {}
        self._validation = ValidationOutputs()
        self._non_finite_loss = NonFiniteLossMonitor()
        self.lr_schedule = LearningRateSchedule(self.optim)
        self.build_method(given)

    @classmethod
    def from_settings(cls, settings: ModuleSettings) -> Self:
        """The module of ``settings`` (the one way every method class is built)."""
        return cls(**settings.arguments())

    def build_method(self, settings: ModuleSettings) -> None:
        """Take what the subclass reads from ``settings`` (the student is built by now)."""

    @property
    def multi_label(self) -> bool:
        """Whether outputs are independent sigmoids (several classes may be predicted)."""
        return self.method.name in MULTI_LABEL_METHODS

    @property
    def trains_teacher(self) -> bool:
        """Whether a second network trains besides the student (its own optimiser)."""
        return False

    def networks(self) -> list[nn.Module]:
        """The networks a training step runs (compiled by :meth:`compile_networks`)."""
        return [self.student]

    def compile_networks(self) -> None:
        """Compile every network in place (``nn.Module.compile``, ``trainer.compile``).

        In place, so state-dict keys keep their names (no ``_orig_mod.`` prefix), and the
        weights stay the same tensors: in-place refreshes such as
        :func:`~mile_ssl.finetune.networks.copy_weights_` keep the compiled code valid.
        """
        for network in self.networks():
            network.compile()

    def position(self, step: int) -> StepPosition:
        """Phase of training step ``step``."""
        return StepPosition(Phase.SUPERVISED, 0, step)

    def trained_network(self, step: int) -> str:
        """Name of the network that training step ``step`` updates (for error messages)."""
        return "student"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of the student, the network that is kept and evaluated."""
        return self.student(self.prepare(images))

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` in the memory format of the networks."""
        if self.channels_last and images.dim() == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def student_view(self, batch: Batch) -> torch.Tensor:
        """The strongly augmented view when the batch has one, else its images."""
        strong = batch.get(STRONG_VIEW_KEY)
        return self.prepare(batch["image"] if strong is None else strong)

    # Optimisers and the learning-rate schedule -----------------------------------------

    def configure_optimizers(self) -> list[Optimizer]:
        """The student's optimiser (subclasses append a trained teacher's)."""
        if self.trainer.is_global_zero:
            warn_about_recipe(self.student, self.optim)
        return [make_optimizer(self.student, self.optim)]

    def optimizer(self, index: int = 0) -> Any:
        """The Lightning-wrapped optimiser ``index`` of :meth:`configure_optimizers`."""
        optimizers = self.optimizers()
        return optimizers[index] if isinstance(optimizers, list) else optimizers

    def _total_steps(self) -> int:
        max_steps = self.trainer.max_steps
        if max_steps is None or max_steps < 1:
            raise ValueError(
                f"{type(self).__name__} needs Trainer(max_steps=...) for its LR schedule"
            )
        return int(max_steps)

    def learning_rate(self, step: int) -> float:
        """The backbone learning rate of training step ``step``."""
        return self.optim.lr * self.lr_schedule.factor(step, self._total_steps())

    def optimize(self, optimizer: Any, loss: torch.Tensor) -> None:
        """One update of the network ``optimizer`` holds, at this step's learning rate.

        Divergence: whether ``loss`` is finite is recorded on the device every step, and
        read back (one synchronisation) before the update whenever reading is cheap or
        due: on the CPU, where there is no device to wait for, at every step, so the
        update of a non-finite step never happens; on an accelerator, at Lightning's
        logging steps and before every checkpoint save (:meth:`on_save_checkpoint`).
        There, a non-finite step between two logging steps does update the weights, and
        the run stops at the next check naming that first non-finite step; no checkpoint
        holding its update, or any later one, is written.
        """
        factor = self.lr_schedule.factor(self.completed_steps, self._total_steps())
        for group in optimizer.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        self._non_finite_loss.record(self.completed_steps, loss)
        if self.reads_device_every_step() or self.is_logging_step():
            self.raise_if_loss_diverged("nothing from this step on was saved")
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        """Clip the gradients to the global norm ``optim.clip_grad_norm`` (AMP-unscaled).

        Lightning calls this between the backward pass and the update.
        """
        if self.optim.clip_grad_norm is not None:
            self.clip_gradients(optimizer, self.optim.clip_grad_norm, "norm")

    def reads_device_every_step(self) -> bool:
        """Whether device values may be read in every step.

        On the CPU reading makes nothing wait; on an accelerator device values are read
        only at logging steps and saves.
        """
        return self.device.type == "cpu"

    def raise_if_loss_diverged(self, consequence: str) -> None:
        """Stop the run if any recorded loss was not finite (reads the device once).

        Raises:
            DivergenceError: Naming the first such step, its phase and learning rate.
        """
        found = self._non_finite_loss.first_non_finite()
        if found is None:
            return
        step, loss = found
        raise self.divergence(
            f"at step {step + 1}",
            step,
            f"{self.trained_network(step)} network: the loss is {loss}; {consequence}",
        )

    def divergence(self, when: str, step: int, what: str) -> DivergenceError:
        """The error that stops a diverged run, naming the step, phase and learning rate."""
        return DivergenceError(
            f"training diverged {when} ({self.position(step).phase.value} phase, learning "
            f"rate {self.learning_rate(step):.4g}, optim.lr={self.optim.lr}): {what}. Lower "
            "optim.lr (or raise optim.warmup_steps) and start again or resume from the last "
            "checkpoint"
        )

    def on_train_start(self) -> None:
        """Check the step counters agree, and apply this run's optimiser settings.

        A resumed run restores the optimiser state saved with the checkpoint, settings
        included; the settings of this run's config replace them, so a resume with a new
        ``optim.lr`` trains at that rate (``mile_ssl.runs.resume`` logs the change).
        """
        if self.completed_steps != self.trainer.global_step:
            raise RuntimeError(
                f"step counter {self.completed_steps} disagrees with Lightning's global_step "
                f"{self.trainer.global_step}; was the checkpoint written by another program?"
            )
        settings = group_settings(self.student, self.optim)  # every network's groups
        optimizers = self.optimizers()
        for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
            for group, group_setting in zip(
                optimizer.optimizer.param_groups, settings, strict=True
            ):
                group.update(group_setting)

    # Logging -------------------------------------------------------------------------

    def is_logging_step(self) -> bool:
        """Whether Lightning writes the values logged in this step (``log_every_n_steps``)."""
        trainer = self.trainer
        every: int = getattr(trainer, "log_every_n_steps", 0)  # set by Lightning's logging
        return every > 0 and ((self.completed_steps + 1) % every == 0 or trainer.should_stop)

    def end_step(
        self,
        position: StepPosition,
        loss: torch.Tensor,
        statistics: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Count the step; at logging steps, log its loss and ``statistics``.

        The device values are copied to the host together, once, and only at logging
        steps; NaN statistics (not measured in this step) are left out.
        """
        if self.is_logging_step():
            names = [f"train/{position.phase.value}_loss", *(statistics or {})]
            device_values = [loss.detach().float(), *(statistics or {}).values()]
            host_values = torch.stack([value.float() for value in device_values]).cpu()
            for name, value in zip(names, host_values, strict=True):
                if not value.isnan():
                    self.log(name, value, prog_bar=name == names[0])
            self.log("train/lr", torch.tensor(self.learning_rate(self.completed_steps)))
            self.log("train/cycle", torch.tensor(float(position.cycle)))
        self.completed_steps += 1
        return loss.detach()

    # Validation ----------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        """Evaluate every rank with rank 0's BatchNorm statistics, and never a diverged run.

        DDP broadcasts buffers at the start of each training forward, so after the last
        training step each rank still holds statistics updated with its own batch; left
        alone, ranks would evaluate slightly different networks.
        """
        self.raise_if_loss_diverged("nothing from that step on was saved")
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            for buffer in self.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Keep the student's logits (metrics need the whole validation set) and its loss."""
        logits = self.student(self.prepare(batch["image"]))
        self._validation.add(logits, batch)
        self.lr_schedule.add_validation_batch(logits, batch, self.multi_label)

    def on_validation_epoch_end(self) -> None:
        """Metrics of all ranks' outputs, padding dropped; the plateau schedule's ``val/loss``."""
        if (watched := self.lr_schedule.end_validation(self.trainer.strategy.reduce)) is not None:
            self.log("val/loss", watched, sync_dist=True)  # the same on every rank
        report = self._validation.report(self, self.multi_label, self.method.eval_threshold)
        if report is None:
            return
        self.validation_metrics = report
        for name, value in report.items():
            # Every rank holds the same value; syncing averages identical numbers.
            self.log(f"val/{name}", value, sync_dist=True)

    # Checkpoints ---------------------------------------------------------------------

    @classmethod
    def fixed_on_resume(cls, config: object) -> dict[str, Any]:
        """The :attr:`FIXED_ON_RESUME` sections of ``config``, a run's config or a module.

        What checkpoints store and a resume compares: the one statement of that rule.
        """
        return {section: asdict(getattr(config, section)) for section in cls.FIXED_ON_RESUME}

    def checkpoint_settings(self) -> dict[str, Any]:
        """Settings a resume must keep, by config section (:meth:`fixed_on_resume`)."""
        return self.fixed_on_resume(self)

    def checkpoint_extras(self) -> dict[str, Any]:
        """Further state of a subclass saved in the checkpoint entry."""
        return {}

    def load_checkpoint_extras(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`checkpoint_extras` saved."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the step counter and the settings the schedule depends on.

        Raises:
            DivergenceError: If a loss since the last check, a weight or a BatchNorm
                statistic is not finite: such a state must not be saved over the last
                good checkpoint.
        """
        consequence = "this checkpoint was not written and the earlier ones are intact"
        self.raise_if_loss_diverged(consequence)
        broken = list(non_finite_tensors(checkpoint["state_dict"]))
        if broken:
            raise self.divergence(
                f"by step {self.completed_steps}",
                max(self.completed_steps - 1, 0),
                f"{len(broken)} weights or BatchNorm statistics are not finite (first: "
                f"{broken[:3]}); {consequence}",
            )
        checkpoint[CHECKPOINT_KEY] = {
            "version": 1,
            "completed_steps": self.completed_steps,
            "max_steps": self.trainer.max_steps if self._trainer is not None else None,
            "num_classes": self.num_classes,
            **self.checkpoint_settings(),
            "optim": asdict(self.optim),
            "lr_schedule": self.lr_schedule.state_dict(),
            "metadata": self.metadata,
            **self.checkpoint_extras(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the step counter and the learning-rate schedule; refuse other settings."""
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            raise ValueError(
                f"checkpoint has no '{CHECKPOINT_KEY}' entry; it was not written by mile_ssl"
            )
        changed = changed_on_resume(state, self.checkpoint_settings())
        if changed:
            name, saved, value = changed[0]
            raise ValueError(
                f"cannot resume: the checkpoint was trained with {name}={saved!r}, this run "
                f"sets {value!r}"
            )
        self.completed_steps = int(state["completed_steps"])
        self.lr_schedule.load_state_dict(state.get("lr_schedule"))
        self.load_checkpoint_extras(state)
