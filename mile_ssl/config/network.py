"""Config groups of the network: ``backbone`` (architecture) and ``checkpoint`` (weights)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mile_ssl.config.checks import require, require_choice

INITS = ("checkpoint", "scratch")


@dataclass
class BackboneConfig:
    """Architecture of the network that is fine-tuned.

    Attributes:
        name: See :class:`mile_ssl.networks.backbones.BackboneSpec`. ``null`` (``backbone=auto``,
            the default) takes the architecture the checkpoint states or its adapter
            infers; without a checkpoint (``checkpoint=scratch``) it is ``tiny_resnet``.
            A name the checkpoint contradicts is an error.
        kwargs: Builder arguments.
        channels_last: Run convolutions in channels-last memory format (faster with
            bf16 on CPUs and GPUs).
        drop_path_rate: Stochastic depth of a timm backbone (timm's ``drop_path_rate``:
            the last block drops its residual branches with this probability, earlier
            ones linearly less); ``null`` keeps the architecture's default (none).
    """

    name: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    channels_last: bool = True
    drop_path_rate: float | None = None

    def __post_init__(self) -> None:
        require(
            self.drop_path_rate is None or 0.0 <= self.drop_path_rate < 1.0,
            "backbone.drop_path_rate",
            "in [0, 1) or null",
            self.drop_path_rate,
        )


@dataclass
class CheckpointConfig:
    """The pretrained weights the backbone starts from.

    Attributes:
        init: ``checkpoint`` loads ``path`` (the default: fine-tuning never silently
            starts from random weights); ``scratch`` trains from random weights.
        path: Checkpoint file.
        name: A public checkpoint by name (``mile-ssl checkpoints`` lists them), found in
            the cache or downloaded and checked; replaces ``path``.
        adapter: Adapter that reads ``path``; ``auto`` detects it from the file.
        projection_layers: Projection-head layers to keep on top of the backbone
            (SimCLR-v2 fine-tunes from the first); 0 keeps none.
    """

    init: str = "checkpoint"
    path: str | None = None
    name: str | None = None
    adapter: str = "auto"
    projection_layers: int = 0

    def __post_init__(self) -> None:
        require_choice("checkpoint.init", self.init, INITS)
        if self.path is not None and self.name is not None:
            raise ValueError(
                f"config keys 'checkpoint.path' ({self.path}) and 'checkpoint.name' "
                f"({self.name}) both name the checkpoint; set one of them"
            )
        require(
            self.projection_layers >= 0,
            "checkpoint.projection_layers",
            ">= 0",
            self.projection_layers,
        )
