"""Where a run stands: the MILe phase of a step and the learning-rate factor.

Both are pure functions of the step counter, so a run resumed from any step continues
on exactly the same schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum


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


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to 0 at ``total_steps``.

    ``factor = (step + 1) / warmup`` during warm-up, then
    ``0.5 * (1 + cos(pi * (step - warmup) / (total - warmup)))``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
