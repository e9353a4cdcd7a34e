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
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from hydra.errors import HydraException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf.errors import OmegaConfBaseException

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
    Ctrl-C landing there would leave that folder behind. Held, it is raised once the job
    can remove the folder again (:func:`removed_on_user_error`).
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


def holds_only(directory: Path, names: set[str]) -> bool:
    """Whether ``directory`` exists and holds nothing but entries named in ``names``."""
    return directory.is_dir() and all(child.name in names for child in directory.iterdir())


@contextmanager
def removed_on_user_error(directory: Path, own_files: set[str]) -> Iterator[None]:
    """Remove ``directory`` if a user error stops the job before it wrote anything.

    Hydra creates a run directory (its ``.hydra`` record and the job's log) before the
    job runs; a job that fails on bad input should leave nothing behind. The directory
    is removed only if it held nothing but ``own_files`` when the job started and still
    does, so an existing run directory (e.g. one being resumed into) and the checkpoints
    of a run that failed midway are never touched; so are the
    date folders above it, under the working directory, that it leaves empty.

    Args:
        directory: The run directory.
        own_files: Names of the entries Hydra wrote for this job.
    """
    fresh = holds_only(directory, own_files)
    try:
        yield
    except (KeyboardInterrupt, SystemExit) as stop:
        # Bad input, or Ctrl-C during start-up: a folder holding nothing of the run goes.
        stopped_early = isinstance(stop, KeyboardInterrupt) or stop.code == EXIT_USER_ERROR
        if fresh and stopped_early and holds_only(directory, own_files):
            shutil.rmtree(directory, ignore_errors=True)
            _remove_empty_parents(directory)
        raise


def _remove_empty_parents(directory: Path) -> None:
    """Remove the emptied date folders above a run directory, up to the working directory."""
    working = Path.cwd().resolve()
    for parent in directory.resolve().parents:
        if parent == working or working not in parent.parents:
            return
        try:
            parent.rmdir()
        except OSError:  # not empty
            return
