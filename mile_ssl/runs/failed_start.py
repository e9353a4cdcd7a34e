"""A run that fails before its first training step leaves its folder as it found it.

Much bad input shows only once the run has begun to write: Hydra makes the run folder and
writes its records (``.hydra``, the job's log) before the job runs, the lock and the
logger write theirs, and a batch larger than the training set or a missing GPU is found
when the data or the devices are set up. The command line records each run folder before
anything is written to it (:func:`undone_if_start_fails`, and the Hydra callback
:class:`RecordRunFolders` for the folders Hydra names), training marks its folder started
at the first step (:func:`mark_started`), and a start that fails puts every recorded
folder without a started run back:

- a folder that did not exist goes, with the parent folders made for it;
- in a folder that existed (a resume, a requeued job), what the start added goes, files
  it rewrote get their recorded bytes back and logs it appended to are cut back to their
  recorded length; nothing that was there is lost.

Only the first process of a run records and restores: the others write into its folder.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from hydra.experimental.callback import Callback

from mile_ssl.runs.layout import named_run_folder
from mile_ssl.runs.lock import LOCK_FILE, first_process

log = logging.getLogger(__name__)

KEEP_BYTES = 1 << 20
"""Files up to this size are kept in memory while a run starts, so that a failed start
can put back what it rewrote (the lock, ``.hydra`` records, the resolved config)."""

HYDRA_CALLBACK = "hydra.callbacks.mile_ssl_run_folders"
"""Where the command line registers :class:`RecordRunFolders` among Hydra's callbacks."""

KEEP_TOTAL_BYTES = 64 << 20
"""The most bytes kept per folder; larger files (checkpoints, long logs) are never
rewritten by a start, and a log it appends to is cut back to its recorded length."""


@dataclass(frozen=True)
class _Entry:
    """One path of a recorded folder: its kind, identity and, if kept, its content."""

    kind: str  # "dir", "file" or "link"
    size: int
    mtime_ns: int
    inode: int
    content: bytes | str | None  # a file's bytes or a link's target


def _entry(path: Path, budget: list[int]) -> _Entry:
    """The recorded state of ``path``, its content kept while ``budget[0]`` bytes remain."""
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        return _Entry("link", 0, info.st_mtime_ns, info.st_ino, os.readlink(path))
    if stat.S_ISDIR(info.st_mode):
        return _Entry("dir", 0, info.st_mtime_ns, info.st_ino, None)
    content = None
    if stat.S_ISREG(info.st_mode) and info.st_size <= min(KEEP_BYTES, budget[0]):
        try:
            content = path.read_bytes()
            budget[0] -= len(content)
        except OSError:
            content = None
    return _Entry("file", info.st_size, info.st_mtime_ns, info.st_ino, content)


def _tree(folder: Path) -> list[Path]:
    """Every path under ``folder``, parents before children; links are not followed."""
    paths: list[Path] = []
    for directory, names, files in os.walk(folder):
        paths.extend(Path(directory, name) for name in sorted([*names, *files]))
    return paths


class FolderState:
    """What a folder held before a run started: enough to put it back.

    Args:
        folder: The run folder (it need not exist).
        created: Record ``folder`` as made by this run even though it exists (a sweep
            job's folder, recorded only after Hydra has made it).
    """

    def __init__(self, folder: Path, created: bool = False) -> None:
        self.folder = Path(os.path.abspath(folder))
        self.existed = os.path.lexists(self.folder) and not created
        existing = self.folder.parent if created else self.folder
        while not os.path.lexists(existing) and existing != existing.parent:
            existing = existing.parent
        self.first_existing = existing
        self.entries: dict[Path, _Entry] = {}
        if self.existed and self.folder.is_dir() and not self.folder.is_symlink():
            budget = [KEEP_TOTAL_BYTES]
            self.entries = {
                path.relative_to(self.folder): _entry(path, budget) for path in _tree(self.folder)
            }

    def restore(self) -> None:
        """Put the folder back as recorded; what cannot be put back is logged, not raised.

        A folder whose lock another live process holds is left alone: what changed there
        since it was recorded is that run's work.
        """
        _close_log_files_under(self.folder)
        if _in_use(self.folder):
            log.warning("%s is in use by another run; left as it is", self.folder)
            return
        self._restore()

    def _restore(self) -> None:
        if not self.existed:
            _remove(self.folder)
            for parent in self.folder.parents:
                if parent == self.first_existing:
                    break
                try:
                    parent.rmdir()
                except OSError:  # not empty: another run's folder is there too
                    break
            return
        for path in reversed(_tree(self.folder)):
            if path.relative_to(self.folder) not in self.entries:
                _remove(path)
        for relative, entry in self.entries.items():
            try:
                _put_back(self.folder / relative, entry)
            except OSError as error:
                log.warning("could not put back %s after the failed start: %s", relative, error)


def _in_use(folder: Path) -> bool:
    """Whether another live process holds ``folder``'s run lock (:mod:`mile_ssl.runs.lock`)."""
    path = folder / LOCK_FILE
    if not path.is_file():
        return False
    try:
        with path.open("a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _remove(path: Path) -> None:
    """Remove a file, link or folder tree, if there."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif os.path.lexists(path):
            path.unlink()
    except OSError as error:
        log.warning("could not remove %s after the failed start: %s", path, error)


def _put_back(path: Path, entry: _Entry) -> None:
    """Give ``path`` its recorded kind and content again, where it changed."""
    info = path.lstat() if os.path.lexists(path) else None
    if entry.kind == "dir":
        if info is None or not stat.S_ISDIR(info.st_mode):
            _remove(path)
            path.mkdir()
        return
    if entry.kind == "link":
        if info is None or not stat.S_ISLNK(info.st_mode) or os.readlink(path) != entry.content:
            _remove(path)
            os.symlink(str(entry.content), path)
        return
    regular = info if info is not None and stat.S_ISREG(info.st_mode) else None
    if regular is not None and (regular.st_size, regular.st_mtime_ns, regular.st_ino) == (
        entry.size,
        entry.mtime_ns,
        entry.inode,
    ):
        return
    if isinstance(entry.content, bytes):
        if regular is None:
            _remove(path)
        path.write_bytes(entry.content)
    elif regular is not None and regular.st_ino == entry.inode and regular.st_size >= entry.size:
        os.truncate(path, entry.size)  # a log the start appended to
    else:
        log.warning("%s changed during the failed start and cannot be put back", path)
        return
    os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns))


def _close_log_files_under(folder: Path) -> None:
    """Close the log files the run opened in ``folder`` (Hydra's job log), before removing.

    Removing a file still open leaves ``.nfs*`` files behind on NFS, which keep the folder
    from being removed, and a later message would land in the removed file.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        name = getattr(handler, "baseFilename", None)
        if name is not None and Path(name).is_relative_to(folder):
            root.removeHandler(handler)
            handler.close()


class _Records:
    """The run folders this command recorded and those whose training started."""

    def __init__(self) -> None:
        self.active = False
        self.folders: dict[Path, FolderState] = {}
        self.started: set[Path] = set()


_records = _Records()


def record_folder(folder: str | Path, created: bool = False) -> None:
    """Record ``folder`` as it is now, if a command is recording and has not yet done so.

    Args:
        folder: A run folder about to be written.
        created: Whether this run made it (see :class:`FolderState`).
    """
    if not _records.active or not first_process():
        return
    state = FolderState(Path(folder), created)
    _records.folders.setdefault(state.folder, state)


def mark_started(folder: str | Path) -> None:
    """Mark ``folder``'s run as started: from its first training step it is kept."""
    if _records.active:
        _records.started.add(Path(os.path.abspath(folder)))


def _restore_unstarted() -> None:
    """Put back every recorded folder that holds no started run, newest first."""
    for state in reversed(list(_records.folders.values())):
        if not any(
            started == state.folder or state.folder in started.parents
            for started in _records.started
        ):
            state.restore()


@contextmanager
def undone_if_start_fails(overrides: Sequence[str] = ()) -> Iterator[None]:
    """Record run folders for the block; if it fails, put back those with no started run.

    A failure is any exception, Ctrl-C, or exit with a non-zero status. Folders are
    recorded by :func:`record_folder`: the ``hydra.run.dir`` of a single run here,
    before its lock is taken; the folders Hydra makes through :class:`RecordRunFolders`
    (:func:`recording_run_folders`) and :func:`record_job_folder`.

    Args:
        overrides: The ``mile-ssl train`` command line.
    """
    _records.active, _records.folders, _records.started = True, {}, set()
    try:
        folder = named_run_folder(list(overrides))
        single = not {"-m", "--multirun"} & set(overrides)
        if folder is not None and "${" not in str(folder) and single:
            record_folder(folder)
        yield
    except SystemExit as stop:
        if stop.code not in (None, 0):
            _restore_unstarted()
        raise
    except BaseException:
        _restore_unstarted()
        raise
    finally:
        _records.active, _records.folders, _records.started = False, {}, set()


def recording_run_folders(overrides: list[str]) -> list[str]:
    """``overrides`` and the Hydra callback that records run folders before Hydra writes.

    The callback is :class:`RecordRunFolders`, given as an override so that it works with
    any primary config. A process Lightning starts for a further rank gets the first
    one's command line, which already holds it.
    """
    callback = f"+{HYDRA_CALLBACK}._target_="
    if any(override.startswith(callback) for override in overrides):
        return overrides
    return [*overrides, f"{callback}{__name__}.{RecordRunFolders.__qualname__}"]


class RecordRunFolders(Callback):
    """Hydra callback recording the folders Hydra is about to make and write.

    ``on_run_start`` comes before Hydra makes the run folder, ``on_multirun_start``
    before it makes the sweep folder (:func:`recording_run_folders` registers it); a
    job's own folder is recorded by :func:`record_job_folder`.
    """

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        """Record ``hydra.run.dir``."""
        record_folder(_resolved(config, "hydra.run.dir"))

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        """Record ``hydra.sweep.dir``."""
        record_folder(_resolved(config, "hydra.sweep.dir"))


def record_job_folder(hydra: Any) -> None:
    """Record the folder of the job Hydra is running, as made by it if it holds nothing else.

    Hydra makes a sweep job's folder and writes its records before any callback of the
    job: a folder not yet recorded that holds only this job's records and log was made
    by this job.

    Args:
        hydra: The job's Hydra config (``HydraConfig.get()``).
    """
    folder = Path(os.path.abspath(hydra.runtime.output_dir))
    own = {f"{hydra.job.name}.log", str(hydra.output_subdir)}
    if folder in _records.folders or not folder.is_dir():
        return
    if all(child.name in own for child in folder.iterdir()):
        record_folder(folder, created=True)


def _resolved(config: Any, key: str) -> str:
    """The value of ``key`` as Hydra resolves it for the run about to start."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    # Interpolations such as ${hydra:job.name} read the Hydra config of the run.
    HydraConfig.instance().set_config(config)
    return str(OmegaConf.select(config, key))


class MarkStarted(L.Callback):
    """Marks the run folder started (:func:`mark_started`) as its first training step begins.

    Args:
        folder: The run folder.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_batch_start(self, *args: Any, **kwargs: Any) -> None:
        """From here on, the folder holds a run's work."""
        mark_started(self.folder)
