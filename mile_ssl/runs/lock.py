"""One run per run folder: an advisory lock held for the life of the training process.

Two runs writing one folder (the same ``hydra.run.dir``, or a job started twice) would
mix their checkpoints, logs and reports. The first run takes an exclusive ``flock`` on
``<run folder>/.lock`` and keeps the file open; the kernel releases the lock when the
process ends, however it ends (kill -9 included), so a stale lock never blocks a
resume. The file records who holds it, for the second run's message. ``flock`` works on
local file systems and on NFSv4 / Lustre / GPFS mounts as configured on most clusters.

The command line takes the lock of a named existing folder before Hydra writes its
records there, and training takes it again (:func:`holding_run_folder` counts the
holds of one process, since a second ``flock`` of the same file would block itself).
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from mile_ssl.runs.layout import named_run_folder

LOCK_FILE = ".lock"
"""The lock file inside a run folder."""


class RunFolderBusyError(ValueError):
    """Another live process holds the run folder's lock."""


class RunFolderLock:
    """An exclusive lock on a run folder, held until :meth:`release` or process exit.

    Args:
        folder: The run folder (created if missing).

    Raises:
        RunFolderBusyError: If another process holds the lock, naming the folder and,
            where recorded, the holder's host and process id.
        OSError: If the folder cannot be written, naming it.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        path = folder / LOCK_FILE
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._file: IO[str] | None = path.open("a+")
        except OSError as error:
            raise OSError(
                error.errno, f"cannot write the run folder {folder}: {error.strerror}"
            ) from error
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            self._file = None
            raise RunFolderBusyError(
                f"run folder {folder} is in use by {holder}; wait for that run to end, or "
                "choose another folder (hydra.run.dir=...)"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        self._file.flush()

    def release(self) -> None:
        """Give the folder back (closing the file releases the lock)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def first_process() -> bool:
    """Whether this is the first process of its run, the one that holds the lock.

    Told apart as Lightning does (``RANK``, ``LOCAL_RANK``, ``SLURM_PROCID``): the
    processes Lightning starts, and every task but the first of an ``srun`` or
    ``torchrun`` launch, write into the folder on the first one's behalf.
    """
    # Imported on use: taking or reading a lock needs no Lightning (seconds to import).
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


_held: dict[Path, tuple[RunFolderLock, int]] = {}


@contextmanager
def holding_run_folder(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock for the block; nested holds of one process share it.

    Raises:
        RunFolderBusyError: If another process holds it.
    """
    key = folder.resolve()
    lock, count = _held.get(key) or (RunFolderLock(folder), 0)
    _held[key] = (lock, count + 1)
    try:
        yield
    finally:
        lock, count = _held[key]
        if count == 1:
            del _held[key]
            lock.release()
        else:
            _held[key] = (lock, count - 1)


@contextmanager
def holding_named_run_folder(overrides: Sequence[str]) -> Iterator[None]:
    """Hold the lock of an existing ``hydra.run.dir`` before Hydra writes its records there.

    A second run into a folder in use stops here, before Hydra overwrites the first
    run's ``.hydra`` files; training takes the same lock for every other folder. Not
    for sweeps (one folder per job) or the further processes of a multi-process run.

    Args:
        overrides: The ``mile-ssl train`` command line.
    """
    folder = named_run_folder(list(overrides))
    if (
        folder is None
        or "${" in str(folder)
        or not folder.is_dir()
        or {"-m", "--multirun"} & set(overrides)
        or not first_process()
    ):
        yield
        return
    with holding_run_folder(folder):
        yield
