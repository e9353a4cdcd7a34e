"""What a bad day does to a training run: divergence, resumes, failed saves, Ctrl-C.

Runs go through the installed console script on the tiny digit-grid setting, as a user
would run them; failures are injected where the operating system cannot be made to fail
on demand (a full disk).
"""

from __future__ import annotations

import csv
import errno
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from mile_ssl import checkpoint_io
from mile_ssl.checkpoint_io import write_atomically
from mile_ssl.report import format_metrics_table
from tests.conftest import MILE_SSL, TINY_OVERRIDES, run_cli

STEPS = ["trainer.log_every_n_steps=1", "method=sigmoid"]


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "logs" / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _finite(path: Path) -> bool:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return all(
        bool(torch.isfinite(value).all()) for value in state.values() if value.is_floating_point()
    )


def test_divergence_stops_at_once_and_keeps_every_checkpoint_finite(tmp_path: Path) -> None:
    result = run_cli(
        [
            "train",
            *TINY_OVERRIDES,
            *STEPS,
            "optim.lr=1e6",
            "trainer.max_steps=30",
            "trainer.checkpoint_every_n_steps=1",
            "hydra.run.dir=run",
        ],
        tmp_path,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    message = result.stderr[result.stderr.index("error:") :]
    assert "diverged" in message and "by step" in message or "at step" in message
    assert "optim.lr=1000000.0" in message
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    assert checkpoints, "the steps before the divergence keep their checkpoints"
    assert all(_finite(path) for path in checkpoints)
    steps = [int(path.stem.removeprefix("step")) for path in checkpoints if path.stem != "last"]
    assert max(steps) < 10  # stopped within the first steps, not after all 30
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_warm_up_longer_than_the_run_is_refused(tmp_path: Path) -> None:
    result = run_cli(
        ["train", *TINY_OVERRIDES, "optim.warmup_steps=1000", "trainer.max_steps=30"], tmp_path
    )
    assert result.returncode == 2
    assert "optim.warmup_steps" in result.stderr and "trainer.max_steps" in result.stderr


def test_chance_level_results_are_flagged() -> None:
    table = format_metrics_table({"mile": {"top1": 0.101, "chance_top1": 0.1}})
    assert "chance level" in table
    assert "chance level" not in format_metrics_table({"mile": {"top1": 0.5, "chance_top1": 0.1}})


@pytest.fixture(scope="module")
def first_run(module_tmp_path: Path) -> Path:
    """Six steps with a checkpoint every two, logging every step."""
    result = run_cli(
        [
            "train",
            *TINY_OVERRIDES,
            *STEPS,
            "trainer.max_steps=6",
            "trainer.checkpoint_every_n_steps=2",
            "hydra.run.dir=first",
        ],
        module_tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return module_tmp_path / "first"


def test_resume_applies_a_new_learning_rate_and_continues_the_log(
    first_run: Path, tmp_path: Path
) -> None:
    checkpoint = first_run / "checkpoints" / "step4.ckpt"
    result = run_cli(
        [
            "train",
            *TINY_OVERRIDES,
            *STEPS,
            "trainer.max_steps=6",
            "optim.lr=0.05",
            f"trainer.resume_from={checkpoint}",
            "hydra.run.dir=resumed",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "changed on resume at step 4: optim.lr 0.1 -> 0.05" in result.stdout + result.stderr
    rows = _rows(tmp_path / "resumed")
    steps = sorted({int(row["step"]) for row in rows if row.get("train/lr")})
    assert steps[:4] == [0, 1, 2, 3], "the rows before the checkpoint are kept"
    lr = {int(row["step"]): float(row["train/lr"]) for row in rows if row.get("train/lr")}
    before = {
        int(row["step"]): float(row["train/lr"]) for row in _rows(first_run) if row.get("train/lr")
    }
    assert lr[3] == pytest.approx(before[3])
    # After the resume: the same cosine schedule at half the peak rate.
    assert lr[4] == pytest.approx(before[4] / 2)
    resolved = (tmp_path / "resumed" / "resolved_config.yaml").read_text()
    assert "lr: 0.05" in resolved


def test_resume_refuses_a_changed_method_before_writing(first_run: Path, tmp_path: Path) -> None:
    checkpoint = first_run / "checkpoints" / "step4.ckpt"
    result = run_cli(
        [
            "train",
            *TINY_OVERRIDES,
            "trainer.log_every_n_steps=1",
            "method=softmax",
            "trainer.max_steps=6",
            f"trainer.resume_from={checkpoint}",
            "hydra.run.dir=resumed",
        ],
        tmp_path,
    )
    assert result.returncode == 2
    assert "method.name='sigmoid'" in result.stderr and "'softmax'" in result.stderr
    assert not (tmp_path / "resumed").exists()


def test_failed_resume_changes_nothing_in_the_run_folder(first_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name in ("resolved_config.yaml", "metrics.json"):
        (run / name).write_bytes((first_run / name).read_bytes())
    (run / "logs").mkdir()
    (run / "logs" / "metrics.csv").write_bytes((first_run / "logs" / "metrics.csv").read_bytes())
    truncated = run / "step4.ckpt"
    data = (first_run / "checkpoints" / "step4.ckpt").read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    before = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    result = run_cli(
        [
            "train",
            *TINY_OVERRIDES,
            *STEPS,
            "trainer.max_steps=6",
            f"trainer.resume_from={truncated}",
            f"hydra.run.dir={run}",
        ],
        tmp_path,
    )
    assert result.returncode == 2
    assert str(truncated) in result.stderr and "Traceback" not in result.stderr
    after = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    assert {path: after[path] for path in before} == before


class _DiskFull:
    """A ``torch.save`` that writes part of the file, then fails as a full disk does."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __call__(self, payload: Any, file: Any) -> None:
        file.write(b"PK\x03\x04 partial checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")


def test_failed_save_leaves_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    write_atomically({"step": 1}, path)
    monkeypatch.setattr(checkpoint_io.torch, "save", _DiskFull(torch.save))
    with pytest.raises(OSError, match="no space left") as info:
        write_atomically({"step": 2}, path)
    assert str(path) in str(info.value)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_ctrl_c_saves_a_checkpoint_that_resumes(tmp_path: Path) -> None:
    command = [
        MILE_SSL,
        "train",
        *TINY_OVERRIDES,
        *STEPS,
        "trainer.max_steps=100000",
        "hydra.run.dir=run",
    ]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / "resolved_config.yaml").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    time.sleep(3)  # into the training loop
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert checkpoint.exists() and _finite(checkpoint)
    resume_line = stdout.strip().splitlines()[-1].strip()
    assert (
        resume_line.startswith("mile-ssl train")
        and f"trainer.resume_from={checkpoint}" in resume_line
    )
    step = torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"]
    # The printed command resumes (here shortened to two more steps).
    words = shlex.split(resume_line)[2:]
    words = [
        word for word in words if not word.startswith(("trainer.max_steps=", "hydra.run.dir="))
    ]
    resumed = run_cli(
        ["train", *words, f"trainer.max_steps={step + 2}", "hydra.run.dir=resumed"], tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
