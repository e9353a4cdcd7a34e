"""Config groups of the objective: ``method``, ``mile`` and ``distill``."""

from __future__ import annotations

from dataclasses import dataclass

from mile_ssl.config.checks import require, require_choice

METHODS = ("softmax", "sigmoid", "mile", "distill", "self_train")
SUPERVISED_METHODS = ("softmax", "sigmoid", "mile")
"""Methods that learn from labels alone (the demo compares these)."""
MULTI_LABEL_METHODS = ("sigmoid", "mile")
"""Methods with sigmoid outputs, whose predicted set can hold several classes."""
TEACHER_METHODS = ("distill", "self_train")
"""Baselines that learn from a fixed, already fine-tuned teacher (paper Sec. 4.5)."""
MILE_VARIANTS = ("copy", "snapshot")
EMPTY_PSEUDO_LABELS = ("ignore", "keep")


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
        require_choice("method.name", self.name, METHODS)
        require(
            0.0 < self.eval_threshold < 1.0,
            "method.eval_threshold",
            "in (0, 1)",
            self.eval_threshold,
        )


@dataclass
class MileConfig:
    """The learning bottleneck of MILe (paper Sec. 3), read by ``mile_ssl.finetune.mile``.

    ``kt`` and ``ks`` place each step in its phase (``MILeModule.position``); ``rho``
    thresholds the teacher's outputs (``MILeModule.pseudo_label``).

    What the student sees (``data.strong_student_view``) and how many unlabeled images
    join its batches (``data.unlabeled_ratio``) are data options: they drive the
    baselines too.

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
        unlabeled_weight: Semi-supervised mode: unset (default), the student loss is one
            mean over the mixed batch, so labelled images weigh
            ``1 / (1 + data.unlabeled_ratio)`` of it; a number ``w`` averages each stream
            on its own and adds them as ``L_labelled + w * L_unlabeled`` (FixMatch's
            lambda_u). The sum of two means doubles the student's gradient against one
            mean, so it wants a smaller learning rate. On the digit grids validation
            preferred one mean (benchmarks/README.md, semi-supervised rows).
        unlabeled_rho: Semi-supervised mode: the threshold of the unlabeled images'
            pseudo-labels; unset (default), ``rho``. A higher one keeps fewer and surer
            labels where no ground truth anchors the student (FixMatch's confidence
            threshold plays this part).
        empty_pseudo_labels: Semi-supervised mode: ``ignore`` leaves images whose
            pseudo-label set is empty out of the student loss (the teacher is not
            confident about them, and training them as all-negative pushes the student
            towards the empty-set collapse); ``keep`` trains on them as all-negative.
    """

    kt: int = 100
    ks: int = 100
    rho: float = 0.5
    variant: str = "snapshot"
    semi_supervised: bool = False
    unlabeled_weight: float | None = None
    unlabeled_rho: float | None = None
    empty_pseudo_labels: str = "ignore"

    def __post_init__(self) -> None:
        require(self.kt >= 1, "mile.kt", ">= 1", self.kt)
        require(self.ks >= 1, "mile.ks", ">= 1", self.ks)
        require(0.0 < self.rho < 1.0, "mile.rho", "in (0, 1)", self.rho)
        require_choice("mile.variant", self.variant, MILE_VARIANTS)
        require(
            self.unlabeled_weight is None or self.unlabeled_weight > 0,
            "mile.unlabeled_weight",
            "> 0 or null",
            self.unlabeled_weight,
        )
        require(
            self.unlabeled_rho is None or 0.0 < self.unlabeled_rho < 1.0,
            "mile.unlabeled_rho",
            "in (0, 1) or null",
            self.unlabeled_rho,
        )
        for key, value, what in (
            ("unlabeled_weight", self.unlabeled_weight, "weighs"),
            ("unlabeled_rho", self.unlabeled_rho, "thresholds"),
        ):
            if value is not None and not self.semi_supervised:
                raise ValueError(
                    f"mile.{key}={value} {what} the unlabeled images of semi-supervised "
                    "MILe; set mile.semi_supervised=true (method=mile_semi) or leave it unset"
                )
        require_choice("mile.empty_pseudo_labels", self.empty_pseudo_labels, EMPTY_PSEUDO_LABELS)


@dataclass
class DistillConfig:
    """The fixed teacher of the ``distill`` and ``self_train`` baselines.

    Both train the student on labelled images plus ``data.unlabeled_ratio`` unlabeled
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
        require(self.temperature > 0, "distill.temperature", "> 0", self.temperature)
        require(
            self.supervised_weight >= 0, "distill.supervised_weight", ">= 0", self.supervised_weight
        )
