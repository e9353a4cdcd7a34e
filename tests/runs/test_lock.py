"""One run per run folder: the lock, its message, and the default folder names."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from mile_ssl.runs.layout import default_run_name
from mile_ssl.runs.lock import (
    RunFolderBusyError,
    RunFolderLock,
    holding_named_run_folder,
    holding_run_folder,
)
from tests.conftest import TINY_OVERRIDES, mounted_tmpfs, run_cli_in_process

HOLDER = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from mile_ssl.runs.lock import RunFolderLock\n"
    "lock = RunFolderLock(Path(sys.argv[1]))\n"
    "print('held', flush=True)\n"
    "time.sleep(600)\n"
)


@pytest.fixture
def holder(tmp_path: Path):
    """Another process holding the lock of ``tmp_path / 'run'``."""
    folder = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    yield folder, process
    process.kill()
    process.wait()


def test_a_second_process_is_refused_until_the_holder_dies(holder) -> None:
    folder, process = holder
    with pytest.raises(RunFolderBusyError, match="in use by process") as info:
        RunFolderLock(folder)
    assert str(folder) in str(info.value) and str(process.pid) in str(info.value)
    process.send_signal(signal.SIGKILL)  # no clean-up: the kernel releases the lock
    process.wait()
    lock = RunFolderLock(folder)
    assert f"process {os.getpid()}" in (folder / ".lock").read_text()
    lock.release()


def test_holds_of_one_process_nest_and_release_at_the_outermost(tmp_path: Path) -> None:
    with holding_run_folder(tmp_path), holding_run_folder(tmp_path / "."):
        pass
    # Released: another lock of this folder (a new open file) succeeds.
    RunFolderLock(tmp_path).release()


def test_a_second_run_into_a_folder_in_use_stops_before_writing(holder, tmp_path: Path) -> None:
    folder, process = holder
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text("- the first run's overrides\n")
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    result = run_cli_in_process(["train", *TINY_OVERRIDES, f"hydra.run.dir={folder}"], tmp_path)
    assert result.returncode == 2
    assert f"run folder {folder} is in use by process {process.pid}" in result.stderr
    assert "Traceback" not in result.stderr
    after = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    assert after == before


def test_default_run_names_never_collide_locally_and_are_shared_by_a_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(variable, raising=False)
    names = {default_run_name() for _ in range(20)}
    assert len(names) == 20
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    assert default_run_name() == "slurm-777"
    monkeypatch.setenv("SLURM_STEP_ID", "2")
    assert default_run_name() == "slurm-777.2"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "700")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert default_run_name() == "slurm-700_3.2"
    for variable in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_STEP_ID"):
        monkeypatch.delenv(variable)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "rdzv9")
    assert default_run_name().endswith("-rdzv9")


def test_only_the_first_process_of_a_run_takes_the_lock(
    holder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """srun starts every task itself: the others write on the first one's behalf."""
    folder, _ = holder
    overrides = [f"hydra.run.dir={folder}"]
    with pytest.raises(RunFolderBusyError), holding_named_run_folder(overrides):
        pass
    monkeypatch.setattr(rank_zero_only, "rank", 3)  # as SLURM_PROCID=3 makes it
    with holding_named_run_folder(overrides):
        pass


def test_a_read_only_run_folder_is_named(tmp_path: Path) -> None:
    """A folder on a read-only file system (where this machine lets a test mount one)."""
    with mounted_tmpfs(tmp_path / "readonly", "size=64k,ro") as mount:
        result = run_cli_in_process(
            ["train", *TINY_OVERRIDES, f"hydra.run.dir={mount / 'run'}"], tmp_path
        )
    assert result.returncode == 2
    assert f"{mount / 'run'}" in result.stderr and "Read-only file system" in result.stderr
    assert "Traceback" not in result.stderr
