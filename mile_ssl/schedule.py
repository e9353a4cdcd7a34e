"""Where a run stands: the MILe phase of a step, the learning-rate factor, the unlabeled steps.

All are pure functions of the step counter (and the config), so a run resumed from any
step continues on exactly the same schedule.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from mile_ssl.config import TEACHER_METHODS, MethodConfig, MileConfig


class Phase(str, Enum):
    """What a training step does."""

    SUPERVISED = "supervised"
    """softmax / sigmoid: the network trains on ground truth."""
    TEACHER = "teacher"
    """MILe interaction phase: the teacher trains on ground truth (BCE)."""
    STUDENT = "student"
    """MILe imitation phase: the student trains on the teacher's pseudo-labels."""
    DISTILL = "distill"
    """distill / self_train: the student learns from a fixed teacher on all images."""


@dataclass(frozen=True)
class StepPosition:
    """The phase of one step and its place in the MILe cycle.

    Attributes:
        phase: What the step does.
        cycle: Index of the MILe cycle (0 for non-MILe methods).
        step_in_phase: Index of the step within its phase.
    """

    phase: Phase
    cycle: int
    step_in_phase: int

    @property
    def starts_phase(self) -> bool:
        """Whether this is the first step of its phase."""
        return self.step_in_phase == 0


def mile_position(step: int, kt: int, ks: int) -> StepPosition:
    """Position of ``step`` in MILe's cycle of ``kt`` teacher then ``ks`` student steps."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    cycle, offset = divmod(step, kt + ks)
    if offset < kt:
        return StepPosition(Phase.TEACHER, cycle, offset)
    return StepPosition(Phase.STUDENT, cycle, offset - kt)


def linear_warmup(step: int, warmup_steps: int) -> float:
    """Learning-rate factor of the warm-up: ``(step + 1) / warmup``, then 1."""
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to 0 at ``total_steps``.

    ``factor = (step + 1) / warmup`` during warm-up, then
    ``0.5 * (1 + cos(pi * (step - warmup) / (total - warmup)))``.
    """
    if step < warmup_steps:
        return linear_warmup(step, warmup_steps)
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def unlabeled_steps(method: MethodConfig, mile: MileConfig) -> Callable[[int], bool] | None:
    """Which training steps read unlabeled images; ``None`` when none ever does.

    Every step of ``distill`` and ``self_train`` (their fixed teacher labels all images),
    the student phase of semi-supervised MILe (its teacher learns from labels), no step
    of any other method. A function of the config alone, because the data pipeline that
    draws these images is set up before the module (which needs the data's classes).
    """
    if method.name in TEACHER_METHODS:
        return _every_step
    if method.name == "mile" and mile.semi_supervised:
        return functools.partial(_in_student_phase, kt=mile.kt, ks=mile.ks)
    return None


def _every_step(step: int) -> bool:
    return True


def _in_student_phase(step: int, kt: int, ks: int) -> bool:
    return mile_position(step, kt, ks).phase is Phase.STUDENT
