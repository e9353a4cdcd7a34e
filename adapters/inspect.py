"""Describe what a checkpoint holds and what loading it keeps, for ``mile-ssl inspect``.

Before fine-tuning from a downloaded checkpoint, a user wants to know which format it
was read as, which architecture it becomes, which parts of the file were used (under
which key and prefix, renamed how) and which were dropped (heads, momentum encoders,
queues), which input normalisation the weights expect, and whether any weight is NaN or
infinite. :func:`describe_checkpoint` answers by loading the file exactly as
training would (through :func:`~mile_ssl.adapters.loading.load_backbone`, strict), so
a description is also proof that the file loads; :func:`format_description` renders it
for a terminal. The description is plain data, ready for JSON.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mile_ssl.networks.backbones import BackboneSpec

from .diagnostics import group_keys, non_finite_tensors
from .errors import INSPECT_OPTIONS, SettingSyntax
from .loading import load_backbone


def describe_checkpoint(
    path: str | os.PathLike[str],
    adapter: str = "auto",
    backbone: BackboneSpec | None = None,
    syntax: SettingSyntax = INSPECT_OPTIONS,
) -> dict[str, Any]:
    """Load a checkpoint and describe it.

    Tensors holding NaN or infinity are loaded and listed rather than refused, since
    finding them is a reason to inspect a file.

    Args:
        path: The checkpoint file, or a run folder (as for ``load_backbone``).
        adapter: Adapter name, or ``"auto"`` to detect the format.
        backbone: The architecture, for formats that do not state it.
        syntax: How the calling command sets the adapter and backbone, for hints in
            errors (``inspect``'s options by default).

    Returns:
        A JSON-ready dict with ``path`` (the file read), ``format`` (the adapter),
        ``backbone`` (``{"name", "kwargs"}``), ``feature_dim``, ``parameters`` (of the
        loaded backbone), ``tensors`` (taken from the file, as loading counts them),
        ``container`` (the top-level key they were under, for formats that may use
        any key, else ``None``), ``source_prefix`` (the prefix removed, or ``None``),
        ``renamed`` (how the keys were renamed, or ``None``), ``kept``, ``filled_in``
        (BatchNorm counters the file lacks, which loading sets to zero) and ``dropped``
        (key group -> number of keys, see
        :func:`~mile_ssl.adapters.diagnostics.group_keys`), ``non_finite`` (key ->
        number of NaN or infinite values) and ``preprocessing`` (``{"mean", "std"}``).

    Raises:
        FileNotFoundError: If the file does not exist.
        CheckpointError: If the file cannot be loaded, as ``load_backbone`` would.
    """
    loaded = load_backbone(
        path, adapter=adapter, backbone=backbone, syntax=syntax, allow_non_finite=True
    )
    state_dict = loaded.module.state_dict()
    kept = {key: state_dict[key] for key in loaded.kept}
    return {
        "path": str(loaded.source),
        "format": loaded.adapter,
        "backbone": {"name": loaded.spec.name, "kwargs": dict(loaded.spec.kwargs)},
        "feature_dim": loaded.feature_dim,
        "parameters": sum(parameter.numel() for parameter in loaded.module.parameters()),
        "tensors": len(kept),
        "container": loaded.container,
        "source_prefix": loaded.expected_prefix,
        "renamed": loaded.renaming,
        "kept": group_keys(kept),
        "filled_in": group_keys(key for key in state_dict if key not in kept),
        "dropped": group_keys(loaded.dropped),
        "non_finite": non_finite_tensors(kept),
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
    lines = [
        f"checkpoint     {description['path']}",
        f"format         {description['format']}",
        f"backbone       {backbone['name']}{kwargs}",
        f"parameters     {description['parameters']:,} ({description['feature_dim']}-d features)",
        f"taken from     {_taken_from(description)}",
    ]
    if description["renamed"]:
        lines.append(f"renamed        {description['renamed']}")
    lines += [
        f"preprocessing  mean {_floats(preprocessing['mean'])}, "
        f"std {_floats(preprocessing['std'])}",
        "",
        f"kept: {description['tensors']} tensors",
        *_group_lines(description["kept"]),
    ]
    filled_in = description["filled_in"]
    if filled_in:
        lines.append(
            f"not in the file: {sum(filled_in.values())} BatchNorm num_batches_tracked "
            "counters, set to 0 when loading"
        )
    dropped = description["dropped"]
    lines.append(f"dropped: {sum(dropped.values())} keys" if dropped else "dropped: nothing")
    lines += _group_lines(dropped)
    lines += _non_finite_lines(description["non_finite"])
    return "\n".join(lines)


def _taken_from(description: Mapping[str, Any]) -> str:
    prefix, container = description["source_prefix"], description["container"]
    if container is None:
        return f"keys under {prefix!r}" if prefix else "the state dict as is"
    return f"keys under {prefix!r} in {container!r}" if prefix else f"the state dict {container!r}"


def _non_finite_lines(non_finite: Mapping[str, int]) -> list[str]:
    if not non_finite:
        return []
    return [
        f"NOT FINITE: {len(non_finite)} tensors hold NaN or infinity; train refuses this file",
        *_group_lines(non_finite),
    ]


def _floats(values: list[float]) -> str:
    return "(" + ", ".join(f"{value:.4g}" for value in values) + ")"


def _group_lines(groups: Mapping[str, int]) -> list[str]:
    width = max((len(name) for name in groups), default=0)
    return [f"  {name:<{width}}  {count}" for name, count in groups.items()]
