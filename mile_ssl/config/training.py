"""Config groups of the run's length and pace: ``optim`` and ``trainer``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mile_ssl.config.checks import require, require_choice

LOGGERS = ("csv", "tensorboard", "wandb")
PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")


OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "plateau")


@dataclass
class OptimConfig:
    """The optimiser, its parameter groups and the learning-rate schedule.

    Linear warm-up, then cosine decay over the whole run (``schedule=cosine``, the
    default) or a constant rate cut on validation-loss plateaus (``schedule=plateau``,
    the MILe reference code's), for every optimiser. ``sgd`` (the default, the ResNet
    recipe) decays every weight; ``adamw`` (the ViT recipe of BEiT, MAE and timm)
    exempts norms, biases and tokens from weight decay.

    Attributes:
        name: ``sgd`` (Nesterov momentum) or ``adamw``.
        lr: Base learning rate of the backbone (of its top layer with ``layer_decay``).
        head_lr: Learning rate of the new linear head (default: ``lr``).
        momentum: SGD momentum.
        nesterov: Nesterov momentum (SGD).
        betas: AdamW's moment coefficients.
        weight_decay: Weight decay (L2 for SGD, decoupled for AdamW).
        layer_decay: Layer-wise learning-rate decay, as BEiT and MAE define it: layer 0
            is the stem (patch embedding and tokens; a ResNet's first convolution), the
            blocks (ResNet stages) are layers 1..N, the head and anything after the
            blocks layer N + 1, and layer ``i`` trains at ``layer_decay ** (N + 1 - i)``
            times its rate (``lr``, or ``head_lr`` for the head). ``null``: one rate.
        clip_grad_norm: Clip the gradients of each step to this global norm (``null``:
            no clipping).
        warmup_steps: Linear warm-up steps.
        warmup_epochs: Warm-up in passes over the labelled images; replaces
            ``warmup_steps`` when set.
        schedule: After the warm-up, ``cosine`` decays the rate to 0 at the last step;
            ``plateau`` keeps it constant and multiplies it by ``plateau_factor`` after
            more than ``plateau_patience`` validations in a row (every
            ``trainer.val_every_n_steps``, which it needs) without a new best validation
            loss: torch's ``ReduceLROnPlateau``, as the MILe reference code runs it.
        plateau_factor: What a plateau cut multiplies the rate by (torch's default).
        plateau_patience: Validations without improvement before a cut (torch's default).
    """

    name: str = "sgd"
    lr: float = 0.1
    head_lr: float | None = None
    momentum: float = 0.9
    nesterov: bool = True
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-4
    layer_decay: float | None = None
    clip_grad_norm: float | None = None
    warmup_steps: int = 0
    warmup_epochs: float | None = None
    schedule: str = "cosine"
    plateau_factor: float = 0.1
    plateau_patience: int = 10

    def __post_init__(self) -> None:
        require_choice("optim.name", self.name, OPTIMIZERS)
        require_choice("optim.schedule", self.schedule, SCHEDULES)
        require(
            0.0 < self.plateau_factor < 1.0,
            "optim.plateau_factor",
            "in (0, 1)",
            self.plateau_factor,
        )
        require(self.plateau_patience >= 0, "optim.plateau_patience", ">= 0", self.plateau_patience)
        require(self.lr > 0, "optim.lr", "> 0", self.lr)
        require(
            self.warmup_epochs is None or self.warmup_epochs >= 0,
            "optim.warmup_epochs",
            ">= 0 or null",
            self.warmup_epochs,
        )
        require(self.head_lr is None or self.head_lr > 0, "optim.head_lr", "> 0", self.head_lr)
        require(self.warmup_steps >= 0, "optim.warmup_steps", ">= 0", self.warmup_steps)
        require(0.0 <= self.momentum < 1.0, "optim.momentum", "in [0, 1)", self.momentum)
        require(self.weight_decay >= 0, "optim.weight_decay", ">= 0", self.weight_decay)
        require(
            not self.nesterov or self.momentum > 0,
            "optim.nesterov",
            "false when optim.momentum is 0 (Nesterov needs momentum)",
            self.nesterov,
        )
        require(
            len(self.betas) == 2 and all(0.0 <= beta < 1.0 for beta in self.betas),
            "optim.betas",
            "two numbers in [0, 1)",
            list(self.betas),
        )
        require(
            self.layer_decay is None or 0.0 < self.layer_decay <= 1.0,
            "optim.layer_decay",
            "in (0, 1] or null",
            self.layer_decay,
        )
        require(
            self.clip_grad_norm is None or self.clip_grad_norm > 0,
            "optim.clip_grad_norm",
            "> 0 or null",
            self.clip_grad_norm,
        )


def optimizer_layout(optim: Mapping[str, Any]) -> str:
    """What shapes an optimiser's saved state: its kind and whether its groups are per layer.

    A resumed run restores the optimiser state of its checkpoint, which only fits an
    optimiser of the same kind over the same parameter groups; ``optim`` is a saved
    ``optim`` section (older checkpoints lack the newer keys: SGD, one rate).
    """
    name = optim.get("name", "sgd")
    layers = "per-layer rates" if optim.get("layer_decay") is not None else "one rate"
    return f"optim.name={name} with {layers} (optim.layer_decay)"


@dataclass
class TrainerConfig:
    """Lightning ``Trainer`` settings mile_ssl exposes.

    Attributes:
        max_steps: Training steps (teacher and student steps both count).
        max_epochs: Training length in passes over the labelled images; replaces
            ``max_steps`` when set (one pass = labelled images // global batch steps).
        accelerator: Lightning accelerator (``auto``, ``cpu``, ``gpu``).
        devices: Devices per node.
        num_nodes: Machines.
        strategy: Lightning strategy (``auto``, ``ddp``).
        precision: Lightning precision; ``auto`` picks ``bf16-mixed`` where the
            hardware supports it, else ``32-true``.
        val_every_n_steps: Validation interval; ``null`` validates at the end only.
        checkpoint_every_minutes: Save ``checkpoints/last.ckpt`` after this much wall
            time since the last save (``null``: only at the end, on a signal and every
            ``checkpoint_every_n_steps``); a preempted run loses at most this much.
        checkpoint_every_n_steps: Also keep ``checkpoints/step<N>.ckpt`` every n steps.
        log_every_n_steps: Logging interval.
        logger: ``csv``, ``tensorboard`` or ``wandb`` (needs the ``wandb`` extra; a resumed
            run continues the W&B run of the directory it resumes from).
        wandb_project: W&B project name.
        progress_bar: Show a progress bar.
        deterministic: Ask torch for deterministic algorithms.
        sync_batchnorm: Synchronise BatchNorm statistics across devices.
        resume_from: A Lightning checkpoint of an earlier run to continue.
        compile: Compile the networks with ``torch.compile``.
    """

    max_steps: int = 1200
    max_epochs: float | None = None
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    val_every_n_steps: int | None = None
    checkpoint_every_minutes: float | None = 30.0
    checkpoint_every_n_steps: int | None = None
    log_every_n_steps: int = 10
    logger: str = "csv"
    wandb_project: str = "mile_ssl"
    progress_bar: bool = True
    deterministic: bool = False
    sync_batchnorm: bool = False
    resume_from: str | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        require(self.max_steps >= 1, "trainer.max_steps", ">= 1", self.max_steps)
        require(
            self.max_epochs is None or self.max_epochs > 0,
            "trainer.max_epochs",
            "> 0 or null",
            self.max_epochs,
        )
        require(
            self.checkpoint_every_minutes is None or self.checkpoint_every_minutes > 0,
            "trainer.checkpoint_every_minutes",
            "> 0 or null",
            self.checkpoint_every_minutes,
        )
        require_choice("trainer.logger", self.logger, LOGGERS)
        require_choice("trainer.precision", str(self.precision), PRECISIONS)
        for key in ("val_every_n_steps", "checkpoint_every_n_steps"):
            value = getattr(self, key)
            require(value is None or value >= 1, f"trainer.{key}", ">= 1 or null", value)


def check_schedule(optim: OptimConfig, trainer: TrainerConfig) -> None:
    """Refuse a plateau schedule that would never see a validation loss before the end.

    Raises:
        ValueError: Naming both keys and the fix.
    """
    if optim.schedule == "plateau" and trainer.val_every_n_steps is None:
        raise ValueError(
            "config key 'optim.schedule' (plateau) cuts the learning rate when the "
            "validation loss stops improving, but 'trainer.val_every_n_steps' is null "
            "(one validation, at the end): set trainer.val_every_n_steps (the MILe "
            "reference code validates every 6000 steps) or use optim.schedule=cosine"
        )


def check_warmup(warmup_steps: int, max_steps: int) -> None:
    """Refuse a warm-up that does not end before the run does.

    Raises:
        ValueError: Naming both keys.
    """
    if warmup_steps > max_steps:
        raise ValueError(
            f"config key 'optim.warmup_steps' ({warmup_steps}) must be shorter than the run "
            f"('trainer.max_steps' = {max_steps}): the learning rate would never reach "
            "optim.lr; lower optim.warmup_steps"
        )
