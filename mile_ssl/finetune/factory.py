"""Which class fine-tunes with which method, and building it from the run's settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from mile_ssl.config import DistillConfig, MethodConfig, MileConfig, OptimConfig
from mile_ssl.finetune.base import FineTuneModule
from mile_ssl.finetune.baselines import FixedTeacherModule
from mile_ssl.finetune.mile import MILeModule
from mile_ssl.finetune.settings import ModuleSettings
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


def module_from_settings(settings: ModuleSettings) -> FineTuneModule:
    """The module of ``settings.method.name``, built by its class from the whole record.

    Raises:
        ValueError: For a record without a method, or one its class refuses.
    """
    if settings.method is None:
        raise ValueError("the settings name no method; set method=MethodConfig(name)")
    return module_class(settings.method.name).from_settings(settings)


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
    metadata: Mapping[str, Any] | None = None,
) -> FineTuneModule:
    """The fine-tuning module of ``method.name``, given the settings of a whole run.

    Each class takes the settings it uses (:class:`~mile_ssl.finetune.settings.ModuleSettings`):
    ``mile`` goes to MILe only, ``distill`` and ``fixed_teacher`` to the fixed-teacher
    baselines only, which are built without a teacher to evaluate a finished run.

    Raises:
        ValueError: If ``fixed_teacher`` is given to a method that does not learn from one.
    """
    return module_from_settings(
        ModuleSettings(
            backbone,
            feature_dim,
            num_classes,
            method=method,
            optim=optim,
            mile=mile,
            distill=distill,
            fixed_teacher=fixed_teacher,
            channels_last=channels_last,
            metadata=metadata,
        )
    )
