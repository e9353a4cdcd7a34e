"""A checkpoint's run folder: above ``checkpoints/``, else the checkpoint's own folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mile_ssl.adapters.reading import resolve_checkpoint_path
from mile_ssl.runs.layout import run_folder
from mile_ssl.runs.trainer import LAST_CHECKPOINT


def test_a_run_checkpoint_belongs_to_the_folder_above_checkpoints(tmp_path: Path) -> None:
    assert run_folder(tmp_path / "run" / "checkpoints" / "last.ckpt") == tmp_path / "run"


def test_a_loose_checkpoint_belongs_to_its_own_folder(tmp_path: Path) -> None:
    assert run_folder(tmp_path / "kept" / "step4.ckpt") == tmp_path / "kept"
    assert run_folder(str(tmp_path / "step4.ckpt")) == tmp_path


def test_the_adapters_find_the_checkpoint_a_run_writes(tmp_path: Path) -> None:
    """A run folder as ``checkpoint.path``: the layout's name and the adapters' agree."""
    written = tmp_path / "run" / LAST_CHECKPOINT
    written.parent.mkdir(parents=True)
    written.write_bytes(b"")
    assert resolve_checkpoint_path(tmp_path / "run") == written
    assert run_folder(written) == tmp_path / "run"


def test_the_layout_and_the_run_folder_lock_load_without_torch() -> None:
    """The lock is taken by light processes; torch would add seconds to each."""
    probe = "import sys, mile_ssl.runs.lock; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
