"""What an adapter receives and returns: the contract between a format and the loader.

An adapter is a pure ``convert`` function from the raw checkpoint mapping and
:class:`AdapterOptions` to a :class:`ConvertedCheckpoint`, plus a cheap ``detect``
predicate. Keeping these types apart from the registry and the loader lets a format
(built in or a plugin) be written and tested against them alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from mile_ssl.networks.backbones import BackboneSpec
from mile_ssl.networks.preprocessing import Preprocessing
from mile_ssl.networks.vit import GridResampling

from .errors import OVERRIDES, SHOWN, SettingSyntax


@dataclass(frozen=True)
class ConvertedCheckpoint:
    """What an adapter extracts from a raw checkpoint.

    Attributes:
        state_dict: Backbone tensors only, named like the target backbone's own
            ``state_dict()`` so that they can be loaded strictly.
        backbone: The architecture, when the file states it; ``None`` means the user
            must name it.
        preprocessing: The input normalisation the weights were trained with, when the
            format knows it; ``None`` means ImageNet statistics.
        dropped: Keys intentionally discarded (classifier, projection heads, momentum
            encoder, ...), reported so that a user can check nothing useful was lost.
        expected_prefix: Where the adapter took the backbone from in the file (e.g.
            ``"module.encoder_q."``); named in mismatch errors, so that a user sees
            which part of the file was compared with the backbone. ``None`` when the
            keys were used as they are.
        container: The top-level key the state dict was found under, for files that
            may keep it under any key (a hand-saved ``{"model": ...}``, lightly's
            ``resnet18_parameters``); ``None`` where the format fixes it. ``inspect``
            reports it.
        renaming: How the keys were renamed to the backbone's, in words, when they
            were (``inspect`` reports it).
        grid_resampling: How the format's own code resizes a ViT's position embedding
            to another image size; ``None``: timm's way.
    """

    state_dict: dict[str, Tensor]
    backbone: BackboneSpec | None = None
    preprocessing: Preprocessing | None = None
    dropped: tuple[str, ...] = ()
    expected_prefix: str | None = None
    container: str | None = None
    renaming: str | None = None
    grid_resampling: GridResampling | None = None

    def __post_init__(self) -> None:
        bad = [
            key
            for key, value in self.state_dict.items()
            if not isinstance(key, str) or not isinstance(value, Tensor)
        ]
        if bad:
            raise TypeError(
                f"a converted state dict maps str keys to tensors; offending keys: {bad[:SHOWN]}"
            )


@dataclass(frozen=True)
class AdapterOptions:
    """What a conversion may depend on besides the file's contents.

    Attributes:
        source: The checkpoint file, for formats that keep metadata beside it (e.g.
            solo-learn's ``args.json``); ``None`` when converting an in-memory object.
        projection_layers: Number of projection-head layers to keep on top of the
            pooled features (SimCLR-v2 fine-tunes from the first one). Adapters of
            formats without such a head refuse a non-zero value.
        backbone: The architecture the user asked for, if any. Formats that keep the
            architecture outside the weights (solo-learn's ``args.json``) use it when
            that metadata is missing, instead of failing.
        syntax: How the command converting the file lets its user set the adapter and
            the backbone, for the hints of errors.
    """

    source: Path | None = None
    projection_layers: int = 0
    backbone: BackboneSpec | None = None
    syntax: SettingSyntax = OVERRIDES


ConvertFn = Callable[[Mapping[str, Any], AdapterOptions], ConvertedCheckpoint]
"""An adapter's conversion: raw checkpoint mapping and options to backbone tensors."""

DetectFn = Callable[[Mapping[str, Any]], bool]
"""An adapter's cheap test on the raw mapping, used by ``adapter="auto"``."""


def refuse_projection_layers(options: AdapterOptions, adapter: str) -> None:
    """Fail when a projection head is requested from a format that has none to offer."""
    if options.projection_layers:
        raise ValueError(
            f"checkpoint.projection_layers={options.projection_layers} is not supported by "
            f"the {adapter!r} adapter (its checkpoints carry no projection head to keep); "
            "set checkpoint.projection_layers=0"
        )
