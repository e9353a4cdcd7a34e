"""Two CPU processes with DDP (gloo) against a single process on the same data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mile_ssl.commands.evaluate import evaluate_checkpoint
from mile_ssl.commands.train import run_training
from mile_ssl.config import TrainConfig
from mile_ssl.data.datamodule import MILeDataModule
from mile_ssl.networks.preprocessing import Preprocessing
from tests.conftest import TINY_OVERRIDES

MILE_SSL = str(Path(sys.executable).with_name("mile-ssl"))
DDP_OVERRIDES = [
    "method=mile",
    "mile.kt=2",
    "mile.ks=2",
    "data.fraction=0.5",
    "data.batch_size=16",
    "trainer.max_steps=6",
]


COLLECTIVES_SCRIPT = '''
"""2-process DDP run; each rank writes how many collectives each training step called."""
import functools
import json
import sys
from pathlib import Path

import lightning as L
import torch.distributed as dist

from mile_ssl.config import compose_train_config
from mile_ssl.commands.train import run_training

NAMES = ("all_reduce", "broadcast", "barrier", "all_gather", "all_gather_object",
         "broadcast_object_list", "reduce", "gather", "scatter")
calls = []
for name in NAMES:
    original = getattr(dist, name)

    def counted(*args, _name=name, _original=original, **kwargs):
        calls.append(_name)
        return _original(*args, **kwargs)

    setattr(dist, name, counted)


class PerStep(L.Callback):
    def __init__(self, out):
        self.out, self.steps, self.mark = out, [], None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._close()
        self.mark = len(calls)

    def on_validation_start(self, trainer, module):
        self._close()  # the last step ends where the final validation begins

    def on_train_end(self, trainer, module):
        self._close()
        (self.out / f"collectives{trainer.global_rank}.json").write_text(json.dumps(self.steps))

    def _close(self):
        if self.mark is not None:
            self.steps.append(calls[self.mark:])
            self.mark = None


out = Path(sys.argv[1])
run_training(compose_train_config(sys.argv[2:]), out, callbacks=[PerStep(out)])
'''


@pytest.fixture(scope="module")
def ddp_run(module_tmp_path: Path) -> Path:
    """Six MILe steps on two gloo processes, logging every third step; each rank also
    records the collectives every training step called (``collectives<rank>.json``)."""
    script = module_tmp_path / "count_collectives.py"
    script.write_text(COLLECTIVES_SCRIPT)
    run = module_tmp_path / "ddp"
    _run(
        [
            sys.executable,
            str(script),
            str(run),
            *TINY_OVERRIDES,
            *DDP_OVERRIDES,
            "trainer.log_every_n_steps=3",
            "trainer.checkpoint_every_minutes=null",
            "trainer=ddp_cpu",
            "trainer.precision=32-true",
        ],
        module_tmp_path,
    )
    return run


def _run(command: list[str], cwd: Path) -> None:
    """Run ``command`` offline in ``cwd``; fail with the end of its stderr."""
    result = subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_process_ddp_matches_single_process(ddp_run: Path, tmp_path: Path, tiny_config) -> None:
    run = ddp_run
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["steps"] == 6
    config: TrainConfig = tiny_config(*DDP_OVERRIDES)

    # The label split of the DDP run is the single-process split.
    single = MILeDataModule(config.data, Preprocessing())
    assert summary["labelled_sha256"] == single.labelled_digest
    assert summary["labelled_images"] == len(single.train_indices)

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


SHARD_SCRIPT = '''
"""Semi-supervised MILe under 2-process DDP; each rank writes the indices it trained on."""
import json
import sys
from pathlib import Path

import lightning as L

from mile_ssl.config import compose_train_config
from mile_ssl.commands.train import run_training


class RecordIndices(L.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out
        self.steps: list[dict[str, list[int]]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        flags = batch["labelled"]
        self.steps.append(
            {
                "labelled": batch["index"][flags].tolist(),
                "unlabeled": batch["index"][~flags].tolist(),
            }
        )

    def on_train_end(self, trainer, module) -> None:
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.steps))


out = Path(sys.argv[1])
run_training(compose_train_config(sys.argv[2:]), out, callbacks=[RecordIndices(out)])
'''


def test_two_process_ddp_draws_disjoint_unlabeled_shards(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    script = tmp_path / "semi_ddp.py"
    script.write_text(SHARD_SCRIPT)
    overrides = [
        *tiny_overrides,
        "method=mile_semi",
        "mile.kt=2",
        "mile.ks=2",
        "data.unlabeled_ratio=2",
        "data.fraction=0.25",
        "data.batch_size=8",
        "trainer.max_steps=6",
        "trainer=ddp_cpu",
        "trainer.precision=32-true",
    ]
    _run([sys.executable, str(script), str(tmp_path), *overrides], tmp_path)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 6
    labelled_pool: set[int] = set()
    unlabeled_seen: set[int] = set()
    for step, (first, second) in enumerate(zip(*ranks, strict=True)):
        student_step = step % 4 >= 2
        for shard in (first, second):
            assert len(shard["labelled"]) == 8
            assert len(shard["unlabeled"]) == (16 if student_step else 0)
        assert not set(first["labelled"]) & set(second["labelled"])
        assert not set(first["unlabeled"]) & set(second["unlabeled"])
        labelled_pool |= set(first["labelled"]) | set(second["labelled"])
        unlabeled_seen |= set(first["unlabeled"]) | set(second["unlabeled"])
    # Two student steps in one pass over the unlabeled pool, two disjoint shards.
    assert len(unlabeled_seen) == 2 * 2 * 16
    assert not labelled_pool & unlabeled_seen


def _steps(checkpoint: Path) -> int:
    return int(torch.load(checkpoint, weights_only=True)["mile_ssl"]["completed_steps"])


def test_csv_logged_two_process_run_resumes_on_two_processes_in_its_folder(
    ddp_run: Path, tmp_path: Path, tiny_overrides: list[str]
) -> None:
    run = tmp_path / "ddp"
    shutil.copytree(ddp_run, run)
    rows_before = (run / "logs" / "metrics.csv").read_text().splitlines()
    # The same command with a longer run, in the same folder: it resumes from last.ckpt
    # on every rank (rank 1's CSV logger is Lightning's dummy writer).
    _run(
        [
            MILE_SSL,
            "train",
            *tiny_overrides,
            *DDP_OVERRIDES,
            "trainer.max_steps=8",
            "trainer=ddp_cpu",
            "trainer.precision=32-true",
            "hydra.run.dir=ddp",
        ],
        tmp_path,
    )
    assert _steps(run / "checkpoints" / "last.ckpt") == 8
    assert json.loads((run / "metrics.json").read_text())["steps"] == 8
    rows = (run / "logs" / "metrics.csv").read_text().splitlines()
    logged_steps = [int(line.split(",")[rows[0].split(",").index("step")]) for line in rows[1:]]
    assert logged_steps[: len(rows_before) - 1] == [
        int(line.split(",")[rows_before[0].split(",").index("step")]) for line in rows_before[1:]
    ], "the first run's rows are kept"
    assert max(logged_steps) == 7


def test_tensorboard_logged_runs_resume_from_one_to_two_and_two_to_one_process(
    tmp_path: Path, tiny_overrides: list[str], tiny_config
) -> None:
    tensorboard = [*DDP_OVERRIDES, "trainer.logger=tensorboard"]
    single = run_training(tiny_config(*tensorboard, "trainer.max_steps=4"), tmp_path / "one")
    assert _steps(single.last_checkpoint) == 4
    _run(
        [
            MILE_SSL,
            "train",
            *tiny_overrides,
            *tensorboard,
            "trainer=ddp_cpu",
            "trainer.precision=32-true",
            f"trainer.resume_from={single.last_checkpoint}",
            "hydra.run.dir=two",
        ],
        tmp_path,
    )
    two = tmp_path / "two"
    assert _steps(two / "checkpoints" / "last.ckpt") == 6
    events = sorted(path.name for path in (two / "logs").glob("events.out.tfevents.*"))
    assert len(events) >= 2, "the one-process run's events are carried over"
    back = run_training(
        tiny_config(
            *tensorboard,
            "trainer.max_steps=8",
            f"trainer.resume_from={two / 'checkpoints' / 'last.ckpt'}",
        ),
        tmp_path / "back",
    )
    assert _steps(back.last_checkpoint) == 8
    metadata = torch.load(back.last_checkpoint, weights_only=True)["mile_ssl"]["metadata"]
    assert metadata["batch"] == {"batch_size": 16, "world_size": 1}


def test_ddp_steps_between_decisions_call_no_collective(ddp_run: Path) -> None:
    for rank in (0, 1):
        steps = json.loads((ddp_run / f"collectives{rank}.json").read_text())
        assert len(steps) == 6
        # Steps 1..6: the joint stop decision is taken at steps 3 and 6 (logging steps,
        # the last step): one all-reduce there, nothing in between; the last step also
        # saves the final checkpoint (Lightning's barrier after the save).
        for step, called in enumerate(steps, start=1):
            expected = [] if step % 3 else ["all_reduce"]
            expected += ["barrier"] if step == 6 else []
            assert called == expected, (rank, step, called)
