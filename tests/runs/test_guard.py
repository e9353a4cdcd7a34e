"""Real runs stopped by signals, as a scheduler stops them, and the checkpoints they keep.

Every run here is the installed ``mile-ssl`` script in its own process; signals are sent
to it as SLURM sends them (SIGTERM before a kill, SIGUSR1 ahead of the time limit with
``--signal``), and SLURM itself is simulated by its environment variables and a
``scontrol`` on the PATH that records how it was called.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mile_ssl.atomic_files import atomic_write
from tests.conftest import (
    MILE_SSL,
    TINY_NETWORK,
    TINY_OVERRIDES,
    folder_run_overrides,
    run_cli_in_process,
    write_image_folder,
)

RUN = [*TINY_OVERRIDES, "mile.kt=3", "mile.ks=3"]
"""A tiny MILe run whose cycles are short enough to be stopped mid-cycle."""

WAIT = 300
"""Seconds to wait for a file a run writes: generous, for a loaded machine."""


def _start(
    args: list[str], cwd: Path, new_group: bool = False, **env: str
) -> subprocess.Popen[str]:
    environment = {key: value for key, value in os.environ.items() if key != "MILE_SSL_DEBUG"}
    return subprocess.Popen(
        [MILE_SSL, "train", *args],
        cwd=cwd,
        env={**environment, "HF_HUB_OFFLINE": "1", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_group,
        # As from a terminal: a pytest-xdist worker ignores SIGINT, and a process started
        # with SIGINT ignored keeps ignoring it (nohup's meaning), by design.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for(path: Path, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + WAIT
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            stdout, stderr = process.communicate()
            pytest.fail(f"{path} never appeared:\n{stdout[-1500:]}\n{stderr[-3000:]}")
        time.sleep(0.1)


def _stop(process: subprocess.Popen[str], signum: int) -> tuple[int, str, str]:
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=WAIT)
    return process.returncode, stdout, stderr


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _resume_words(stdout: str) -> list[str]:
    """The overrides of the resume command the stopped run printed last."""
    line = stdout.strip().splitlines()[-1].strip()
    assert line.startswith("mile-ssl train "), stdout[-1500:]
    return shlex.split(line)[2:]


def test_sigterm_saves_at_the_stop_step_and_the_printed_command_resumes_bit_exact(
    tmp_path: Path,
) -> None:
    every_step = [*RUN, "trainer.max_steps=100000", "trainer.checkpoint_every_n_steps=1"]
    stopped = _start([*every_step, "hydra.run.dir=b"], tmp_path)
    reference = _start([*every_step, "hydra.run.dir=a"], tmp_path)
    _wait_for(tmp_path / "b" / "checkpoints" / "step3.ckpt", stopped)
    status, stdout, stderr = _stop(stopped, signal.SIGTERM)

    assert status == 143, stderr[-3000:]
    assert "preempted (SIGTERM)" in stdout and "Traceback" not in stderr
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    step = _state(last)["global_step"]
    assert step >= 3 and f"after step {step};" in stdout
    assert _state(last)["mile_ssl"]["completed_steps"] == step

    # The printed command names the run folder: it resumes there, from the stop step.
    words = _resume_words(stdout)
    assert f"hydra.run.dir={tmp_path / 'b'}" in words
    resumed = _start(words, tmp_path)
    _wait_for(tmp_path / "b" / "checkpoints" / f"step{step + 2}.ckpt", resumed)
    assert _stop(resumed, signal.SIGTERM)[0] == 143

    # Two steps after the resume, the weights are those of the run never stopped.
    _wait_for(tmp_path / "a" / "checkpoints" / f"step{step + 2}.ckpt", reference)
    assert _stop(reference, signal.SIGTERM)[0] == 143
    ours = _state(tmp_path / "b" / "checkpoints" / f"step{step + 2}.ckpt")["state_dict"]
    theirs = _state(tmp_path / "a" / "checkpoints" / f"step{step + 2}.ckpt")["state_dict"]
    assert ours.keys() == theirs.keys()
    different = [name for name in ours if not torch.equal(ours[name], theirs[name])]
    assert not different, different[:5]


def test_slurm_requeue_resumes_with_the_same_command(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls.txt"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "finetune",
        "SLURM_NTASKS": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    command = [*RUN, "trainer.max_steps=40"]  # no run folder named: the job's own
    run = tmp_path / "runs" / "slurm-4242"

    first = _start(command, tmp_path, **slurm)
    _wait_for(run / "resolved_config.yaml", first)
    status, stdout, stderr = _stop(first, signal.SIGUSR1)
    assert status == 143, stderr[-3000:]
    assert "preempted (SIGUSR1)" in stdout and "requeued" in stdout
    assert calls.read_text().split() == ["requeue", "4242"]
    stopped_at = _state(run / "checkpoints" / "last.ckpt")["global_step"]
    assert 1 <= stopped_at < 40

    # The requeued job runs the very same command and continues the run.
    again = run_cli_in_process(["train", *command], tmp_path, **slurm)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {run / 'checkpoints' / 'last.ckpt'}" in again.stdout
    assert "changed on resume" not in again.stdout
    assert _state(run / "checkpoints" / "last.ckpt")["mile_ssl"]["completed_steps"] == 40
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == ["slurm-4242"]


def test_a_checkpoint_is_kept_every_interval_and_a_kill_leaves_no_temporary_file(
    tmp_path: Path,
) -> None:
    # A 0.001-minute interval saves after (nearly) every step: last.ckpt appears while
    # the run goes on, with no step checkpoints asked for.
    running = _start(
        [
            *RUN,
            "trainer.max_steps=100000",
            "trainer.checkpoint_every_minutes=0.001",
            "hydra.run.dir=r",
        ],
        tmp_path,
    )
    last = tmp_path / "r" / "checkpoints" / "last.ckpt"
    _wait_for(last, running)
    assert running.poll() is None, "saved by the interval, not at the end"
    running.kill()  # kill -9: no chance to save
    running.communicate()
    saved = _state(last)["global_step"]
    assert saved >= 1

    # A save killed half-way leaves its temporary file beside last.ckpt ...
    script = (
        "import os, signal, sys\n"
        "from mile_ssl.atomic_files import atomic_write\n"
        "with atomic_write(sys.argv[1]) as file:\n"
        "    file.write(b'partial checkpoint')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(last)], check=False)
    leftovers = [p.name for p in last.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers and leftovers[0].startswith(".last.ckpt.")
    assert _state(last)["global_step"] == saved, "the previous checkpoint is intact"

    # ... which the next start in that folder removes; the same command resumes.
    again = run_cli_in_process(
        ["train", *RUN, f"trainer.max_steps={saved + 2}", "hydra.run.dir=r"], tmp_path
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"removed {last.parent / leftovers[0]}" in again.stdout
    assert not [p for p in last.parent.iterdir() if p.name.endswith(".tmp")]
    assert _state(last)["mile_ssl"]["completed_steps"] == saved + 2


def test_last_checkpoint_is_the_newest_state_after_resuming_into_the_folder(
    tmp_path: Path,
) -> None:
    first = run_cli_in_process(
        [
            "train",
            *RUN,
            "trainer.max_steps=6",
            "trainer.checkpoint_every_n_steps=2",
            "hydra.run.dir=r",
        ],
        tmp_path,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoints = tmp_path / "r" / "checkpoints"
    old_trajectory = {path: path.stat().st_mtime_ns for path in checkpoints.iterdir()}
    # Back to step 2 with another learning rate and checkpoint interval, in the same
    # folder, then killed: last.ckpt must hold the new trajectory, not step 6 of the old.
    resumed = _start(
        [
            *RUN,
            "trainer.max_steps=100000",
            "optim.lr=0.05",
            "trainer.checkpoint_every_n_steps=3",
            f"trainer.resume_from={checkpoints / 'step2.ckpt'}",
            "hydra.run.dir=r",
        ],
        tmp_path,
    )
    _wait_for(checkpoints / "step3.ckpt", resumed)
    resumed.kill()
    resumed.communicate()
    written = [
        path
        for path in checkpoints.glob("step*.ckpt")
        if old_trajectory.get(path) != path.stat().st_mtime_ns
    ]
    newest = max(written, key=lambda path: path.stat().st_mtime_ns)
    state = _state(checkpoints / "last.ckpt")
    assert state["global_step"] == _state(newest)["global_step"] >= 3
    assert state["mile_ssl"]["optim"]["lr"] == 0.05
    assert not list(checkpoints.glob("*-v*.ckpt"))


def test_a_failing_final_validation_keeps_the_final_training_checkpoint(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images" / "train", classes=2, per_class=8).parent
    write_image_folder(root / "val", classes=2, per_class=2)
    for image in (root / "val" / "n00000001").iterdir():
        image.write_bytes(b"not an image at all")  # a wholly unreadable validation class
    result = run_cli_in_process(
        [
            "train",
            *TINY_NETWORK,
            *folder_run_overrides(root),
            "hydra.run.dir=run",
        ],
        tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "n00000001" in result.stderr and "Traceback" not in result.stderr
    state = _state(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert state["mile_ssl"]["completed_steps"] == 2


def test_atomic_write_is_what_the_kill_test_interrupts(tmp_path: Path) -> None:
    """The kill test above relies on atomic_write's temporary name; pin it here."""
    target = tmp_path / "last.ckpt"
    with atomic_write(target) as file:
        names = [p.name for p in tmp_path.iterdir()]
        file.write(b"x")
    assert len(names) == 1 and names[0].startswith(".last.ckpt.") and names[0].endswith(".tmp")
    assert target.read_bytes() == b"x"


def test_sigterm_to_every_process_of_the_job_spares_the_loader_workers(tmp_path: Path) -> None:
    """SLURM signals every process of a job step, data loader workers included."""
    root = write_image_folder(tmp_path / "images" / "train", classes=2, per_class=8).parent
    write_image_folder(root / "val", classes=2, per_class=1)
    overrides = [
        *TINY_NETWORK,
        *folder_run_overrides(root),
        "data.num_workers=2",
        "trainer.max_steps=100000",
        "trainer.checkpoint_every_n_steps=1",
        "hydra.run.dir=run",
    ]
    job = _start(overrides, tmp_path, new_group=True)
    _wait_for(tmp_path / "run" / "checkpoints" / "step2.ckpt", job)
    os.killpg(job.pid, signal.SIGTERM)
    stdout, stderr = job.communicate(timeout=WAIT)
    assert job.returncode == 143, stderr[-3000:]
    assert "preempted (SIGTERM)" in stdout and "Traceback" not in stderr
    step = _state(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"]
    assert f"after step {step};" in stdout


@pytest.mark.parametrize("moment", ["imports", "hydra_started", "data_read"])
def test_ctrl_c_at_any_moment_of_start_up_prints_no_traceback(tmp_path: Path, moment: str) -> None:
    """Ctrl-C during imports, after Hydra made the run folder, or once the data is read."""
    process = _start([*RUN, "trainer.max_steps=100000", "hydra.run.dir=run"], tmp_path)
    run = tmp_path / "run"
    if moment == "imports":
        time.sleep(0.3)
    else:
        marker = ".hydra" if moment == "hydra_started" else "resolved_config.yaml"
        _wait_for(run / marker, process)
    status, stdout, stderr = _stop(process, signal.SIGINT)
    assert status == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "interrupted" in stdout + stderr
    # Interrupted before training: nothing left; once the run listens: resumable.
    assert not run.exists() or (run / "checkpoints" / "last.ckpt").is_file()
    if moment == "data_read":
        assert (run / "checkpoints" / "last.ckpt").is_file()
