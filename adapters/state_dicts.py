"""State-dict surgery: the pure steps adapters are built from.

A self-supervised checkpoint holds the backbone somewhere inside a larger mapping, under
a prefix, next to heads, momentum encoders and optimiser state. Every adapter finds it
with the same few operations: :func:`unwrap` descends to the tensors, :func:`select`
and :func:`drop` keep or remove a prefix's keys, :func:`strip_prefix` renames them and
:func:`extract` does all three while recording what was left behind. Files saved by
hand have no fixed container or prefix: :func:`top_level_state_dicts` lists the
candidates and :func:`common_prefix` finds the path their keys share. They are pure
functions of mappings, so each can be tested, and each adapter read, without a model.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

from .errors import SHOWN

DEFAULT_CONTAINER_KEYS: tuple[str, ...] = ("state_dict", "model", "module", "net", "network")
"""Keys under which training scripts commonly nest the state dict, tried in order."""

DATA_PARALLEL_PREFIX = "module."
"""Prefix that ``nn.DataParallel`` / ``DistributedDataParallel`` add to every key."""


def is_tensor_dict(value: object) -> bool:
    """Whether ``value`` is a non-empty mapping of string keys to tensors: a state dict."""
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
    while not is_tensor_dict(current):
        key = next((k for k in keys if isinstance(current.get(k), Mapping)), None)
        if key is None:
            where = "".join(f"[{k!r}]" for k in trail) or "the top level"
            raise ValueError(
                f"no state dict found at {where}: expected a mapping of tensors or one of "
                f"the container keys {list(keys)}, got keys {list(current)[: SHOWN * 2]}"
            )
        trail.append(key)
        current = current[key]
    return dict(current)


def top_level_state_dicts(raw: Mapping[str, Any]) -> dict[str | None, dict[str, Tensor]]:
    """The state dicts a file holds at its top level, by the key each is saved under.

    People save a network as ``torch.save(model.state_dict(), f)`` or under a key of
    their choosing (``{"model": ...}``, lightly's tutorial ``{"resnet18_parameters":
    ...}``), often beside an optimiser state and counters, which are not mappings of
    tensors. A file that is a state dict itself is returned under ``None``.
    """
    if is_tensor_dict(raw):
        return {None: dict(raw)}
    return {key: dict(value) for key, value in raw.items() if is_tensor_dict(value)}


def common_prefix(keys: Iterable[str]) -> str:
    """The module path every key starts with, ending with ``"."``; ``""`` when none is shared.

    A network saved from inside another (``self.encoder = resnet``, a DataParallel
    ``module.``) has every key under the path of its attribute, while the keys of a
    network saved by itself branch at once (``conv1.``, ``bn1.``, ``layer1.``). Only
    whole module names count, and a key's last part, the tensor's name, never does.
    """
    paths = [key.split(".")[:-1] for key in keys]
    shared = os.path.commonprefix(paths) if paths else []
    return "".join(f"{name}." for name in shared)


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


def first_prefix(state_dict: Mapping[str, Any], prefixes: Iterable[str]) -> str | None:
    """The first of ``prefixes`` that some key starts with, or ``None``.

    Formats list where their network may sit, preferred layout first (``"module."``
    from a distributed run before the bare name); the first one present is the one used.
    """
    return next((prefix for prefix in prefixes if has_prefix(state_dict, prefix)), None)
