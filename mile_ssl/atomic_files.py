"""Files that are either complete or absent, readable by the user's group as usual.

Every file a run, an export or a report writes goes through :func:`atomic_write`: the
bytes go to a hidden temporary file beside the target (``.NAME.XXXXXX.tmp``), are
flushed and fsynced, and the file is renamed over its name, which is atomic on POSIX
file systems. A full disk or a kill during the write therefore never leaves a 0-byte or
truncated file under a valid name, and the previous version stays intact. A kill -9
can still leave the temporary file itself; :func:`remove_stale_temporaries` clears a
folder's leftovers when the next run starts there.

``tempfile.mkstemp`` creates files with mode 0600; the finished file gets the mode an
ordinary ``open()`` would give it (0666 less the process umask), so checkpoints on a
shared cluster file system are readable by colleagues exactly as the run's logs are.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

TEMPORARY_SUFFIX = ".tmp"
"""Suffix of the temporary files :func:`atomic_write` creates (prefix: ``.NAME.``)."""

_umask_lock = threading.Lock()


def default_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0666 less the process umask."""
    with _umask_lock:
        # The umask can only be read by setting it; the lock keeps threads of this
        # process from creating files while it is briefly 0.
        mask = os.umask(0)
        os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_write(path: str | Path, binary: bool = True) -> Iterator[IO[Any]]:
    """Open a temporary file that replaces ``path`` when the block ends without error.

    Args:
        path: The file to (re)write; its folder is created if needed.
        binary: Open in ``"wb"`` (default) or ``"w"`` (UTF-8 text) mode.

    Raises:
        OSError: When the disk is full, naming ``path`` and saying that nothing was
            written under that name; other OS errors as raised. On any error the
            temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX
    )
    try:
        with os.fdopen(
            handle, "wb" if binary else "w", encoding=None if binary else "utf-8"
        ) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, default_file_mode())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if _disk_full(error):
            raise OSError(
                errno.ENOSPC,
                f"no space left on the device while writing {path}; nothing was written "
                "under that name and its earlier version, if any, is intact",
            ) from error
        raise
    _fsync_directory(path.parent)


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_write`."""
    with atomic_write(path, binary=False) as file:
        file.write(text)
    return Path(path)


def write_with(path: str | Path, writer: Callable[[IO[bytes]], object]) -> Path:
    """Let ``writer`` fill a binary file object that atomically becomes ``path``.

    For libraries that write to file objects: ``torch.save``, ``Figure.savefig``.
    """
    with atomic_write(path) as file:
        writer(file)
    return Path(path)


def link_atomically(source: Path, target: Path) -> None:
    """Make ``target`` name the same file as ``source`` (a copy where links fail).

    The link is made under a temporary name shaped like :func:`atomic_write`'s, then
    renamed, so that a kill in between leaves nothing :func:`remove_stale_temporaries`
    does not remove.
    """
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files an interrupted :func:`atomic_write` left in ``folder``.

    Only call this while holding the folder's run lock (:mod:`mile_ssl.runs.lock`): a
    temporary file of a live writer in another process looks the same.

    Returns:
        The files removed (searched in ``folder`` and its sub-folders).
    """
    removed = []
    for candidate in folder.rglob(f".*{TEMPORARY_SUFFIX}"):
        if candidate.is_file() and _made_by_atomic_write(candidate):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def _made_by_atomic_write(candidate: Path) -> bool:
    """``.NAME.XXXXXX.tmp``: a leading dot, the target's name, mkstemp's 8 characters."""
    stem = candidate.name[1 : -len(TEMPORARY_SUFFIX)]
    target, _, random_part = stem.rpartition(".")
    return bool(target) and len(random_part) == 8


def _disk_full(error: BaseException | None) -> bool:
    """Whether ``error``, or an error it arose from, is a full disk.

    ``torch.save`` answers a full disk with a ``RuntimeError`` from its zip writer's
    clean-up, raised while the ``OSError`` is handled; the cause is in the chain.
    """
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
