"""Adapter registry and the loading chain shared by every checkpoint format.

Loading a self-supervised checkpoint is split into small pure steps, so each can be
tested without a model and a new format only needs a ``convert`` function:

1. :func:`read_checkpoint` reads the file safely (``weights_only=True``) into a mapping.
2. An adapter (picked by name or by its ``detect``) turns that mapping into a
   :class:`ConvertedCheckpoint`: backbone tensors named like the target backbone, plus
   whatever the file states about the architecture and preprocessing. Adapters are
   built from :func:`unwrap`, :func:`strip_prefix`, :func:`select` and :func:`drop`.
3. :func:`load_backbone` builds the backbone and loads the tensors strictly: every key
   must be accounted for, because a silently missing layer leaves random weights in a
   "pretrained" model and ruins the fine-tuning run without any visible error.

Third-party packages add formats through the entry-point group ``mile_ssl.adapters``
(:data:`ENTRY_POINT_GROUP`): each entry point names a module or a callable that
registers adapters when loaded. They are loaded lazily, once, on the first lookup
(:func:`get_adapter`, :func:`available_adapters`, :func:`matching_adapters`), so that
importing mile_ssl stays cheap and a broken plugin only costs a warning.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import pickle
import re
import types
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mile_ssl.backbones import BackboneSpec, build_backbone
from mile_ssl.preprocessing import Preprocessing

logger = logging.getLogger(__name__)

DEFAULT_CONTAINER_KEYS: tuple[str, ...] = ("state_dict", "model", "module", "net", "network")
"""Keys under which training scripts commonly nest the state dict, tried in order."""

_SHOWN = 5
"""How many offending keys an error message lists; enough to see the pattern."""

ENTRY_POINT_GROUP = "mile_ssl.adapters"
"""Entry-point group of third-party adapter plugins (a module or a callable each)."""

LAST_CHECKPOINT_NAME = "last.ckpt"
"""The file picked in a run folder holding several ``.ckpt`` files (Lightning's name)."""


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file and the reason."""


class CheckpointMismatchError(CheckpointError):
    """The converted state dict does not match the backbone key for key and shape for shape."""


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
    """

    state_dict: dict[str, Tensor]
    backbone: BackboneSpec | None = None
    preprocessing: Preprocessing | None = None
    dropped: tuple[str, ...] = ()
    expected_prefix: str | None = None

    def __post_init__(self) -> None:
        bad = [
            key
            for key, value in self.state_dict.items()
            if not isinstance(key, str) or not isinstance(value, Tensor)
        ]
        if bad:
            raise TypeError(
                f"a converted state dict maps str keys to tensors; offending keys: {bad[:_SHOWN]}"
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
    """

    source: Path | None = None
    projection_layers: int = 0
    backbone: BackboneSpec | None = None


ConvertFn = Callable[[Mapping[str, Any], AdapterOptions], ConvertedCheckpoint]
DetectFn = Callable[[Mapping[str, Any]], bool]
ReaderFn = Callable[[Path], Mapping[str, Any]]


def refuse_projection_layers(options: AdapterOptions, adapter: str) -> None:
    """Fail when a projection head is requested from a format that has none to offer."""
    if options.projection_layers:
        raise ValueError(
            f"checkpoint.projection_layers={options.projection_layers} is not supported by "
            f"the {adapter!r} adapter (its checkpoints carry no projection head to keep)"
        )


@dataclass(frozen=True)
class Adapter:
    """A registered checkpoint format.

    Attributes:
        name: Registry name, used in configs (``adapter: mocov2``) and error messages.
        convert: Pure function from the raw checkpoint mapping to a
            :class:`ConvertedCheckpoint`.
        detect: Cheap test on the raw mapping (keys only, no tensor work) telling
            whether this adapter understands the file; used by ``adapter="auto"``.
        signature: What ``detect`` looks for, in words; listed when no adapter or
            several adapters recognise a file, next to what the file holds.
        run_file: A file the format's training code writes beside its checkpoints
            (solo-learn's ``args.json``). Found next to a checkpoint, it is evidence of
            the format that ``detect_in_run`` weighs instead of ``detect``.
        detect_in_run: The weaker test applied to files with ``run_file`` beside them.
    """

    name: str
    convert: ConvertFn
    detect: DetectFn
    signature: str = ""
    run_file: str | None = None
    detect_in_run: DetectFn | None = None

    def recognises_run(self, raw: Mapping[str, Any], source: Path | None) -> bool:
        """Whether ``source`` lies in a run folder of this format and ``raw`` fits it."""
        if self.run_file is None or self.detect_in_run is None or source is None:
            return False
        return (source.parent / self.run_file).is_file() and self.detect_in_run(raw)


_ADAPTERS: dict[str, Adapter] = {}
_READERS: dict[str, ReaderFn] = {}
_plugins_loaded = False


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


def register_adapter(
    name: str,
    *,
    detect: DetectFn,
    signature: str = "",
    run_file: str | None = None,
    detect_in_run: DetectFn | None = None,
) -> Callable[[ConvertFn], ConvertFn]:
    """Register a ``convert`` function as the adapter ``name``.

    The decorated function is returned unchanged, so it stays a plain pure function
    that tests can call directly.

    Args:
        name: Registry name of the format.
        detect: Cheap predicate on the raw checkpoint mapping, see :class:`Adapter`.
        signature: What ``detect`` looks for, in words, for auto-detection errors.
        run_file: See :class:`Adapter`.
        detect_in_run: See :class:`Adapter`.

    Returns:
        A decorator registering its argument.

    Raises:
        ValueError: If ``name`` is already registered; silently replacing an adapter
            would make the loaded weights depend on import order.
    """

    def decorator(convert: ConvertFn) -> ConvertFn:
        if name in _ADAPTERS:
            raise ValueError(
                f"checkpoint adapter {name!r} is already registered "
                f"(by {_ADAPTERS[name].convert.__module__}); pick another name"
            )
        _ADAPTERS[name] = Adapter(
            name=name,
            convert=convert,
            detect=detect,
            signature=signature,
            run_file=run_file,
            detect_in_run=detect_in_run,
        )
        return convert

    return decorator


def unregister_adapter(name: str) -> Adapter:
    """Remove the adapter ``name`` and return it (for plugins and tests that clean up).

    Raises:
        ValueError: If no adapter has that name.
    """
    adapter = get_adapter(name)
    del _ADAPTERS[name]
    return adapter


def get_adapter(name: str) -> Adapter:
    """Return the adapter registered as ``name``.

    Raises:
        ValueError: If there is none; the message lists the available names.
    """
    load_plugins()
    try:
        return _ADAPTERS[name]
    except KeyError:
        raise ValueError(
            f"unknown checkpoint adapter {name!r}; available adapters: "
            f"{available_adapters()} (or 'auto' to detect it from the file)"
        ) from None


def available_adapters() -> list[str]:
    """Names of the registered adapters, sorted (plugins included)."""
    load_plugins()
    return sorted(_ADAPTERS)


def load_plugins() -> list[str]:
    """Load the adapter plugins of :data:`ENTRY_POINT_GROUP`, once per process.

    Each entry point names a module, whose import registers its adapters, or a
    callable, which is called without arguments to register them. Loading waits for
    the first lookup, so that importing mile_ssl never runs third-party code, and
    happens only once, since registering the same names twice would fail. A plugin
    that fails to load (missing module, exception, duplicate adapter name) is skipped
    with a :class:`RuntimeWarning` naming it: one broken third-party package must not
    make the built-in formats unusable.

    Returns:
        The names of the entry points loaded by this call; empty after the first call.
    """
    global _plugins_loaded
    if _plugins_loaded:
        return []
    # Set first: a plugin that looks adapters up while loading must not recurse.
    _plugins_loaded = True
    loaded = []
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            target = entry_point.load()
            if not isinstance(target, types.ModuleType):
                if not callable(target):
                    raise TypeError(
                        f"it names a {type(target).__name__}, expected a module or a callable"
                    )
                target()
        except Exception as exc:
            warnings.warn(
                f"checkpoint adapter plugin {entry_point.name!r} ({entry_point.value}) of "
                f"entry-point group {ENTRY_POINT_GROUP!r} failed to load and is ignored: "
                f"{type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        logger.debug(
            "loaded checkpoint adapter plugin %s (%s)", entry_point.name, entry_point.value
        )
        loaded.append(entry_point.name)
    return loaded


def matching_adapters(raw: Mapping[str, Any], source: Path | None = None) -> list[str]:
    """Names of the adapters whose ``detect`` accepts ``raw``, sorted.

    ``adapter="auto"`` needs exactly one; this is public so that a format's detection
    can be checked (and debugged) without loading anything.

    Args:
        raw: The checkpoint mapping.
        source: The file it came from. When exactly one adapter recognises the run
            folder around it (its ``run_file`` is there and ``detect_in_run`` accepts
            ``raw``), that evidence decides.
    """
    load_plugins()
    in_run = [name for name, adapter in _ADAPTERS.items() if adapter.recognises_run(raw, source)]
    if len(in_run) == 1:
        return in_run
    return sorted(name for name, adapter in _ADAPTERS.items() if adapter.detect(raw))


def resolve_checkpoint_path(path: str | os.PathLike[str]) -> Path:
    """The checkpoint file that ``path`` designates.

    A file is returned as is. A folder stands for the run that wrote it (solo-learn and
    Lightning keep ``<name>-ep=<N>.ckpt`` or ``last.ckpt`` next to the run's
    ``args.json``): its single ``.ckpt`` file is used, or ``last.ckpt`` when there are
    several. Any other choice among several epochs would be a guess, so it is refused.

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
        raise CheckpointError(
            f"checkpoint folder {path} holds no .ckpt file (found "
            f"{sorted(child.name for child in path.iterdir())[: _SHOWN * 2]}); pass the "
            "checkpoint file itself"
        )
    raise CheckpointError(
        f"checkpoint folder {path} holds {len(candidates)} .ckpt files "
        f"{[child.name for child in candidates][: _SHOWN * 2]} and no {LAST_CHECKPOINT_NAME}; "
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
            f"checkpoint {path} has non-string top-level keys {non_str[:_SHOWN]}; "
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


def _is_tensor_dict(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(key, str) and isinstance(item, Tensor) for key, item in value.items())
    )


def unwrap(
    raw: Mapping[str, Any], keys: tuple[str, ...] = DEFAULT_CONTAINER_KEYS
) -> dict[str, Tensor]:
    """Find the state dict inside a checkpoint mapping.

    Training scripts nest the weights under a container key next to optimizer state,
    epoch counters and so on (``{"state_dict": ..., "optimizer": ...}``), sometimes
    twice. This descends through the first matching container key at each level until
    it reaches a mapping of tensors.

    Args:
        raw: The checkpoint mapping, or a state dict itself.
        keys: Container keys to try, in order of preference.

    Returns:
        A new dict of the tensors (the input is not modified).

    Raises:
        ValueError: If no mapping made only of tensors is found.
    """
    current: Mapping[str, Any] = raw
    trail: list[str] = []
    while not _is_tensor_dict(current):
        key = next((k for k in keys if isinstance(current.get(k), Mapping)), None)
        if key is None:
            where = "".join(f"[{k!r}]" for k in trail) or "the top level"
            raise ValueError(
                f"no state dict found at {where}: expected a mapping of tensors or one of "
                f"the container keys {list(keys)}, got keys {list(current)[: _SHOWN * 2]}"
            )
        trail.append(key)
        current = current[key]
    return dict(current)


def strip_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Remove ``prefix`` from the start of every key that has it.

    Only a leading ``prefix`` is removed (``"module.encoder.module.x"`` loses its first
    ``"module."`` only); replacing the substring anywhere would corrupt keys that
    contain it in the middle. Keys without the prefix are kept as they are.

    Args:
        state_dict: Tensors by key.
        prefix: Literal prefix, usually ending with ``"."``.

    Returns:
        A new dict with the renamed keys, in the original order.

    Raises:
        ValueError: If stripping makes two keys collide, which would silently drop a
            tensor.
    """
    result: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new_key = key[len(prefix) :] if prefix and key.startswith(prefix) else key
        if new_key in result:
            raise ValueError(
                f"removing prefix {prefix!r} makes keys collide on {new_key!r}; the state "
                "dict holds both the prefixed and the unprefixed name"
            )
        result[new_key] = value
    return result


def select(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Keep the keys that start with ``prefix`` (names unchanged).

    The prefix is matched literally, so include the trailing dot (``"fc."``) to avoid
    also selecting ``"fc2.weight"``.
    """
    return {key: value for key, value in state_dict.items() if key.startswith(prefix)}


def drop(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Remove the keys that start with ``prefix``; the complement of :func:`select`."""
    return {key: value for key, value in state_dict.items() if not key.startswith(prefix)}


def extract(
    state_dict: Mapping[str, Tensor], prefix: str, *heads: str
) -> tuple[dict[str, Tensor], tuple[str, ...]]:
    """Split a checkpoint into the network under ``prefix`` and what is left behind.

    Args:
        state_dict: The checkpoint's tensors.
        prefix: Where the backbone lives (e.g. ``"module.encoder_q."``); removed.
        *heads: Prefixes, relative to ``prefix``, of heads to leave out (e.g. ``"fc."``).

    Returns:
        The backbone tensors with ``prefix`` removed and without ``heads``, and the
        keys of ``state_dict`` that were not kept (for ``ConvertedCheckpoint.dropped``).
    """
    kept = strip_prefix(select(state_dict, prefix), prefix)
    for head in heads:
        kept = drop(kept, head)
    dropped = tuple(
        key for key in state_dict if not (key.startswith(prefix) and key[len(prefix) :] in kept)
    )
    return kept, dropped


def has_prefix(keys: Iterable[str], prefix: str) -> bool:
    """Whether any key starts with ``prefix`` (a cheap test for ``detect`` functions)."""
    return any(isinstance(key, str) and key.startswith(prefix) for key in keys)


def group_keys(keys: Iterable[str]) -> dict[str, int]:
    """Count dotted keys per module group, at the depth where they branch.

    A chain of single modules is followed down (``module.encoder_q.`` rather than
    ``module.``), the modules where it branches become the groups, and a module that
    holds tensors directly or only numbered children (``fc.``, ``projection_head.`` of
    an ``nn.Sequential``) is never split further. A MoCo state dict thus reads
    ``{"module.encoder_q.": 320, "module.encoder_k.": 320, "module.queue": 1, ...}``
    and a ResNet ``{"conv1.": 1, "bn1.": 5, "layer1.": 30, ...}``: the level at which a
    person compares a file with a format's layout. Module groups end with ``"."``;
    single tensors are named in full.

    Args:
        keys: State-dict keys.

    Returns:
        Group name to number of keys, in first-seen order.
    """
    tails = [key.split(".") for key in keys]
    groups: dict[str, int] = {}
    if tails:
        _group_tails([], tails, groups, split=True)
    return groups


def _group_tails(
    path: list[str], tails: list[list[str]], groups: dict[str, int], *, split: bool
) -> None:
    children: dict[str, list[list[str]]] = {}
    for tail in tails:
        children.setdefault(tail[0], []).append(tail[1:])
    holds_tensors = all(not rest for rests in children.values() for rest in rests)
    if path and (holds_tensors or all(name.isdigit() for name in children)):
        _count(groups, ".".join(path) + ".", len(tails))
        return
    if len(children) == 1:
        (name, rest), *_ = children.items()
        if all(rest):
            _group_tails([*path, name], rest, groups, split=split)
            return
    if not split:
        _count(groups, ".".join(path) + ".", len(tails))
        return
    for name, rest in children.items():
        inner = [tail for tail in rest if tail]
        if inner:
            _group_tails([*path, name], inner, groups, split=False)
        if len(inner) < len(rest):
            _count(groups, ".".join([*path, name]), len(rest) - len(inner))


def _count(groups: dict[str, int], label: str, count: int) -> None:
    groups[label] = groups.get(label, 0) + count


def describe_contents(raw: Mapping[str, Any]) -> str:
    """Summarise what a checkpoint mapping holds, for errors about unrecognised files.

    Names the top-level keys with the kind of value each holds, then, for every
    top-level mapping of tensors (``state_dict``, DINO's ``teacher``, ...) and for the
    state dict :func:`unwrap` finds deeper, its size, first keys and key groups
    (:func:`group_keys`): what a person compares with a format's layout.
    """
    if not raw:
        return "the file holds an empty mapping (no keys at all)"
    if _is_tensor_dict(raw):
        return _describe_state_dict("a plain state dict", raw)
    lines = [
        "top-level keys: "
        + ", ".join(f"{key!r} ({_kind(value)})" for key, value in list(raw.items())[: _SHOWN * 2])
        + (f", ... ({len(raw)} in all)" if len(raw) > _SHOWN * 2 else "")
    ]
    nested = {key: value for key, value in raw.items() if _is_tensor_dict(value)}
    try:
        found: dict[str, Tensor] | None = unwrap(raw)
    except ValueError:
        found = None
    if found is not None and not any(found.keys() == value.keys() for value in nested.values()):
        lines.append(_describe_state_dict("nested state dict", found))
    lines += [
        _describe_state_dict(f"state dict under {key!r}", value) for key, value in nested.items()
    ]
    if found is None and not nested:
        lines.append(f"no state dict found directly or under {list(DEFAULT_CONTAINER_KEYS)}")
    return "\n  ".join(lines)


def _describe_state_dict(title: str, state_dict: Mapping[str, Tensor]) -> str:
    groups = list(group_keys(state_dict).items())
    shown = ", ".join(f"{name!r}: {count}" for name, count in groups[: _SHOWN * 2])
    more = f", ... ({len(groups)} groups)" if len(groups) > _SHOWN * 2 else ""
    return (
        f"{title}: {len(state_dict)} tensors, first keys {list(state_dict)[:_SHOWN]}, "
        f"key groups {{{shown}{more}}}"
    )


def _kind(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"tensor {list(value.shape)}"
    if isinstance(value, Mapping):
        return f"mapping of {len(value)}"
    if isinstance(value, list | tuple):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


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
    """

    module: nn.Module
    feature_dim: int
    spec: BackboneSpec
    preprocessing: Preprocessing
    adapter: str
    source: Path | None
    dropped: tuple[str, ...] = ()
    expected_prefix: str | None = None


def load_backbone(
    path: str | os.PathLike[str],
    *,
    adapter: str = "auto",
    backbone: BackboneSpec | None = None,
    projection_layers: int = 0,
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

    Returns:
        The loaded backbone, its feature width, spec and preprocessing.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If ``adapter`` names no registered adapter.
        CheckpointError: If the file is unsafe or unreadable, a folder holds no single
            checkpoint to pick, no single adapter matches, the adapter rejects it, or
            the architecture is unknown or contradictory.
        CheckpointMismatchError: If any key is missing, unexpected or has a different
            shape than in the backbone.
    """
    source = resolve_checkpoint_path(path)
    raw = read_checkpoint(source)
    chosen = _choose_adapter(raw, adapter, source)
    options = AdapterOptions(source=source, projection_layers=projection_layers, backbone=backbone)
    try:
        converted = chosen.convert(raw, options)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"adapter {chosen.name!r} cannot convert {source}: {exc}") from exc

    spec = _resolve_spec(backbone, converted.backbone, source, chosen.name)
    try:
        module, feature_dim = build_backbone(spec)
    except ValueError as exc:
        raise CheckpointError(f"cannot build backbone for {source}: {exc}") from exc

    # A fresh plain dict: no ``_metadata`` from the file, so torch treats missing
    # BatchNorm ``num_batches_tracked`` counters as legacy and fills them in.
    state_dict = dict(converted.state_dict)
    _check_state_dict(
        module,
        state_dict,
        source=source,
        adapter=chosen.name,
        spec=spec,
        expected_prefix=converted.expected_prefix,
    )
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointMismatchError(
            f"{source} (adapter {chosen.name!r}{_taken_from(converted.expected_prefix)}) "
            f"cannot be loaded into {spec.name!r}: {exc}"
        ) from exc

    preprocessing = converted.preprocessing or Preprocessing()
    logger.info(
        "loaded %d tensors from %s into %s with adapter %r; dropped %d keys%s",
        len(state_dict),
        source,
        spec.name,
        chosen.name,
        len(converted.dropped),
        f" (first: {list(converted.dropped[:_SHOWN])})" if converted.dropped else "",
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
    )


def _choose_adapter(raw: Mapping[str, Any], name: str, source: Path) -> Adapter:
    if name != "auto":
        return get_adapter(name)
    try:
        names = matching_adapters(raw, source)
    except Exception as exc:
        raise CheckpointError(
            f"auto-detecting the format of {source} failed ({type(exc).__name__}: {exc}); "
            "pass adapter=<name> to choose one"
        ) from exc
    if len(names) == 1:
        return _ADAPTERS[names[0]]
    if not names:
        raise CheckpointError(
            f"no checkpoint adapter recognises {source}.\n"
            f"  The file holds: {describe_contents(raw)}\n"
            f"  Available adapters and what each looks for:\n{_signatures(available_adapters())}\n"
            "  Pass adapter=<name> to force one"
        )
    raise CheckpointError(
        f"{source} is recognised by several checkpoint adapters: {names}.\n"
        f"  The file holds: {describe_contents(raw)}\n"
        f"  What each of them looks for:\n{_signatures(names)}\n"
        "  Pass adapter=<name> to choose one"
    )


def _signatures(names: list[str]) -> str:
    return "\n".join(
        f"    {name}: {_ADAPTERS[name].signature or '(no description)'}" for name in names
    )


def _taken_from(expected_prefix: str | None) -> str:
    return f", backbone taken from keys under {expected_prefix!r}" if expected_prefix else ""


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively, so that config lists equal saved tuples."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _resolve_spec(
    given: BackboneSpec | None, stated: BackboneSpec | None, source: Path, adapter: str
) -> BackboneSpec:
    if given is None:
        if stated is None:
            raise CheckpointError(
                f"{source} (adapter {adapter!r}) does not state its architecture; set "
                "backbone.name (e.g. 'torchvision:resnet50') to say which backbone it holds"
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
            f"backbone {given.name!r}{_kwargs(given)} was requested, but {source} (adapter "
            f"{adapter!r}) holds {stated.name!r}{_kwargs(stated)}. Leave the backbone unset "
            f"(backbone=auto, the default) to use the file's architecture, or set "
            f"backbone.name={stated.name}{_kwargs_overrides(stated)}"
        )
    return stated


def describe_mismatch(
    expected: Mapping[str, Tensor], state_dict: Mapping[str, Tensor]
) -> list[str]:
    """List how ``state_dict`` differs from a module's ``expected`` state dict.

    Missing BatchNorm ``num_batches_tracked`` counters are tolerated when the layer's
    ``running_mean`` is present: files saved before PyTorch 0.4.1 lack them and
    ``load_state_dict`` refills them itself. Everything else must match exactly.

    Args:
        expected: The target module's ``state_dict()``.
        state_dict: The tensors to load.

    Returns:
        One line per kind of problem (missing, unexpected, wrong shape), each with the
        count and the first few keys; empty when the two match.
    """
    missing = [
        key
        for key in expected
        if key not in state_dict and not _legacy_batchnorm_counter(key, state_dict)
    ]
    unexpected = [key for key in state_dict if key not in expected]
    wrong_shape = [
        f"{key}: checkpoint {list(state_dict[key].shape)} vs backbone {list(value.shape)}"
        for key, value in expected.items()
        if key in state_dict and state_dict[key].shape != value.shape
    ]
    lines = []
    for kind, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", wrong_shape),
    ):
        if items:
            shown = f"first {_SHOWN}: " if len(items) > _SHOWN else ""
            lines.append(f"{len(items)} {kind} ({shown}{items[:_SHOWN]})")
    return lines


def _legacy_batchnorm_counter(key: str, state_dict: Mapping[str, Tensor]) -> bool:
    suffix = ".num_batches_tracked"
    return key.endswith(suffix) and key[: -len(suffix)] + ".running_mean" in state_dict


def _check_state_dict(
    module: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    source: Path,
    adapter: str,
    spec: BackboneSpec,
    expected_prefix: str | None = None,
) -> None:
    problems = describe_mismatch(module.state_dict(), state_dict)
    if problems:
        raise CheckpointMismatchError(
            "\n  ".join(
                [
                    f"{source} (adapter {adapter!r}{_taken_from(expected_prefix)}) does not "
                    f"match backbone {spec.name!r}{_kwargs(spec)}:"
                ]
                + problems
                + ["check backbone.name and the adapter; nothing was loaded"]
            )
        )


def _kwargs(spec: BackboneSpec) -> str:
    return f" with {spec.kwargs}" if spec.kwargs else ""


def _kwargs_overrides(spec: BackboneSpec) -> str:
    """The Hydra overrides that set ``spec.kwargs`` on the command line."""
    return "".join(
        f" +backbone.kwargs.{key}={json.dumps(_plain(value)).replace(' ', '')}"
        for key, value in spec.kwargs.items()
    )
