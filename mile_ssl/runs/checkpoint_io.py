"""Checkpoint files that are either complete or absent, with a full disk named.

Lightning 2.6 already saves through a temporary file, but without fsync (a power loss
after the rename can leave an empty file under the name), with mkstemp's 0600 mode, and
with an ``[Errno 28]`` that names no file. :class:`AtomicCheckpointIO` saves through
:func:`mile_ssl.atomic_files.atomic_write` instead: fsynced, with the process umask's
mode, a full disk named with the checkpoint and its consequence (earlier checkpoints
are intact, how to resume).
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
