"""Two CPU processes with DDP (gloo) against a single process on the same data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mile_ssl.config import TrainConfig
from mile_ssl.data.datamodule import MILeDataModule
from mile_ssl.evaluate import evaluate_checkpoint
from mile_ssl.preprocessing import Preprocessing
from mile_ssl.train import run_training

MILE_SSL = str(Path(sys.executable).with_name("mile-ssl"))
DDP_OVERRIDES = [
    "method=mile",
    "mile.kt=2",
    "mile.ks=2",
    "data.fraction=0.5",
    "data.batch_size=16",
    "trainer.max_steps=6",
]


def _ddp_run(tmp_path: Path, tiny_overrides: list[str]) -> Path:
    result = subprocess.run(
        [
            MILE_SSL,
            "train",
            *tiny_overrides,
            *DDP_OVERRIDES,
            "trainer=ddp_cpu",
            "trainer.precision=32-true",
            "hydra.run.dir=ddp",
        ],
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / "ddp"


def test_two_process_ddp_matches_single_process(
    tmp_path: Path, tiny_overrides: list[str], tiny_config
) -> None:
    run = _ddp_run(tmp_path, tiny_overrides)
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["steps"] == 6
    config: TrainConfig = tiny_config(*DDP_OVERRIDES)

    # The label split of the DDP run is the single-process split.
    single = MILeDataModule(config.data, Preprocessing())
    assert summary["labelled_sha256"] == single.labelled_digest
    assert summary["labelled_images"] == len(single.train_indices) == 128

    # Validation metrics, gathered across ranks without the sampler's padding, equal a
    # single-process evaluation of the same final weights.
    checkpoint = run / "checkpoints" / "last.ckpt"
    metrics = evaluate_checkpoint(checkpoint, config.data, accelerator="cpu")
    assert metrics["num_samples"] == summary["metrics"]["num_samples"] == 64
    for name, value in summary["metrics"].items():
        assert metrics[name] == pytest.approx(value, abs=1e-6), name

    # Only rank 0 wrote checkpoints; the state holds one copy of each network.
    state = torch.load(checkpoint, weights_only=True)
    assert state["mile_ssl"]["completed_steps"] == 6
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]

    # The DDP checkpoint resumes in a single process.
    resumed = run_training(
        tiny_config(*DDP_OVERRIDES, "trainer.max_steps=8", f"trainer.resume_from={checkpoint}"),
        tmp_path / "resumed",
    )
    assert (
        torch.load(resumed.last_checkpoint, weights_only=True)["mile_ssl"]["completed_steps"] == 8
    )
