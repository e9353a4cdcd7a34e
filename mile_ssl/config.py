"""Structured configuration: one dataclass per Hydra config group.

The dataclasses are the schema Hydra merges YAML and command-line overrides into, so a
misspelt key fails at composition time, and ``__post_init__`` checks ranges when the
composed config is converted to objects (``OmegaConf.to_object``), before any compute.
Code past the CLI receives these typed objects, never raw ``DictConfig``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

METHODS = ("softmax", "sigmoid", "mile", "distill", "self_train")
SUPERVISED_METHODS = ("softmax", "sigmoid", "mile")
"""Methods that learn from labels alone (the demo compares these)."""
MULTI_LABEL_METHODS = ("sigmoid", "mile")
"""Methods with sigmoid outputs, whose predicted set can hold several classes."""
TEACHER_METHODS = ("distill", "self_train")
"""Baselines that learn from a fixed, already fine-tuned teacher (paper Sec. 4.5)."""
MILE_VARIANTS = ("copy", "snapshot")
EMPTY_PSEUDO_LABELS = ("ignore", "keep")
INITS = ("checkpoint", "scratch")
DATASETS = ("digits", "folder", "imagenet")
SPLITS = ("simclr", "stratified")
BACKENDS = ("torchvision", "dali")
LOGGERS = ("csv", "tensorboard", "wandb")
PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")


def _require(condition: bool, key: str, expected: str, value: Any) -> None:
    if not condition:
        raise ValueError(f"config key '{key}' must be {expected}, got {value!r}")


def _require_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, key, f"one of {list(choices)}", value)


@dataclass
class MethodConfig:
    """Which objective fine-tunes the network.

    Attributes:
        name: ``softmax`` (cross-entropy on the single label), ``sigmoid`` (BCE on the
            one-hot label), ``mile`` (multi-label iterated learning, Alg. 1), or the
            semi-supervised baselines ``distill`` (SimCLR-v2-style distillation from a
            fixed fine-tuned teacher) and ``self_train`` (one generation of hard
            pseudo-label self-training), both configured under ``distill``.
        eval_threshold: Sigmoid threshold of the predicted label set in evaluation
            (ReaL-F1, coverage). The softmax method always predicts its argmax only.
    """

    name: str = "mile"
    eval_threshold: float = 0.5

    def __post_init__(self) -> None:
        _require_choice("method.name", self.name, METHODS)
        _require(
            0.0 < self.eval_threshold < 1.0,
            "method.eval_threshold",
            "in (0, 1)",
            self.eval_threshold,
        )


@dataclass
class MileConfig:
    """The learning bottleneck of MILe (paper Sec. 3).

    Attributes:
        kt: Teacher steps on ground truth per cycle.
        ks: Student steps on the teacher's pseudo-labels per cycle.
        rho: Threshold of the pseudo-labels ``sigmoid(teacher(x)) > rho``.
        variant: ``copy``: teacher and student are two networks and the teacher is
            re-initialised from the student at each cycle (Alg. 1). ``snapshot``: one
            network trains ``kt`` steps on ground truth, then a frozen snapshot of it
            labels its next ``ks`` steps.
        semi_supervised: Student batches add unlabeled images (the training images
            outside the label fraction) that the teacher labels too (paper Sec. 4.4).
        unlabeled_ratio: Unlabeled images per labelled image in student batches
            (7, as in FixMatch).
        unlabeled_weight: Semi-supervised mode: unset (default), the student loss is one
            mean over the mixed batch, so labelled images weigh ``1 / (1 + ratio)`` of
            it; a number ``w`` averages each stream on its own and adds them as
            ``L_labelled + w * L_unlabeled`` (FixMatch's lambda_u). The sum of two means
            doubles the student's gradient against one mean, so it wants a smaller
            learning rate: on the digit grids ``w = 1`` leads at half the default
            rate and collapsed once at the default (benchmarks/README.md, semi-supervised rows).
        empty_pseudo_labels: Semi-supervised mode: ``ignore`` leaves images whose
            pseudo-label set is empty out of the student loss (the teacher is not
            confident about them, and training them as all-negative pushes the student
            towards the empty-set collapse); ``keep`` trains on them as all-negative.
        strong_student_view: Noisy Student style: the teacher labels the usual (weak)
            training view and the student learns from a strongly augmented view of the
            same image (RandAugment for image folders; shifts, rotations and erasing
            for digit grids). Also applies to ``distill`` and ``self_train``; softmax
            and sigmoid train on the strong view, which makes them the baselines with
            the same augmentation.
    """

    kt: int = 100
    ks: int = 100
    rho: float = 0.5
    variant: str = "snapshot"
    semi_supervised: bool = False
    unlabeled_ratio: int = 7
    unlabeled_weight: float | None = None
    empty_pseudo_labels: str = "ignore"
    strong_student_view: bool = False

    def __post_init__(self) -> None:
        _require(self.kt >= 1, "mile.kt", ">= 1", self.kt)
        _require(self.ks >= 1, "mile.ks", ">= 1", self.ks)
        _require(0.0 < self.rho < 1.0, "mile.rho", "in (0, 1)", self.rho)
        _require_choice("mile.variant", self.variant, MILE_VARIANTS)
        _require(self.unlabeled_ratio >= 1, "mile.unlabeled_ratio", ">= 1", self.unlabeled_ratio)
        _require(
            self.unlabeled_weight is None or self.unlabeled_weight > 0,
            "mile.unlabeled_weight",
            "> 0 or null",
            self.unlabeled_weight,
        )
        if self.unlabeled_weight is not None and not self.semi_supervised:
            raise ValueError(
                f"mile.unlabeled_weight={self.unlabeled_weight} weighs the unlabeled images "
                "of semi-supervised MILe; set mile.semi_supervised=true (method=mile_semi) "
                "or leave it unset"
            )
        _require_choice("mile.empty_pseudo_labels", self.empty_pseudo_labels, EMPTY_PSEUDO_LABELS)


@dataclass
class DistillConfig:
    """The fixed teacher of the ``distill`` and ``self_train`` baselines.

    Both train the student on labelled images plus ``mile.unlabeled_ratio`` unlabeled
    images per labelled one, every step.

    Attributes:
        teacher_checkpoint: ``last.ckpt`` of an earlier mile_ssl fine-tuning run.
        temperature: Softmax temperature of the distillation targets and student.
        supervised_weight: Weight of the cross-entropy on labelled images added to the
            distillation loss (0: distillation only, as SimCLR-v2 does by default).
    """

    teacher_checkpoint: str | None = None
    temperature: float = 1.0
    supervised_weight: float = 0.0

    def __post_init__(self) -> None:
        _require(self.temperature > 0, "distill.temperature", "> 0", self.temperature)
        _require(
            self.supervised_weight >= 0, "distill.supervised_weight", ">= 0", self.supervised_weight
        )


@dataclass
class DigitsConfig:
    """Size and label noise of the embedded digit-grid dataset (paper App. A.1).

    Attributes:
        num_train: Training grids.
        num_val: Validation grids: the split settings are chosen on.
        num_test: Held-out test grids, built from digit images that neither training
            nor validation grids use: the split results are reported on.
        center_prob: Probability that the training label is the centre digit.
    """

    num_train: int = 10_000
    num_val: int = 2_000
    num_test: int = 2_000
    center_prob: float = 0.6


@dataclass
class DataConfig:
    """Where images come from and which labels are used.

    Attributes:
        name: ``digits`` (embedded multi-label digit grids), ``folder``
            (``root/<train_dir>/<class>/*.jpg`` and ``root/<val_dir>/<class>/*.jpg``) or
            ``imagenet`` (a folder in the ImageFolder layout, evaluated with ImageNet-ReaL
            and the standard label splits).
        root: Dataset root for ``folder``.
        train_dir: Training sub-folder of ``root``.
        val_dir: Validation sub-folder of ``root``.
        fraction: Share of training labels used, sampled per class with ``split_seed``.
        split_file: Text file listing the training file names to use (one per line);
            replaces ``fraction``.
        split_seed: Seed of the label-fraction sampler; the same on every rank.
        split: ImageNet only: ``simclr`` uses the shipped standard lists for fractions
            0.01 and 0.1; ``stratified`` samples like any other dataset.
        allow_missing: Train on the listed files that exist when some of a split list
            are missing (otherwise that is an error: it changes the protocol).
        val_label_sets: JSON file mapping validation file names to lists of class
            indices (multi-label evaluation, e.g. ImageNet-ReaL).
        val_ground_truth: For a flat validation folder (images directly in
            ``val_dir``): a file of ``<file name> <wnid or class index>`` lines, or
            ImageNet's ``LOC_val_solution.csv``.
        batch_size: Images per device and step.
        eval_batch_size: Images per device in evaluation (default: ``batch_size``).
        num_workers: Loader worker processes per device; ``null`` sets them from the
            machine (its CPU cores shared among the devices of this node).
        backend: Input pipeline of ``folder`` and ``imagenet`` images: ``torchvision``
            (PIL/torchvision decoding in loader workers) or ``dali`` (NVIDIA DALI:
            decoding on the GPU where CUDA is present, on the CPU otherwise; needs the
            ``dali`` extra).
        image_size: Training crop size of ``folder`` images.
        unlabeled_root: Semi-supervised mode: a folder whose images (at any depth,
            folder names ignored) are the unlabeled stream, instead of the training
            images outside the label fraction.
        unlabeled_list: Semi-supervised mode: a file listing the unlabeled images, one
            path per line, relative to ``unlabeled_root`` if set, else to the list's
            folder.
        allow_empty_classes: Leave class folders without images out of the classes
            (otherwise they are an error naming them).
        max_bad_fraction: Share of training images that may fail to decode (each is
            replaced by a readable image of its class and listed in the run's
            ``bad_images.txt``) before the run stops.
        digits: Digit-grid settings.
    """

    name: str = "digits"
    root: str | None = None
    train_dir: str = "train"
    val_dir: str = "val"
    fraction: float = 1.0
    split_file: str | None = None
    split_seed: int = 0
    split: str = "simclr"
    allow_missing: bool = False
    val_label_sets: str | None = None
    val_ground_truth: str | None = None
    batch_size: int = 128
    eval_batch_size: int | None = None
    num_workers: int | None = None
    backend: str = "torchvision"
    image_size: int = 224
    unlabeled_root: str | None = None
    unlabeled_list: str | None = None
    allow_empty_classes: bool = False
    max_bad_fraction: float = 0.001
    digits: DigitsConfig = field(default_factory=DigitsConfig)

    def __post_init__(self) -> None:
        _require_choice("data.name", self.name, DATASETS)
        _require(0.0 < self.fraction <= 1.0, "data.fraction", "in (0, 1]", self.fraction)
        _require(self.batch_size >= 1, "data.batch_size", ">= 1", self.batch_size)
        _require(
            self.num_workers is None or self.num_workers >= 0,
            "data.num_workers",
            ">= 0 or null",
            self.num_workers,
        )
        _require_choice("data.backend", self.backend, BACKENDS)
        if self.backend == "dali":
            _require(
                self.name in ("folder", "imagenet"),
                "data.backend",
                "torchvision for data=digits (dali reads image files)",
                self.backend,
            )
        _require(self.image_size >= 8, "data.image_size", ">= 8 pixels", self.image_size)
        _require(
            self.eval_batch_size is None or self.eval_batch_size >= 1,
            "data.eval_batch_size",
            ">= 1 or null",
            self.eval_batch_size,
        )
        _require(
            0.0 <= self.max_bad_fraction < 1.0,
            "data.max_bad_fraction",
            "in [0, 1)",
            self.max_bad_fraction,
        )
        _require_choice("data.split", self.split, SPLITS)
        if self.name in ("folder", "imagenet"):
            _require(self.root is not None, "data.root", f"set for data={self.name}", self.root)


@dataclass
class BackboneConfig:
    """Architecture of the network that is fine-tuned.

    Attributes:
        name: See :class:`mile_ssl.backbones.BackboneSpec`. ``null`` (``backbone=auto``,
            the default) takes the architecture the checkpoint states or its adapter
            infers; without a checkpoint (``checkpoint=scratch``) it is ``tiny_resnet``.
            A name the checkpoint contradicts is an error.
        kwargs: Builder arguments.
        channels_last: Run convolutions in channels-last memory format (faster with
            bf16 on CPUs and GPUs).
    """

    name: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    channels_last: bool = True


@dataclass
class CheckpointConfig:
    """The pretrained weights the backbone starts from.

    Attributes:
        init: ``checkpoint`` loads ``path`` (the default: fine-tuning never silently
            starts from random weights); ``scratch`` trains from random weights.
        path: Checkpoint file.
        name: A public checkpoint by name (``mile-ssl checkpoints`` lists them), found in
            the cache or downloaded and checked; replaces ``path``.
        adapter: Adapter that reads ``path``; ``auto`` detects it from the file.
        projection_layers: Projection-head layers to keep on top of the backbone
            (SimCLR-v2 fine-tunes from the first); 0 keeps none.
    """

    init: str = "checkpoint"
    path: str | None = None
    name: str | None = None
    adapter: str = "auto"
    projection_layers: int = 0

    def __post_init__(self) -> None:
        _require_choice("checkpoint.init", self.init, INITS)
        if self.path is not None and self.name is not None:
            raise ValueError(
                f"config keys 'checkpoint.path' ({self.path}) and 'checkpoint.name' "
                f"({self.name}) both name the checkpoint; set one of them"
            )
        _require(
            self.projection_layers >= 0,
            "checkpoint.projection_layers",
            ">= 0",
            self.projection_layers,
        )


@dataclass
class OptimConfig:
    """SGD with linear warm-up and cosine decay over the whole run.

    Attributes:
        lr: Base learning rate of the backbone.
        head_lr: Learning rate of the new linear head (default: ``lr``).
        momentum: SGD momentum.
        nesterov: Nesterov momentum.
        weight_decay: L2 weight decay.
        warmup_steps: Linear warm-up steps.
        warmup_epochs: Warm-up in passes over the labelled images; replaces
            ``warmup_steps`` when set.
    """

    lr: float = 0.1
    head_lr: float | None = None
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    warmup_epochs: float | None = None

    def __post_init__(self) -> None:
        _require(self.lr > 0, "optim.lr", "> 0", self.lr)
        _require(
            self.warmup_epochs is None or self.warmup_epochs >= 0,
            "optim.warmup_epochs",
            ">= 0 or null",
            self.warmup_epochs,
        )
        _require(self.head_lr is None or self.head_lr > 0, "optim.head_lr", "> 0", self.head_lr)
        _require(self.warmup_steps >= 0, "optim.warmup_steps", ">= 0", self.warmup_steps)
        _require(0.0 <= self.momentum < 1.0, "optim.momentum", "in [0, 1)", self.momentum)
        _require(self.weight_decay >= 0, "optim.weight_decay", ">= 0", self.weight_decay)
        _require(
            not self.nesterov or self.momentum > 0,
            "optim.nesterov",
            "false when optim.momentum is 0 (Nesterov needs momentum)",
            self.nesterov,
        )


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
        checkpoint_every_n_steps: Also keep a resumable checkpoint every n steps.
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
        _require(self.max_steps >= 1, "trainer.max_steps", ">= 1", self.max_steps)
        _require(
            self.max_epochs is None or self.max_epochs > 0,
            "trainer.max_epochs",
            "> 0 or null",
            self.max_epochs,
        )
        _require_choice("trainer.logger", self.logger, LOGGERS)
        _require_choice("trainer.precision", str(self.precision), PRECISIONS)
        for key in ("val_every_n_steps", "checkpoint_every_n_steps"):
            value = getattr(self, key)
            _require(value is None or value >= 1, f"trainer.{key}", ">= 1 or null", value)


@dataclass
class TrainConfig:
    """Everything one fine-tuning run needs."""

    method: MethodConfig = field(default_factory=MethodConfig)
    mile: MileConfig = field(default_factory=MileConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.trainer.max_epochs is None and self.optim.warmup_epochs is None:
            check_warmup(self.optim.warmup_steps, self.trainer.max_steps)


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


def register_configs() -> None:
    """Store the schema under ``base_config`` for the primary YAML's defaults list."""
    ConfigStore.instance().store(name="base_config", node=TrainConfig)


def to_train_config(config: Any) -> TrainConfig:
    """Convert a composed ``DictConfig`` into validated dataclasses.

    Raises:
        ValueError: Naming the first key whose value is out of range.
    """
    from omegaconf import OmegaConf

    config_object = OmegaConf.to_object(config)
    if not isinstance(config_object, TrainConfig):
        raise TypeError(f"expected a TrainConfig, got {type(config_object).__name__}")
    return config_object


def compose_train_config(overrides: list[str] | None = None) -> TrainConfig:
    """Compose the shipped configs with Hydra override strings, as ``mile-ssl train`` does.

    Args:
        overrides: E.g. ``["method=sigmoid", "data.fraction=0.1"]``.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("mile_ssl.configs", version_base="1.3"):
        composed = compose("config", overrides=normalise_overrides(overrides or []))
    return to_train_config(composed)


STEPS_OVER_EPOCHS = (
    ("trainer.max_steps", "trainer.max_epochs"),
    ("optim.warmup_steps", "optim.warmup_epochs"),
)
"""(key, key it would be replaced by): a preset's epochs must not override typed steps."""


def normalise_overrides(overrides: Sequence[str]) -> list[str]:
    """Command-line overrides as the user meant them.

    Values holding ``=`` are quoted (:func:`quote_paths_with_equals`), and steps given on
    the command line win over epochs a preset or recipe sets: ``trainer.max_steps=2``
    with ``experiment=imagenet/mocov2_1pct`` (which sets ``trainer.max_epochs``) trains
    two steps, because ``trainer.max_epochs=null`` is added unless the user sets it too.
    """
    quoted = quote_paths_with_equals(overrides)
    keys = {override.partition("=")[0].lstrip("+~") for override in quoted}
    added = [
        f"{epochs}=null"
        for steps, epochs in STEPS_OVER_EPOCHS
        if steps in keys and epochs not in keys
    ]
    return [*quoted, *added]


def quote_paths_with_equals(overrides: Sequence[str]) -> list[str]:
    """Quote override values that hold ``=``, which Hydra's grammar refuses unquoted.

    Checkpoint names often contain ``=`` (solo-learn's ``byol-<id>-ep=399.ckpt``,
    Lightning's ``epoch=99-step=1.ckpt``); ``checkpoint.path=run/epoch=99.ckpt`` is
    meant as one path, so it is passed to Hydra as ``checkpoint.path='run/epoch=99.ckpt'``.
    Overrides Hydra parses as they are, and flags, are left alone.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    quoted = []
    for override in overrides:
        key, separator, value = override.partition("=")
        if override.startswith("-") or "=" not in value or value[:1] in ("'", '"'):
            quoted.append(override)
            continue
        try:
            parser.parse_overrides([override])
        except OverrideParseException:
            escaped = value.replace("'", "\\'")
            override = f"{key}{separator}'{escaped}'"
        quoted.append(override)
    return quoted
