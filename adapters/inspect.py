"""Describe what a checkpoint holds and what loading it keeps, for ``mile-ssl inspect``.

Before fine-tuning from a downloaded checkpoint, a user wants to know which format it
was read as, which architecture it becomes, which parts of the file were used and
which were dropped (heads, momentum encoders, queues), and which input normalisation
the weights expect. :func:`describe_checkpoint` answers by loading the file exactly as
training would (through :func:`~mile_ssl.adapters.loading.load_backbone`, strict), so
a description is also proof that the file loads; :func:`format_description` renders it
for a terminal. The description is plain data, ready for JSON.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mile_ssl.networks.backbones import BackboneSpec

from .diagnostics import group_keys
from .loading import load_backbone


def describe_checkpoint(
    path: str | os.PathLike[str],
    adapter: str = "auto",
    backbone: BackboneSpec | None = None,
) -> dict[str, Any]:
    """Load a checkpoint and describe it.

    Args:
        path: The checkpoint file, or a run folder (as for ``load_backbone``).
        adapter: Adapter name, or ``"auto"`` to detect the format.
        backbone: The architecture, for formats that do not state it.

    Returns:
        A JSON-ready dict with ``path`` (the file read), ``format`` (the adapter),
        ``backbone`` (``{"name", "kwargs"}``), ``feature_dim``, ``parameters`` (of the
        loaded backbone), ``tensors`` (entries of its state dict), ``source_prefix``
        (where in the file the backbone was taken from, or ``None``), ``kept`` and
        ``dropped`` (key group -> number of keys, see
        :func:`~mile_ssl.adapters.diagnostics.group_keys`) and ``preprocessing``
        (``{"mean", "std"}``).

    Raises:
        FileNotFoundError: If the file does not exist.
        CheckpointError: If the file cannot be loaded, as ``load_backbone`` would.
    """
    loaded = load_backbone(path, adapter=adapter, backbone=backbone)
    state_dict = loaded.module.state_dict()
    return {
        "path": str(loaded.source),
        "format": loaded.adapter,
        "backbone": {"name": loaded.spec.name, "kwargs": dict(loaded.spec.kwargs)},
        "feature_dim": loaded.feature_dim,
        "parameters": sum(parameter.numel() for parameter in loaded.module.parameters()),
        "tensors": len(state_dict),
        "source_prefix": loaded.expected_prefix,
        "kept": group_keys(state_dict),
        "dropped": group_keys(loaded.dropped),
        "preprocessing": loaded.preprocessing.to_dict(),
    }


def format_description(description: Mapping[str, Any]) -> str:
    """Render :func:`describe_checkpoint`'s result as aligned, readable lines.

    Args:
        description: The dict returned by :func:`describe_checkpoint`.

    Returns:
        Multi-line text (no trailing newline).
    """
    backbone = description["backbone"]
    kwargs = f" {backbone['kwargs']}" if backbone["kwargs"] else ""
    preprocessing = description["preprocessing"]
    prefix = description["source_prefix"]
    lines = [
        f"checkpoint     {description['path']}",
        f"format         {description['format']}",
        f"backbone       {backbone['name']}{kwargs}",
        f"parameters     {description['parameters']:,} ({description['feature_dim']}-d features)",
        f"taken from     {f'keys under {prefix!r}' if prefix else 'the state dict as is'}",
        f"preprocessing  mean {_floats(preprocessing['mean'])}, "
        f"std {_floats(preprocessing['std'])}",
        "",
        f"kept: {description['tensors']} tensors",
        *_group_lines(description["kept"]),
    ]
    dropped = description["dropped"]
    lines.append(f"dropped: {sum(dropped.values())} keys" if dropped else "dropped: nothing")
    lines += _group_lines(dropped)
    return "\n".join(lines)


def _floats(values: list[float]) -> str:
    return "(" + ", ".join(f"{value:.4g}" for value in values) + ")"


def _group_lines(groups: Mapping[str, int]) -> list[str]:
    width = max((len(name) for name in groups), default=0)
    return [f"  {name:<{width}}  {count}" for name, count in groups.items()]
