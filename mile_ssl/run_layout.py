"""Where a run keeps its files: one answer for every module that finds a run's folder.

A run folder holds ``checkpoints/*.ckpt`` beside its config, logs and reports, so the
folder of a checkpoint inside ``checkpoints/`` is the one above; a checkpoint kept
anywhere else is taken to sit in its own run's folder.
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINT_FOLDER = "checkpoints"
"""Sub-folder of a run folder holding its Lightning checkpoints."""


def run_folder(checkpoint_path: str | Path) -> Path:
    """The run folder a checkpoint belongs to: above ``checkpoints/``, else its own folder."""
    parent = Path(checkpoint_path).parent
    return parent.parent if parent.name == CHECKPOINT_FOLDER else parent
