"""mile_ssl: fine-tune self-supervised checkpoints with multi-label iterated learning.

The public names below are imported on first use, so that ``import mile_ssl`` (and the
``mile-ssl`` command's start, which a Ctrl-C may interrupt) does not load torch,
Lightning and Hydra before they are needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mile_ssl.config import MethodConfig, MileConfig, OptimConfig, TrainConfig
    from mile_ssl.finetune import (
        Classifier,
        FineTuneModule,
        FixedTeacherModule,
        MILeModule,
        SupervisedModule,
        build_module,
    )

_HOMES = {
    "MethodConfig": "mile_ssl.config",
    "MileConfig": "mile_ssl.config",
    "OptimConfig": "mile_ssl.config",
    "TrainConfig": "mile_ssl.config",
    "Classifier": "mile_ssl.finetune",
    "FineTuneModule": "mile_ssl.finetune",
    "FixedTeacherModule": "mile_ssl.finetune",
    "MILeModule": "mile_ssl.finetune",
    "SupervisedModule": "mile_ssl.finetune",
    "build_module": "mile_ssl.finetune",
}

__all__ = [
    "Classifier",
    "FineTuneModule",
    "FixedTeacherModule",
    "MILeModule",
    "MethodConfig",
    "MileConfig",
    "OptimConfig",
    "SupervisedModule",
    "TrainConfig",
    "build_module",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import a public name from its module when it is first asked for."""
    if name not in _HOMES:
        raise AttributeError(f"module 'mile_ssl' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
