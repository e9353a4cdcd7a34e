"""Checkpoint files that are either complete or absent.

Lightning writes a checkpoint in place, so a full disk or a kill during the write leaves
a truncated file under a valid name (``step4.ckpt``, ``last.ckpt``) that a resume then
trips over. Here every checkpoint is written to a temporary file in the same directory,
flushed and fsynced, then renamed over its name, which is atomic on POSIX file systems;
on failure the temporary file is removed and the previous checkpoint stays intact.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from typing_extensions import override


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` with write-to-temporary-then-rename saving."""

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` atomically.

        Raises:
            OSError: Naming the file, when the disk is full or not writable; the
                previous file under ``path`` is left as it was.
        """
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        write_atomically(checkpoint, Path(path))


def write_atomically(payload: Any, path: Path) -> None:
    """``torch.save(payload, path)`` that never leaves a partial file under ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC,
                f"no space left on the device while writing checkpoint {path}; nothing was "
                "written under that name and earlier checkpoints are intact. Free space, "
                "then resume with trainer.resume_from=<the last checkpoint>",
            ) from error
        raise
    _fsync_directory(path.parent)


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
