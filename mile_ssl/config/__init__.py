"""Structured configuration: one dataclass per Hydra config group, composed into one.

The dataclasses are the schema Hydra merges YAML and command-line overrides into, so a
misspelt key fails at composition time, and ``__post_init__`` checks ranges when the
composed config is converted to objects (``OmegaConf.to_object``), before any compute.
They hold every default: the YAML presets in ``configs/`` state only what they change.
Code past the CLI receives these typed objects, never raw ``DictConfig``.

The groups live in their own modules (``method``, ``data``,
``network``, ``training``) and are importable from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from mile_ssl.config.data import BACKENDS, DATASETS, SPLITS, DataConfig, DigitsConfig
from mile_ssl.config.method import (
    EMPTY_PSEUDO_LABELS,
    METHODS,
    MILE_VARIANTS,
    MULTI_LABEL_METHODS,
    SUPERVISED_METHODS,
    TEACHER_METHODS,
    DistillConfig,
    MethodConfig,
    MileConfig,
)
from mile_ssl.config.network import INITS, BackboneConfig, CheckpointConfig
from mile_ssl.config.overrides import normalise_overrides
from mile_ssl.config.training import (
    LOGGERS,
    PRECISIONS,
    OptimConfig,
    TrainerConfig,
    check_schedule,
    check_warmup,
)

__all__ = [
    "BACKENDS",
    "DATASETS",
    "EMPTY_PSEUDO_LABELS",
    "INITS",
    "LOGGERS",
    "METHODS",
    "MILE_VARIANTS",
    "MULTI_LABEL_METHODS",
    "PRECISIONS",
    "SPLITS",
    "SUPERVISED_METHODS",
    "TEACHER_METHODS",
    "BackboneConfig",
    "CheckpointConfig",
    "DataConfig",
    "DigitsConfig",
    "DistillConfig",
    "MethodConfig",
    "MileConfig",
    "OptimConfig",
    "TrainConfig",
    "TrainerConfig",
    "check_warmup",
    "compose_train_config",
    "register_configs",
    "to_train_config",
]


@dataclass
class TrainConfig:
    """Everything one fine-tuning run needs."""

    method: MethodConfig = field(default_factory=MethodConfig)
    mile: MileConfig = field(default_factory=MileConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.trainer.max_epochs is None and self.optim.warmup_epochs is None:
            check_warmup(self.optim.warmup_steps, self.trainer.max_steps)
        check_schedule(self.optim, self.trainer)


def register_configs() -> None:
    """Register the schema the primary YAML's defaults list names (``base_config``).

    The resolver of the default run folder name (``hydra.run.dir``) belongs to the run
    folder's layout: :func:`mile_ssl.runs.layout.register_run_name_resolver`.
    """
    ConfigStore.instance().store(name="base_config", node=TrainConfig)


def to_train_config(config: Any) -> TrainConfig:
    """Convert a composed ``DictConfig`` into validated dataclasses.

    Raises:
        ValueError: Naming the first key whose value is out of range.
    """
    from omegaconf import OmegaConf

    config_object = OmegaConf.to_object(config)
    if not isinstance(config_object, TrainConfig):
        raise TypeError(f"expected a TrainConfig, got {type(config_object).__name__}")
    return config_object


def compose_train_config(overrides: list[str] | None = None) -> TrainConfig:
    """Compose the shipped configs with Hydra override strings, as ``mile-ssl train`` does.

    Args:
        overrides: E.g. ``["method=sigmoid", "data.fraction=0.1"]``.

    Raises:
        ValueError: If an override names a key that moved, or a value is out of range.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("mile_ssl.configs", version_base="1.3"):
        composed = compose("config", overrides=normalise_overrides(overrides or []))
    return to_train_config(composed)
