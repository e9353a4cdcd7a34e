"""Fine-tuning methods as small LightningModules, one class per family of methods.

* :class:`~mile_ssl.finetune.base.FineTuneModule` (``base.py``): what all share:
  optimisers, learning-rate schedule, divergence check, step counter, logging,
  validation metrics and the checkpoint entry.
* :class:`~mile_ssl.finetune.supervised.SupervisedModule`: ``softmax`` and ``sigmoid``.
* :class:`~mile_ssl.finetune.mile.MILeModule`: MILe, both variants and semi-supervised.
* :class:`~mile_ssl.finetune.baselines.FixedTeacherModule`: ``distill`` and ``self_train``.
* :class:`~mile_ssl.finetune.settings.ModuleSettings`: the one record every class is
  built from (``from_settings``); :func:`~mile_ssl.finetune.factory.build_module` builds
  the class of a run's ``method.name`` from it.
"""

from mile_ssl.finetune.base import CHECKPOINT_KEY, FineTuneModule
from mile_ssl.finetune.baselines import FixedTeacherModule
from mile_ssl.finetune.divergence import DivergenceError
from mile_ssl.finetune.factory import (
    METHOD_CLASSES,
    build_module,
    module_class,
    module_from_settings,
)
from mile_ssl.finetune.mile import MILeModule
from mile_ssl.finetune.networks import Classifier, copy_weights_
from mile_ssl.finetune.settings import ModuleSettings
from mile_ssl.finetune.supervised import SupervisedModule

__all__ = [
    "CHECKPOINT_KEY",
    "METHOD_CLASSES",
    "Classifier",
    "DivergenceError",
    "FineTuneModule",
    "FixedTeacherModule",
    "MILeModule",
    "ModuleSettings",
    "SupervisedModule",
    "build_module",
    "copy_weights_",
    "module_class",
    "module_from_settings",
]
