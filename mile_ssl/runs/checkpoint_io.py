"""Checkpoint files that are either complete or absent, fsynced, with a full disk named.

Lightning 2.6's :class:`TorchCheckpointIO` already writes through a temporary file
(``_atomic_save``: the whole checkpoint in memory, then an fsspec transaction), but
fsspec makes that file in the system's temporary folder and moves it without fsync: a
run folder on another file system gets a copy written in place under the final name, a
power loss after the move can leave an empty file there, and a full disk is an
``[Errno 28]`` that names no file. :class:`AtomicCheckpointIO` adds what is missing, for
local paths: ``torch.save`` streams into a temporary file beside the checkpoint
(:func:`mile_ssl.atomic_files.atomic_write`), which is fsynced and then renamed over
the name, and a full disk is reported naming the checkpoint and what it means (earlier
checkpoints are intact; how to resume).
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from typing_extensions import override

from mile_ssl.atomic_files import write_with


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` saving through an fsynced file beside the checkpoint."""

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` through an fsynced temporary file beside it.

        Raises:
            OSError: Naming the file, when the disk is full or not writable; the
                previous file under ``path`` is left as it was.
        """
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        write_atomically(checkpoint, Path(path))


def write_atomically(payload: Any, path: Path) -> None:
    """``torch.save(payload, path)`` that never leaves a partial file under ``path``."""
    try:
        write_with(path, lambda file: torch.save(payload, file))
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        raise OSError(
            errno.ENOSPC,
            f"no space left on the device while writing checkpoint {path}; nothing was "
            "written under that name and earlier checkpoints are intact. Free space, "
            "then resume with trainer.resume_from=<the last checkpoint>",
        ) from error
