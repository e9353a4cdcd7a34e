"""mile_ssl: fine-tune self-supervised checkpoints with multi-label iterated learning."""

from mile_ssl.config import MethodConfig, MileConfig, OptimConfig, TrainConfig
from mile_ssl.method import Classifier, MILeModule

__all__ = ["Classifier", "MILeModule", "MethodConfig", "MileConfig", "OptimConfig", "TrainConfig"]
__version__ = "0.1.0"
