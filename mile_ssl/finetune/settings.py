"""The one record every fine-tuning module is built from.

A run's settings name more than any one method reads (``mile`` is MILe's alone, the
fixed teacher and ``distill`` the baselines'); the record holds them all, and each class
takes what it uses, so that building any method is the same call
(:meth:`~mile_ssl.finetune.base.FineTuneModule.from_settings`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from torch import nn

from mile_ssl.config import DistillConfig, MethodConfig, MileConfig, OptimConfig


@dataclass(frozen=True, eq=False)
class ModuleSettings:
    """What a fine-tuning module is built from.

    Attributes:
        backbone: Pretrained feature extractor of the student.
        feature_dim: Width of its pooled features.
        num_classes: Number of classes.
        method: Objective and evaluation threshold; ``None``: the class's first method.
        optim: Optimiser and learning-rate schedule; ``None``: the defaults.
        mile: MILe's phase lengths, threshold, variant, semi-supervision (MILe only).
        distill: Temperature and supervised weight (``distill`` / ``self_train`` only).
        fixed_teacher: The fine-tuned network ``distill`` and ``self_train`` learn from.
            Only those methods take one, and only training needs it: a module rebuilt
            from a checkpoint to evaluate, predict or export has none.
        channels_last: Keep networks and inputs in channels-last memory format.
        metadata: Plain data saved with every checkpoint (architecture, preprocessing,
            class names) so that evaluation and export can rebuild the network.
    """

    backbone: nn.Module
    feature_dim: int
    num_classes: int
    method: MethodConfig | None = None
    optim: OptimConfig | None = None
    mile: MileConfig | None = None
    distill: DistillConfig | None = None
    fixed_teacher: nn.Module | None = None
    channels_last: bool = True
    metadata: Mapping[str, Any] | None = None

    def arguments(self) -> dict[str, Any]:
        """The fields by name, the networks as they are (not copied, unlike ``asdict``)."""
        return {field.name: getattr(self, field.name) for field in fields(self)}


def changed_on_resume(
    state: Mapping[str, Any], settings: Mapping[str, Mapping[str, Any]]
) -> list[tuple[str, Any, Any]]:
    """The settings a resume may not change that it would: ``(section.key, saved, now)``.

    ``settings`` are this run's ``FineTuneModule.fixed_on_resume`` sections and
    ``state`` the checkpoint's entry. A key the checkpoint lacks was added to mile_ssl
    after the checkpoint was written: it is not compared, so that a run started before an
    upgrade still resumes.
    """
    return [
        (f"{section}.{key}", state[section][key], value)
        for section, values in settings.items()
        for key, value in values.items()
        if key in state.get(section, {}) and state[section][key] != value
    ]
