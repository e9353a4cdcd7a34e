"""A failed start puts its run folder back: removed if new, restored byte for byte if not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mile_ssl.runs.failed_start import (
    KEEP_BYTES,
    FolderState,
    mark_started,
    record_folder,
    undone_if_start_fails,
)
from mile_ssl.runs.lock import RunFolderLock


def tree_snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root``, relative, with a file's bytes (``None`` for a folder)."""
    return {
        str(path.relative_to(root)): None if path.is_dir() else path.read_bytes()
        for path in sorted(root.rglob("*"))
    }


def _earlier_run(folder: Path) -> None:
    """A run folder as an earlier run left it: records, a long log, a checkpoint."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (folder / "resolved_config.yaml").write_text("trainer:\n  max_steps: 2\n")
    (folder / ".lock").write_text("process 1 on earlier-host\n")
    (folder / "cli.log").write_bytes(b"x" * (KEEP_BYTES + 10))  # too long to keep
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(os.urandom(4096))
    (folder / "stale.tmp").write_text("left by a killed save\n")


def _start_writes(folder: Path) -> None:
    """What a start writes into a folder before it fails."""
    with (folder / "cli.log").open("ab") as log:
        log.write(b"[INFO] resuming\n")
    replacement = folder / ".resolved_config.yaml.tmp"
    replacement.write_text("trainer:\n  max_steps: 9\n")
    replacement.replace(folder / "resolved_config.yaml")  # a new inode, as atomic writes do
    (folder / ".lock").write_text("process 2 on this-host\n")
    (folder / "stale.tmp").unlink()
    (folder / "logs" / "version_0").mkdir(parents=True)
    (folder / "logs" / "version_0" / "metrics.csv").write_text("step\n")
    (folder / "bad_images.txt").write_text("a.jpg\n")


def test_an_existing_folder_is_restored_byte_for_byte(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    _earlier_run(folder)
    before = tree_snapshot(tmp_path)
    state = FolderState(folder)
    _start_writes(folder)
    assert tree_snapshot(tmp_path) != before
    state.restore()
    assert tree_snapshot(tmp_path) == before


def test_a_new_folder_goes_with_the_parents_made_for_it(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()  # there before the run: stays, although emptied
    folder = tmp_path / "runs" / "2026-01-02" / "03-04-05-abcdef"
    state = FolderState(folder)
    (folder / ".hydra").mkdir(parents=True)
    (folder / "cli.log").write_text("[INFO] starting\n")
    state.restore()
    assert tree_snapshot(tmp_path) == {"runs": None}


def test_a_folder_another_run_holds_is_left_alone(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    state = FolderState(folder)
    lock = RunFolderLock(folder)  # another run made the folder meanwhile, and holds it
    try:
        (folder / "cli.log").write_text("the other run's log\n")
        state.restore()
        assert (folder / "cli.log").read_text() == "the other run's log\n"
    finally:
        lock.release()


def test_a_failed_start_is_undone_but_a_started_run_is_kept(tmp_path: Path) -> None:
    fresh, started = tmp_path / "fresh", tmp_path / "started"
    with pytest.raises(SystemExit), undone_if_start_fails([f"hydra.run.dir={fresh}"]):
        record_folder(started)
        for folder in (fresh, started):
            folder.mkdir()
            (folder / "cli.log").write_text("log\n")
        mark_started(started)
        raise SystemExit(2)
    assert tree_snapshot(tmp_path) == {"started": None, "started/cli.log": b"log\n"}


def test_a_successful_command_keeps_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    with pytest.raises(SystemExit), undone_if_start_fails([f"hydra.run.dir={folder}"]):
        folder.mkdir()
        raise SystemExit(0)
    assert folder.is_dir()
