"""Errors a user can cause, shown as one message and exit status 2 instead of a traceback.

Every module raises ordinary exceptions whose message names the file, key or value at
fault (``ValueError`` and its subclasses such as ``CheckpointError``, ``OSError`` for
files, Hydra's and OmegaConf's composition errors). The command line turns exactly these
into one message; anything else is a bug in mile_ssl and keeps its traceback. Setting
``MILE_SSL_DEBUG=1`` shows the traceback of user errors too.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml
from hydra.errors import HydraException, MissingConfigException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

DEBUG_VARIABLE = "MILE_SSL_DEBUG"
EXIT_USER_ERROR = 2
EXIT_SIGINT = 130
"""Exit status of a command stopped by Ctrl-C (128 + SIGINT, as shells report it)."""
EXIT_BROKEN_PIPE = 141

USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FloatingPointError,
    OSError,
    pickle.UnpicklingError,
    yaml.YAMLError,
    HydraException,
    OmegaConfBaseException,
    MisconfigurationException,
)
"""Exception types that mean "the input is wrong", not "mile_ssl is wrong".

``FloatingPointError`` is a run that diverged
(``mile_ssl.finetune.divergence.DivergenceError``): the learning rate the user chose is at
fault, and the message says which step and rate.
"""


def debugging() -> bool:
    """Whether the user asked for tracebacks (``MILE_SSL_DEBUG`` set and not 0)."""
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def describe(error: BaseException) -> str:
    """The message of ``error``, with the OmegaConf detail Hydra keeps in its cause.

    OmegaConf's lines naming the schema classes are left out: they name mile_ssl's
    internals, not anything the user wrote (``full_key`` names the key).
    """
    schema_message = _against_schema(error)
    if schema_message is not None:
        return schema_message
    message = str(error).strip() or type(error).__name__
    cause = error.__cause__
    if isinstance(error, HydraException) and isinstance(cause, OmegaConfBaseException):
        detail = str(cause).strip()
        if detail and detail not in message:
            message = f"{message}\n{detail}"
    return "\n".join(
        line
        for line in message.splitlines()
        if not line.strip().startswith(("reference_type=", "object_type="))
    )


def _against_schema(error: BaseException) -> str | None:
    """A "did you mean" for Hydra's unknown group option or key, if ``error`` is one.

    Hydra's own messages list a group's options with its config search path, and answer
    a misspelt key with how to add it.
    """
    from mile_ssl.config.keys import unknown_key_message, unknown_option_message

    missing, options = getattr(error, "missing_cfg_file", None), getattr(error, "options", None)
    if isinstance(error, MissingConfigException) and missing and "/" in missing and options:
        return unknown_option_message(missing, options)
    cause = error.__cause__
    if isinstance(error, HydraException) and isinstance(
        cause, (ConfigKeyError, ConfigAttributeError)
    ):
        full_key = getattr(cause, "full_key", None)
        return unknown_key_message(full_key) if full_key else None
    return None


@contextmanager
def exit_on_user_error(command: str) -> Iterator[None]:
    """Print a user error as ``mile-ssl COMMAND: error: ...`` and exit with status 2.

    Args:
        command: The subcommand, for the message's prefix.
    """
    try:
        yield
    except BrokenPipeError:
        # The reader went away (``mile-ssl checkpoints | head``): stop quietly, as a
        # shell tool killed by SIGPIPE does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(EXIT_BROKEN_PIPE) from None
    except USER_ERRORS as error:
        if debugging():
            raise
        print(
            f"mile-ssl {command}: error: {describe(error)}\n"
            f"(set {DEBUG_VARIABLE}=1 to see the traceback)",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_USER_ERROR) from None


@contextmanager
def interrupt_without_traceback(command: str) -> Iterator[None]:
    """Ctrl-C outside training (start-up, evaluation): one line and status 130.

    Training itself turns the first Ctrl-C into a resumable checkpoint
    (:mod:`mile_ssl.runs.guard`); before it starts there is nothing to save.
    """
    try:
        yield
    except KeyboardInterrupt:
        if debugging():
            raise
        print(f"mile-ssl {command}: interrupted; nothing to resume", file=sys.stderr)
        raise SystemExit(EXIT_SIGINT) from None


class _HeldInterrupt:
    """A Ctrl-C held while Hydra prepares a run folder (see :func:`holding_interrupts`)."""

    def __init__(self) -> None:
        self.pending = False
        self.previous: Any = None

    def hold(self, signum: int, frame: Any) -> None:
        self.pending = True


_held = _HeldInterrupt()


@contextmanager
def holding_interrupts() -> Iterator[None]:
    """Hold a Ctrl-C until :func:`release_interrupts`, for the block.

    Hydra creates the run folder and writes its records before the job function runs; a
    Ctrl-C landing there would stop Hydra half-way. Held, it is raised once the job runs,
    and the start that it stops is undone (:mod:`mile_ssl.runs.failed_start`).
    """
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    ):
        yield
        return
    _held.pending, _held.previous = False, signal.signal(signal.SIGINT, _held.hold)
    try:
        yield
    finally:
        release_interrupts(raise_held=False)


def release_interrupts(raise_held: bool = True) -> None:
    """Give Ctrl-C its usual meaning again; raise the one held, if any."""
    if _held.previous is None:
        return
    signal.signal(signal.SIGINT, _held.previous)
    _held.previous = None
    if _held.pending and raise_held:
        _held.pending = False
        raise KeyboardInterrupt
