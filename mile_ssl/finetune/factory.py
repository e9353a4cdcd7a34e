"""Which class fine-tunes with which method, and building it from the run's settings."""

from __future__ import annotations

from typing import Any

from torch import nn

from mile_ssl.config import TEACHER_METHODS, DistillConfig, MethodConfig, MileConfig, OptimConfig
from mile_ssl.finetune.base import FineTuneModule
from mile_ssl.finetune.baselines import FixedTeacherModule
from mile_ssl.finetune.mile import MILeModule
from mile_ssl.finetune.supervised import SupervisedModule

METHOD_CLASSES: dict[str, type[FineTuneModule]] = {
    name: module_class
    for module_class in (SupervisedModule, MILeModule, FixedTeacherModule)
    for name in module_class.METHODS
}
"""The class of each ``method.name``."""


def module_class(method_name: str) -> type[FineTuneModule]:
    """The class that trains ``method.name``.

    Raises:
        ValueError: For a name no class trains.
    """
    if method_name not in METHOD_CLASSES:
        raise ValueError(
            f"config key 'method.name' must be one of {list(METHOD_CLASSES)}, got {method_name!r}"
        )
    return METHOD_CLASSES[method_name]


def build_module(
    backbone: nn.Module,
    feature_dim: int,
    num_classes: int,
    *,
    method: MethodConfig,
    mile: MileConfig | None = None,
    optim: OptimConfig | None = None,
    distill: DistillConfig | None = None,
    fixed_teacher: nn.Module | None = None,
    channels_last: bool = True,
    metadata: dict[str, Any] | None = None,
) -> FineTuneModule:
    """The fine-tuning module of ``method.name``, given the settings of a whole run.

    Each class takes the settings it uses: ``mile`` goes to MILe only, ``distill`` and
    ``fixed_teacher`` to the fixed-teacher baselines only.

    Raises:
        ValueError: If ``fixed_teacher`` is given to, or missing from, a method.
    """
    cls = module_class(method.name)
    if (fixed_teacher is None) == (cls is FixedTeacherModule):
        raise ValueError(
            f"method.name={method.name!r}: a fixed teacher is needed by, and only by, "
            f"{list(TEACHER_METHODS)} (set distill.teacher_checkpoint)"
        )
    if fixed_teacher is not None:
        return FixedTeacherModule(
            backbone,
            feature_dim,
            num_classes,
            fixed_teacher,
            method=method,
            distill=distill,
            optim=optim,
            channels_last=channels_last,
            metadata=metadata,
        )
    if cls is MILeModule:
        return MILeModule(
            backbone,
            feature_dim,
            num_classes,
            method=method,
            mile=mile,
            optim=optim,
            channels_last=channels_last,
            metadata=metadata,
        )
    return cls(
        backbone,
        feature_dim,
        num_classes,
        method=method,
        optim=optim,
        channels_last=channels_last,
        metadata=metadata,
    )
