"""Reading checkpoint files safely, whatever their format.

Checkpoints are downloaded from the internet, and unpickling one in full runs whatever
code it names. Every file is therefore read by a reader that executes nothing from it:
``torch.load(..., weights_only=True)`` by default, safetensors for ``.safetensors`` and
:class:`~.safe_pickle.SafeUnpickler` for ``.pkl`` (BYOL's Haiku checkpoints, pickled
numpy arrays). The result is the file's top-level mapping, which adapters' ``detect``
and ``convert`` receive. Readers of other suffixes are added with
:func:`register_reader`; a corrupt or refused file raises a
:class:`~.errors.CheckpointError` that names it and says why.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor

from .errors import SHOWN, CheckpointError
from .safe_pickle import PickledObject, RefusedPickleError, SafeUnpickler, arrays_to_tensors

LAST_CHECKPOINT_NAME = "last.ckpt"
"""The file picked in a run folder holding several ``.ckpt`` files (Lightning's name)."""
RUN_CHECKPOINT_FOLDER = "checkpoints"
"""Where a Lightning run folder (a mile_ssl run's included) keeps its ``.ckpt`` files."""

_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
"""First object of a pre-1.6 ``torch.save`` file (``torch.serialization.MAGIC_NUMBER``)."""

ReaderFn = Callable[[Path], Mapping[str, Any]]
"""A reader: the top-level mapping of a file, read without executing anything from it."""

_READERS: dict[str, ReaderFn] = {}


def register_reader(*suffixes: str) -> Callable[[ReaderFn], ReaderFn]:
    """Register a reader for files whose name ends in one of ``suffixes``.

    Files of other suffixes are read with ``torch.load(..., weights_only=True)``. A
    reader must execute nothing from the file; it returns the top-level mapping that
    adapters' ``detect`` and ``convert`` receive.

    Raises:
        ValueError: If a suffix already has a reader.
    """

    def decorator(reader: ReaderFn) -> ReaderFn:
        for suffix in suffixes:
            if suffix in _READERS:
                raise ValueError(f"a checkpoint reader for {suffix!r} files is already registered")
            _READERS[suffix] = reader
        return reader

    return decorator


def resolve_checkpoint_path(path: str | os.PathLike[str]) -> Path:
    """The checkpoint file that ``path`` designates.

    A file is returned as is. A folder stands for the run that wrote it (solo-learn and
    Lightning keep ``<name>-ep=<N>.ckpt`` or ``last.ckpt`` next to the run's
    ``args.json``): its single ``.ckpt`` file is used, or ``last.ckpt`` when there are
    several. A folder with no ``.ckpt`` file of its own but a ``checkpoints/`` folder
    is a Lightning run folder (a mile_ssl run's too), read the same way. Any other
    choice among several epochs would be a guess, so it is refused.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        CheckpointError: If the folder holds no ``.ckpt`` file, or several and no
            ``last.ckpt``; the message lists them.
    """
    path = Path(path)
    if not path.is_dir():
        if not path.exists():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        return path
    candidates = sorted(child for child in path.glob("*.ckpt") if child.is_file())
    if len(candidates) == 1:
        return candidates[0]
    last = path / LAST_CHECKPOINT_NAME
    if last in candidates:
        return last
    if not candidates:
        if (path / RUN_CHECKPOINT_FOLDER).is_dir():
            return resolve_checkpoint_path(path / RUN_CHECKPOINT_FOLDER)
        raise CheckpointError(
            f"checkpoint folder {path} holds no .ckpt file (found "
            f"{sorted(child.name for child in path.iterdir())[: SHOWN * 2]}); pass the "
            "checkpoint file itself"
        )
    raise CheckpointError(
        f"checkpoint folder {path} holds {len(candidates)} .ckpt files "
        f"{[child.name for child in candidates][: SHOWN * 2]} and no {LAST_CHECKPOINT_NAME}; "
        "pass the one to load"
    )


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint file into a mapping without executing code from it.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(..., weights_only=True)``, which refuses pickled objects other than
    tensors and plain containers. Checkpoints are downloaded from the internet, and a
    full unpickle would run whatever code the file contains.

    Args:
        path: The checkpoint file.

    Returns:
        The top-level mapping of the file (for safetensors: the tensors by name).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        IsADirectoryError: If ``path`` is a directory.
        CheckpointError: If the file is refused for safety, cannot be parsed, or does
            not hold a mapping with string keys.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint path is a directory, expected a file: {path}")
    reader = _READERS.get(path.suffix.lower())
    raw: object = reader(path) if reader is not None else _read_torch(path)
    if not isinstance(raw, Mapping):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(raw).__name__}, expected a mapping "
            "(a state dict or a dict containing one)"
        )
    non_str = [key for key in raw if not isinstance(key, str)]
    if non_str:
        raise CheckpointError(
            f"checkpoint {path} has non-string top-level keys {non_str[:SHOWN]}; "
            "expected a state dict or a dict containing one"
        )
    return dict(raw)


@register_reader(".safetensors")
def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except SafetensorError as exc:
        raise CheckpointError(f"cannot read safetensors file {path}: {exc}") from exc


_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_UNPICKLER_REASON = re.compile(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", re.DOTALL)


def _read_torch(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except OSError as exc:
        # torch's zip reader reports a truncated or damaged archive as a bare OSError
        # ("Invalid argument") that does not name the file.
        raise CheckpointError(
            f"cannot read {path} as a PyTorch checkpoint: it is corrupted or truncated "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    except pickle.UnpicklingError as exc:
        message = str(exc)
        found = _UNSAFE_GLOBAL.search(message)
        weights_only_refusal = (
            "Weights only load failed" in message and "Unsupported operand" not in message
        )
        if found or weights_only_refusal:
            culprit = f" (it references {found.group(1)})" if found else ""
            raise CheckpointError(
                f"checkpoint {path} holds arbitrary pickled Python objects{culprit} and is "
                "refused for safety: loading it would run code from the file. Re-save only "
                "the tensors, e.g. torch.save(checkpoint['state_dict'], 'clean.pth'), from "
                "a copy you trust, or convert it to .safetensors"
            ) from exc
        reason = _UNPICKLER_REASON.search(message)
        detail = reason.group(1).strip() if reason else message.splitlines()[0]
        raise CheckpointError(
            f"cannot read {path} as a PyTorch checkpoint: it is not a torch.save file or "
            f"it is corrupted ({detail})"
        ) from exc
    except Exception as exc:
        # torch.load surfaces corrupt or foreign files as RuntimeError, KeyError,
        # EOFError, ... depending on the bytes; all of them mean "not a checkpoint".
        raise CheckpointError(
            f"cannot read {path} as a PyTorch checkpoint: it is not a torch.save file or "
            f"it is corrupted ({type(exc).__name__}: {exc})"
        ) from exc


@register_reader(".pkl")
def read_pickle(path: Path) -> dict[str, Any]:
    """Read a ``.pkl`` checkpoint with :class:`SafeUnpickler`, arrays as tensors.

    ``torch.save`` files that were named ``.pkl`` are recognised and read like any
    other PyTorch checkpoint (``weights_only=True``).

    Args:
        path: The file.

    Returns:
        The pickled top-level dict, with numeric numpy arrays converted to tensors and
        objects of other classes left as :class:`PickledObject` stand-ins.

    Raises:
        CheckpointError: If the file is truncated, corrupted, not a pickle, or does not
            hold a dict.
    """
    if zipfile.is_zipfile(path):
        return cast("dict[str, Any]", _read_torch(path))
    try:
        with path.open("rb") as file:
            raw = SafeUnpickler(file).load()
    except OSError:
        raise
    except RefusedPickleError as exc:
        raise CheckpointError(
            f"{path} is refused: {exc}; nothing from the file was executed"
        ) from exc
    except Exception as exc:
        # The unpickler reports truncated or foreign bytes as EOFError,
        # UnpicklingError, ValueError, ... depending on where the data stops making
        # sense; a TypeError also arises when the pickle calls an unbuilt stand-in.
        raise CheckpointError(
            f"cannot read {path} as a pickle: it is truncated, corrupted or not a pickle, "
            f"or it uses objects that were not built ({type(exc).__name__}: {exc})"
        ) from exc
    if isinstance(raw, int) and raw == _LEGACY_TORCH_MAGIC:
        return cast("dict[str, Any]", _read_torch(path))
    if not isinstance(raw, dict):
        what = repr(raw) if isinstance(raw, PickledObject) else type(raw).__name__
        raise CheckpointError(
            f"checkpoint {path} holds {what}, expected a dict (BYOL's checkpoints hold "
            "{'step', 'rng', 'experiment_state'}); nothing in it was executed"
        )
    try:
        return cast("dict[str, Any]", arrays_to_tensors(raw, {}))
    except RecursionError as exc:
        raise CheckpointError(f"checkpoint {path} is nested too deeply to read") from exc
