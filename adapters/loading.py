"""Loading a checkpoint into a backbone: read, convert, resolve the architecture, load strictly.

:func:`load_backbone` strings the steps together: :func:`~.reading.read_checkpoint`,
the adapter the registry picks (:func:`~.registry.choose_adapter`), the architecture
agreed between the user and the file, and a strict load. Every key must be accounted
for, because a silently missing layer leaves random weights in a "pretrained" model and
ruins the fine-tuning run without any visible error.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from mile_ssl.networks.backbones import BackboneSpec, build_backbone
from mile_ssl.networks.preprocessing import Preprocessing
from mile_ssl.networks.vit import (
    TIMM_RESAMPLING,
    GridResampling,
    is_vit,
    patch_grid,
    position_embedding,
    resample_position_embedding,
    vit_spec_at,
)

from .conversion import AdapterOptions, ConvertedCheckpoint
from .diagnostics import check_finite, check_state_dict, describe_source, describe_spec
from .errors import OVERRIDES, SHOWN, CheckpointError, CheckpointMismatchError, SettingSyntax
from .reading import read_checkpoint, resolve_checkpoint_path
from .registry import Adapter, choose_adapter

logger = logging.getLogger(__name__)


@dataclass
class LoadedBackbone:
    """A backbone built and loaded from a checkpoint, with what is known about it.

    Attributes:
        module: The headless backbone with the checkpoint's weights.
        feature_dim: Width of its pooled features.
        spec: The architecture, so it can be saved and rebuilt.
        preprocessing: The input normalisation the weights expect.
        adapter: Name of the adapter that converted the file.
        source: The checkpoint file (``None`` for a randomly initialised backbone).
        dropped: Keys of the file the adapter intentionally discarded, so that callers
            can log or assert what was left out.
        expected_prefix: Where in the file the backbone was taken from (see
            :class:`ConvertedCheckpoint`).
        kept: The keys loaded from the file: the module's state dict, less the
            BatchNorm ``num_batches_tracked`` counters of files saved without them.
        container: The file's top-level key the backbone was under, for formats that
            may keep it under any key (see :class:`ConvertedCheckpoint`).
        renaming: How the file's keys were renamed, in words, when they were.
    """

    module: nn.Module
    feature_dim: int
    spec: BackboneSpec
    preprocessing: Preprocessing
    adapter: str
    source: Path | None
    dropped: tuple[str, ...] = ()
    expected_prefix: str | None = None
    kept: tuple[str, ...] = ()
    container: str | None = None
    renaming: str | None = None


def load_backbone(
    path: str | os.PathLike[str],
    *,
    adapter: str = "auto",
    backbone: BackboneSpec | None = None,
    projection_layers: int = 0,
    image_size: int | None = None,
    syntax: SettingSyntax = OVERRIDES,
    allow_non_finite: bool = False,
) -> LoadedBackbone:
    """Build a backbone and load a checkpoint into it, strictly.

    Args:
        path: The checkpoint file, or a run folder holding it (see
            :func:`resolve_checkpoint_path`: its single ``.ckpt``, else ``last.ckpt``).
        adapter: Registered adapter name, or ``"auto"`` to pick the single adapter
            whose ``detect`` accepts the file.
        backbone: The architecture. Needed when the file does not state it; when both
            do, they must agree, since loading weights into a different architecture
            than the one they were saved from is never intended.
        projection_layers: Projection-head layers to keep (see :class:`AdapterOptions`).
        image_size: The fine-tuning resolution. A ViT is built for it and the file's
            position embedding resampled to its patch grid, the way the format's own
            code does (:mod:`mile_ssl.networks.vit`); other networks take any size.
        syntax: How the calling command lets its user set the adapter and backbone,
            quoted by the hints of errors.
        allow_non_finite: Load tensors holding NaN or infinity instead of refusing the
            file, for ``inspect``, which reports them.

    Returns:
        The loaded backbone, its feature width, spec and preprocessing.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If ``adapter`` names no registered adapter.
        CheckpointError: If the file is unsafe or unreadable, a folder holds no single
            checkpoint to pick, no single adapter matches, the adapter rejects it, or
            the architecture is unknown or contradictory.
        NonFiniteWeightsError: If a tensor to load holds NaN or infinity.
        CheckpointMismatchError: If any key is missing, unexpected or has a different
            shape than in the backbone.
    """
    source = resolve_checkpoint_path(path)
    raw = read_checkpoint(source)
    options = AdapterOptions(
        source=source, projection_layers=projection_layers, backbone=backbone, syntax=syntax
    )
    chosen, converted = _convert(raw, adapter, source, options, allow_non_finite)
    spec = _resolve_spec(backbone, converted.backbone, source, chosen.name, syntax)
    if image_size is not None:
        spec = vit_spec_at(spec, image_size)
    module, feature_dim, state_dict = _build_and_load(spec, converted, source, chosen.name)

    preprocessing = converted.preprocessing or Preprocessing()
    logger.info(
        "loaded %d tensors from %s into %s with adapter %r; dropped %d keys%s",
        len(state_dict),
        source,
        spec.name,
        chosen.name,
        len(converted.dropped),
        f" (first: {list(converted.dropped[:SHOWN])})" if converted.dropped else "",
    )
    return LoadedBackbone(
        module=module,
        feature_dim=feature_dim,
        spec=spec,
        preprocessing=preprocessing,
        adapter=chosen.name,
        source=source,
        dropped=converted.dropped,
        expected_prefix=converted.expected_prefix,
        kept=tuple(state_dict),
        container=converted.container,
        renaming=converted.renaming,
    )


def _convert(
    raw: Mapping[str, Any],
    adapter: str,
    source: Path,
    options: AdapterOptions,
    allow_non_finite: bool,
) -> tuple[Adapter, ConvertedCheckpoint]:
    """The adapter ``adapter`` names or detects, and its conversion of ``raw``.

    Raises:
        CheckpointError: If no single adapter matches or the adapter rejects the file.
        NonFiniteWeightsError: If a converted tensor holds NaN or infinity, unless allowed.
    """
    chosen = choose_adapter(raw, adapter, source, options.syntax)
    try:
        converted = chosen.convert(raw, options)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"adapter {chosen.name!r} cannot convert {source}: {exc}") from exc
    if not allow_non_finite:
        check_finite(
            converted.state_dict,
            source=source,
            adapter=chosen.name,
            expected_prefix=converted.expected_prefix,
        )
    return chosen, converted


def _build_and_load(
    spec: BackboneSpec, converted: ConvertedCheckpoint, source: Path, adapter: str
) -> tuple[nn.Module, int, dict[str, Tensor]]:
    """Build ``spec`` and load the converted tensors into it, strictly.

    Returns:
        The module, its feature width, and the tensors loaded (a ViT's position
        embedding resampled to the module's grid).

    Raises:
        CheckpointError: If the backbone cannot be built.
        CheckpointMismatchError: If the tensors do not fit it key for key and shape for
            shape.
    """
    try:
        module, feature_dim = build_backbone(spec)
    except ValueError as exc:
        raise CheckpointError(f"cannot build backbone for {source}: {exc}") from exc

    # A fresh plain dict: no ``_metadata`` from the file, so torch treats missing
    # BatchNorm ``num_batches_tracked`` counters as legacy and fills them in.
    state_dict = dict(converted.state_dict)
    _fit_position_embedding(module, state_dict, converted.grid_resampling, source)
    check_state_dict(
        module,
        state_dict,
        source=source,
        adapter=adapter,
        spec=spec,
        expected_prefix=converted.expected_prefix,
    )
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointMismatchError(
            f"{describe_source(source, adapter, converted.expected_prefix)} "
            f"cannot be loaded into {spec.name!r}: {exc}"
        ) from exc
    return module, feature_dim, state_dict


def _fit_position_embedding(
    module: nn.Module,
    state_dict: dict[str, Any],
    resampling: GridResampling | None,
    source: Path,
) -> None:
    """Resample a ViT checkpoint's ``pos_embed`` in place when the grid it was built for differs."""
    pos_embed = state_dict.get("pos_embed")
    if not is_vit(module) or pos_embed is None:
        return
    positions = position_embedding(module).shape
    if pos_embed.shape == positions:
        return
    try:
        state_dict["pos_embed"] = resample_position_embedding(
            pos_embed, module, resampling or TIMM_RESAMPLING
        )
    except ValueError as exc:
        raise CheckpointMismatchError(f"{source}: {exc}") from exc
    logger.info(
        "resampled the position embedding of %s from %d to %d positions (patch grid %s)",
        source,
        pos_embed.shape[1],
        positions[1],
        "x".join(str(side) for side in patch_grid(module)),
    )


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively, so that config lists equal saved tuples."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _resolve_spec(
    given: BackboneSpec | None,
    stated: BackboneSpec | None,
    source: Path,
    adapter: str,
    syntax: SettingSyntax = OVERRIDES,
) -> BackboneSpec:
    """The architecture to build: the file's, else the user's; refused when they differ.

    Loading weights into another architecture than the one they were saved from is
    never intended, so a contradiction is an error that says how to resolve it, in the
    spelling of the command that loads the file (``syntax``).
    """
    if given is None:
        if stated is None:
            raise CheckpointError(
                f"{source} (adapter {adapter!r}) does not state its architecture; set "
                f"{syntax.backbone.format('<name>')} (e.g. 'torchvision:resnet50') to say "
                "which backbone it holds"
            )
        return stated
    if stated is None:
        return given
    given_kwargs, stated_kwargs = _plain(given.kwargs), _plain(stated.kwargs)
    contradicted = [key for key in given_kwargs if given_kwargs[key] != stated_kwargs.get(key)]
    if given.name != stated.name or contradicted:
        # Naming the file's architecture without its builder details (e.g. backbone=resnet50
        # for a file with TF "SAME" padding) is agreement; only a different value is not.
        raise CheckpointError(
            f"backbone {describe_spec(given)} was requested, but {source} (adapter "
            f"{adapter!r}) holds {describe_spec(stated)}. Leave the backbone unset "
            f"({syntax.backbone_unset}) to use the file's architecture, or set "
            f"{syntax.backbone.format(stated.name)}{_kwargs_overrides(stated, syntax)}"
        )
    return stated


def _kwargs_overrides(spec: BackboneSpec, syntax: SettingSyntax) -> str:
    """The settings of ``spec.kwargs``, where the command takes them."""
    if syntax.backbone_kwarg is None:
        return ""
    return "".join(
        " " + syntax.backbone_kwarg.format(key, json.dumps(_plain(value)).replace(" ", ""))
        for key, value in spec.kwargs.items()
    )
