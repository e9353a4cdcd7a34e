"""The project's own backbone checkpoint: weights together with how to rebuild and feed them.

A converted or fine-tuned backbone is saved with its architecture and preprocessing, so
that ``load_backbone(path)`` needs no other configuration and cannot pair the weights
with the wrong model or the wrong input statistics. The file holds only tensors and
plain containers, so it loads with ``torch.load(..., weights_only=True)``.

Layout (version 1)::

    {
        "format": "mile_ssl.backbone",
        "version": 1,
        "backbone": {"name": str, "kwargs": dict},
        "preprocessing": {"mean": [float, ...], "std": [float, ...]},
        "state_dict": {str: Tensor},
        "metadata": dict,
    }
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mile_ssl.networks.backbones import BackboneSpec, build_backbone
from mile_ssl.networks.preprocessing import Preprocessing

from .conversion import AdapterOptions, ConvertedCheckpoint, refuse_projection_layers
from .diagnostics import describe_mismatch
from .registry import register_adapter

FORMAT = "mile_ssl.backbone"
"""Value of the ``format`` key identifying these files."""

VERSION = 1
"""Layout version written by :func:`save_backbone_checkpoint` and the only one read."""


def _to_plain(value: Any, where: str) -> Any:
    """Copy ``value`` as dicts, lists, scalars and tensors, which ``weights_only`` accepts.

    Config objects (e.g. OmegaConf's ``DictConfig`` / ``ListConfig``) are mappings and
    sequences, so they are turned into plain ones here instead of being pickled as
    classes that a safe load would refuse.
    """
    if value is None or isinstance(value, bool | int | float | str | Tensor):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        plain: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a non-string key {key!r}")
            plain[key] = _to_plain(item, f"{where}[{key!r}]")
        return plain
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return [_to_plain(item, f"{where}[{index}]") for index, item in enumerate(value)]
    raise TypeError(
        f"{where} is a {type(value).__name__}; a backbone checkpoint holds only dicts, "
        "lists, str, int, float, bool, None and tensors so that it loads safely"
    )


def save_backbone_checkpoint(
    path: str | os.PathLike[str],
    module: nn.Module,
    spec: BackboneSpec,
    preprocessing: Preprocessing,
    *,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``module``'s weights with the architecture and preprocessing they need.

    The state dict is checked against ``build_backbone(spec)`` (built on the meta
    device, so no memory is spent) before anything is written: a file whose spec does
    not match its weights would only fail later, at load time, far from its cause.
    The file is written to a temporary name in the same directory and moved into place
    with ``os.replace``, so an interrupted write never leaves a truncated checkpoint
    and never destroys a previous file at ``path``.

    Args:
        path: Destination file; parent directories are created.
        module: The backbone, as built by ``build_backbone(spec)``.
        spec: Its architecture.
        preprocessing: The input normalisation its weights expect.
        metadata: Extra plain information (source checkpoint, training step, ...).

    Returns:
        The written path.

    Raises:
        ValueError: If the module's state dict does not match ``spec``, or ``path``
            ends with ``.safetensors`` (this format is a torch file).
        TypeError: If ``spec.kwargs`` or ``metadata`` hold values other than plain
            containers, scalars and tensors.
    """
    destination = Path(path)
    if destination.suffix == ".safetensors":
        raise ValueError(
            f"{destination}: a {FORMAT} checkpoint is a torch file; use a .pt or .pth name"
        )
    state_dict = {key: value.detach().cpu() for key, value in module.state_dict().items()}
    with torch.device("meta"):
        reference, _ = build_backbone(spec)
    problems = describe_mismatch(reference.state_dict(), state_dict)
    if problems:
        raise ValueError(
            f"refusing to write {destination}: the module's weights do not match backbone "
            f"{spec.name!r} with kwargs {spec.kwargs}: " + "; ".join(problems)
        )
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "backbone": {"name": spec.name, "kwargs": _to_plain(spec.kwargs, "backbone kwargs")},
        "preprocessing": preprocessing.to_dict(),
        "state_dict": state_dict,
        "metadata": _to_plain(metadata or {}, "metadata"),
    }
    destination.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.NamedTemporaryFile: its 0600 mode would carry over to the checkpoint.
    temporary = destination.with_name(
        f".{destination.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    )
    try:
        with temporary.open("xb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, destination)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return destination


def detect_mile_ssl(raw: Mapping[str, Any]) -> bool:
    """Whether ``raw`` declares itself a mile_ssl backbone checkpoint (any version)."""
    return raw.get("format") == FORMAT


def _field(raw: Mapping[str, Any], key: str, kind: type, what: str = FORMAT) -> Any:
    value = raw.get(key)
    if not isinstance(value, kind):
        raise ValueError(
            f"{what} field {key!r} should be a {kind.__name__}, got {type(value).__name__}"
        )
    return value


@register_adapter("mile_ssl", detect=detect_mile_ssl)
def convert_mile_ssl(raw: Mapping[str, Any], options: AdapterOptions) -> ConvertedCheckpoint:
    """Read a checkpoint written by :func:`save_backbone_checkpoint`.

    Args:
        raw: The checkpoint mapping.
        options: Conversion options; the saved backbone has no projection head.

    Returns:
        The weights with the architecture and preprocessing stored alongside them.

    Raises:
        ValueError: If the version is not one this code reads (a newer layout may mean
            something different by the same keys), or a field is missing or malformed.
    """
    refuse_projection_layers(options, "mile_ssl")
    version = raw.get("version")
    if version != VERSION:
        raise ValueError(
            f"unsupported {FORMAT} version {version!r}; this mile_ssl reads version "
            f"{VERSION} (a newer version needs a newer mile_ssl)"
        )
    backbone = _field(raw, "backbone", Mapping)
    name = _field(backbone, "name", str)
    kwargs = _field(backbone, "kwargs", Mapping)
    preprocessing = Preprocessing.from_dict(dict(_field(raw, "preprocessing", Mapping)))
    state_dict = _field(raw, "state_dict", Mapping)
    return ConvertedCheckpoint(
        state_dict=dict(state_dict),
        backbone=BackboneSpec(name=name, kwargs=dict(kwargs)),
        preprocessing=preprocessing,
    )


RUN_PREFIX = "student.backbone."
"""Where a fine-tuning run's checkpoint keeps the network it evaluates (the student's)."""


def detect_mile_ssl_run(raw: Mapping[str, Any]) -> bool:
    """Whether ``raw`` is a checkpoint of a ``mile-ssl train`` run (``last.ckpt``, ``stepN``)."""
    state_dict = raw.get("state_dict")
    return (
        isinstance(raw.get("mile_ssl"), Mapping)
        and isinstance(state_dict, Mapping)
        and any(isinstance(key, str) and key.startswith(RUN_PREFIX) for key in state_dict)
    )


@register_adapter("mile_ssl_run", detect=detect_mile_ssl_run)
def convert_mile_ssl_run(raw: Mapping[str, Any], options: AdapterOptions) -> ConvertedCheckpoint:
    """The fine-tuned network of a finished (or stopped) run, to start a new fine-tuning.

    SimCLR-v2's distillation may start its student from the fine-tuned teacher; this is
    how a mile_ssl run does: ``checkpoint.path=RUN/checkpoints/last.ckpt``. The evaluated
    network (the student, its backbone only) is taken with the architecture and
    preprocessing the run recorded; its classifier head, a MILe teacher and a fixed
    distillation teacher are dropped, so the new run may have other classes. Continuing
    the run itself is ``trainer.resume_from``, not this.

    Raises:
        ValueError: If the run's record lacks the network's architecture or preprocessing.
    """
    refuse_projection_layers(options, "mile_ssl_run")
    what = "mile_ssl run checkpoint"
    metadata = _field(raw["mile_ssl"], "metadata", Mapping, what)
    backbone = _field(metadata, "backbone", Mapping, what)
    preprocessing = Preprocessing.from_dict(dict(_field(metadata, "preprocessing", Mapping, what)))
    state_dict = raw["state_dict"]
    return ConvertedCheckpoint(
        state_dict={
            key[len(RUN_PREFIX) :]: value
            for key, value in state_dict.items()
            if key.startswith(RUN_PREFIX)
        },
        backbone=BackboneSpec(
            name=_field(backbone, "name", str, what),
            kwargs=dict(_field(backbone, "kwargs", Mapping, what)),
        ),
        preprocessing=preprocessing,
        dropped=tuple(key for key in state_dict if not key.startswith(RUN_PREFIX)),
        expected_prefix=RUN_PREFIX,
    )
