"""The adapter registry: formats by name, detection of a file's format, and plugins.

Loading a self-supervised checkpoint is split into small pure steps, so each can be
tested without a model and a new format only needs a ``convert`` function:

1. :func:`~.reading.read_checkpoint` reads the file safely into a mapping.
2. An adapter, registered here by name with :func:`register_adapter` and picked by name
   or by its ``detect`` (:func:`choose_adapter`), turns that mapping into a
   :class:`~.conversion.ConvertedCheckpoint`, using the surgery of :mod:`.state_dicts`.
3. :func:`~.loading.load_backbone` builds the backbone and loads the tensors strictly.

Third-party packages add formats through the entry-point group ``mile_ssl.adapters``
(:data:`ENTRY_POINT_GROUP`): each entry point names a module or a callable that
registers adapters when loaded. They are loaded lazily, once, on the first lookup
(:func:`get_adapter`, :func:`available_adapters`, :func:`matching_adapters`), so that
importing mile_ssl stays cheap and a broken plugin only costs a warning.
"""

from __future__ import annotations

import importlib.metadata
import logging
import types
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .conversion import ConvertFn, DetectFn
from .diagnostics import describe_contents
from .errors import OVERRIDES, CheckpointError, SettingSyntax

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "mile_ssl.adapters"
"""Entry-point group of third-party adapter plugins (a module or a callable each)."""


@dataclass(frozen=True)
class Adapter:
    """A registered checkpoint format.

    Attributes:
        name: Registry name, used in configs (``adapter: mocov2``) and error messages.
        convert: Pure function from the raw checkpoint mapping to a
            :class:`~.conversion.ConvertedCheckpoint`.
        detect: Cheap test on the raw mapping (keys only, no tensor work) telling
            whether this adapter understands the file; used by ``adapter="auto"``.
        signature: What ``detect`` looks for, in words; listed when no adapter or
            several adapters recognise a file, next to what the file holds.
        run_file: A file the format's training code writes beside its checkpoints
            (solo-learn's ``args.json``). Found next to a checkpoint, it is evidence of
            the format that ``detect_in_run`` weighs instead of ``detect``.
        detect_in_run: The weaker test applied to files with ``run_file`` beside them.
        fallback: A format defined by what any network's state dict looks like (a
            hand-saved file) rather than by marks of its own: its ``detect`` is asked
            only when no other adapter recognises the file, so that the files of every
            named format keep their adapter.
    """

    name: str
    convert: ConvertFn
    detect: DetectFn
    signature: str = ""
    run_file: str | None = None
    detect_in_run: DetectFn | None = None
    fallback: bool = False

    def recognises_run(self, raw: Mapping[str, Any], source: Path | None) -> bool:
        """Whether ``source`` lies in a run folder of this format and ``raw`` fits it."""
        if self.run_file is None or self.detect_in_run is None or source is None:
            return False
        return (source.parent / self.run_file).is_file() and self.detect_in_run(raw)


_ADAPTERS: dict[str, Adapter] = {}
_plugins_loaded = False


def register_adapter(
    name: str,
    *,
    detect: DetectFn,
    signature: str = "",
    run_file: str | None = None,
    detect_in_run: DetectFn | None = None,
    fallback: bool = False,
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
        fallback: See :class:`Adapter`.

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
            fallback=fallback,
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

    Fallback adapters (:attr:`Adapter.fallback`) are asked only when no other matches.
    """
    load_plugins()
    in_run = [name for name, adapter in _ADAPTERS.items() if adapter.recognises_run(raw, source)]
    if len(in_run) == 1:
        return in_run
    for fallback in (False, True):
        names = sorted(
            name
            for name, adapter in _ADAPTERS.items()
            if adapter.fallback is fallback and adapter.detect(raw)
        )
        if names:
            return names
    return []


def choose_adapter(
    raw: Mapping[str, Any], name: str, source: Path, syntax: SettingSyntax = OVERRIDES
) -> Adapter:
    """The adapter named ``name``, or for ``"auto"`` the single one that recognises ``raw``.

    Guessing between several candidates, or forcing the only registered format on a file
    none recognises, would load the wrong tensors; both are refused with what the file
    holds beside what each candidate looks for, so that the user can name one.

    Args:
        raw: The checkpoint mapping.
        name: A registered adapter name, or ``"auto"``.
        source: The file ``raw`` came from, named in errors.
        syntax: How the command that loads it lets its user name an adapter, for hints.

    Raises:
        ValueError: If ``name`` is not registered.
        CheckpointError: If detection fails, or no adapter or several recognise ``raw``.
    """
    if name != "auto":
        return get_adapter(name)
    hint = syntax.adapter.format("<name>")
    try:
        names = matching_adapters(raw, source)
    except Exception as exc:
        raise CheckpointError(
            f"auto-detecting the format of {source} failed ({type(exc).__name__}: {exc}); "
            f"pass {hint} to choose one"
        ) from exc
    if len(names) == 1:
        return _ADAPTERS[names[0]]
    if not names:
        raise CheckpointError(
            f"no checkpoint adapter recognises {source}.\n"
            f"  The file holds: {describe_contents(raw)}\n"
            f"  Available adapters and what each looks for:\n{_signatures(available_adapters())}\n"
            f"  Pass {hint} to force one"
        )
    raise CheckpointError(
        f"{source} is recognised by several checkpoint adapters: {names}.\n"
        f"  The file holds: {describe_contents(raw)}\n"
        f"  What each of them looks for:\n{_signatures(names)}\n"
        f"  Pass {hint} to choose one"
    )


def _signatures(names: list[str]) -> str:
    return "\n".join(
        f"    {name}: {_ADAPTERS[name].signature or '(no description)'}" for name in names
    )
