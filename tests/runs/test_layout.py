"""A checkpoint's run folder: above ``checkpoints/``, else the checkpoint's own folder."""

from __future__ import annotations

from pathlib import Path

from mile_ssl.runs.layout import run_folder


def test_a_run_checkpoint_belongs_to_the_folder_above_checkpoints(tmp_path: Path) -> None:
    assert run_folder(tmp_path / "run" / "checkpoints" / "last.ckpt") == tmp_path / "run"


def test_a_loose_checkpoint_belongs_to_its_own_folder(tmp_path: Path) -> None:
    assert run_folder(tmp_path / "kept" / "step4.ckpt") == tmp_path / "kept"
    assert run_folder(str(tmp_path / "step4.ckpt")) == tmp_path
