"""Config keys and options checked against the schema, with a "did you mean" for typos.

Hydra answers a misspelt key with "To append to your config use +trainer.max_step=2",
which names the typo but not the key meant, and then accepts the ``+`` form into a
dataclass section that silently drops it. Here a key is looked up in the dataclasses
of :class:`~mile_ssl.config.TrainConfig` and a typo answered with the closest key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from typing import Any

LISTING_HINT = "mile-ssl train --cfg job lists every key"


def _section(hint: Any) -> Any:
    """The dataclass behind a field's type (``X | None`` -> ``X``), else ``None``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        hint = members[0] if len(members) == 1 else None
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def unknown_key_message(key: str) -> str | None:
    """Why ``key`` is not a config key, with the closest one; ``None`` if it may be one.

    Keys under a section the schema leaves free (``backbone.kwargs.*``, lists) and keys
    outside :class:`~mile_ssl.config.TrainConfig` (``hydra.*``, config groups) are not
    judged here.

    Args:
        key: A dotted config key without Hydra's ``+``/``++``/``~`` prefix.
    """
    from mile_ssl.config import TrainConfig

    parts = key.split(".")
    section: Any = TrainConfig
    for depth, part in enumerate(parts):
        fields = typing.get_type_hints(section)
        if part not in fields:
            prefix = ".".join(parts[:depth])
            close = difflib.get_close_matches(part, list(fields), n=1)
            if not close:
                where = f"in '{prefix}'" if prefix else "at the top level"
                return f"unknown key '{key}': no such key {where}; {LISTING_HINT}"
            meant = ".".join([*parts[:depth], close[0], *parts[depth + 1 :]])
            return f"unknown key '{key}'; did you mean '{meant}'?"
        section = _section(fields[part])
        if section is None:
            return None
    return None


def refuse_unknown_key(override: str) -> None:
    """Refuse an override of a dotted key the schema lacks, naming the closest key.

    Also for ``+key=...``, which Hydra would add to the section and the schema then drop.

    Raises:
        ConfigCompositionException: With :func:`unknown_key_message`, the error Hydra
            raises for a key it cannot override.
    """
    from hydra.errors import ConfigCompositionException

    if override.startswith(("-", "~")) or "=" not in override:
        return
    key = override.partition("=")[0].lstrip("+")
    if "." not in key or key.startswith("hydra.") or any(mark in key for mark in "@/"):
        return
    message = unknown_key_message(key)
    if message is not None:
        raise ConfigCompositionException(message)


def unknown_option_message(missing: str, options: Sequence[str]) -> str:
    """An unknown config group option, with the closest one and the list.

    Args:
        missing: The config Hydra could not find, ``<group>/<option>``
            (``method/mlie``, ``experiment/imagenet/mocov2_1pc``).
        options: The group's options, as Hydra lists them (for a nested option such as
            ``imagenet/mocov2_1pc`` Hydra lists only the group's top level; the shipped
            options of its folder are listed instead).
    """
    folder, _, option = missing.rpartition("/")
    group, _, subfolder = folder.partition("/")
    prefix = f"{subfolder}/" if subfolder else ""
    choices = _shipped_options(folder) if subfolder else list(options)
    text = f"unknown option '{group}={prefix}{option}'"
    close = difflib.get_close_matches(option, choices, n=1)
    if close:
        text += f"; did you mean '{group}={prefix}{close[0]}'?"
    return text + f" (options in '{folder}': {', '.join(choices) or 'none'})"


def _shipped_options(folder: str) -> list[str]:
    """The options mile_ssl ships in the config folder ``folder`` (``experiment/imagenet``)."""
    from importlib.resources import files

    try:
        entries = list(files("mile_ssl.configs").joinpath(folder).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(entry.name[: -len(".yaml")] for entry in entries if entry.name.endswith(".yaml"))
