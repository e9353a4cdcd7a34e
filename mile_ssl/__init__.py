"""mile_ssl: fine-tune self-supervised checkpoints with multi-label iterated learning."""

from mile_ssl.config import MethodConfig, MileConfig, OptimConfig, TrainConfig
from mile_ssl.finetune import (
    Classifier,
    FineTuneModule,
    FixedTeacherModule,
    MILeModule,
    SupervisedModule,
    build_module,
)

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
