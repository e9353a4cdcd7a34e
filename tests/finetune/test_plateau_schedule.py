"""``optim.schedule=plateau``: the MILe reference code's constant rate cut on plateaus.

The rule (torch's ``ReduceLROnPlateau``), the validation loss it watches, the same
decision on every rank, a run on the reference overlay whose rates follow its logged
validation losses, its state across a resume, and the config it needs.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from mile_ssl.commands.train import run_training
from mile_ssl.config import OptimConfig, TrainConfig
from mile_ssl.lr_schedule import LearningRateSchedule, PlateauSchedule, validation_loss_sum
from mile_ssl.schedule import warmup_cosine
from tests.conftest import TINY_OVERRIDES, run_cli_in_process

OVERLAY = "experiment=imagenet/base/mile_reference_schedule"
SCALED_DOWN = (
    OVERLAY,
    "trainer.precision=32-true",  # the overlay's fp16 needs a GPU
    "trainer.max_steps=16",
    "trainer.val_every_n_steps=2",
    "optim.plateau_patience=1",
    "mile.kt=3",
    "mile.ks=2",
)
"""The reference overlay at digit-grid scale: 16 steps, a validation every 2."""


def plateau_scales(losses: Sequence[float], factor: float, patience: int) -> list[float]:
    """The scale after each validation: the rule restated (relative threshold 1e-4)."""
    best, bad, scale, scales = math.inf, 0, 1.0, []
    for loss in losses:
        if loss < best * (1 - 1e-4):
            best, bad = loss, 0
        else:
            bad += 1
        if bad > patience:
            scale, bad = scale * factor, 0
        scales.append(scale)
    return scales


def test_the_rate_is_constant_until_more_than_patience_validations_fail_to_improve() -> None:
    schedule = PlateauSchedule(factor=0.5, patience=2, warmup_steps=4)
    assert [schedule.factor(step) for step in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    # 3.9999 is not better than 4.0: by less than the relative threshold.
    losses = [5.0, 4.0, 3.9999, 4.5, 4.1, 3.0, 3.5, 3.5, 3.5, 3.5, 3.5, 3.5]
    cuts = [schedule.observe(loss) for loss in losses]
    assert [i for i, cut in enumerate(cuts) if cut] == [4, 8, 11]
    assert schedule.scale == 0.125 and schedule.factor(100) == 0.125
    fresh = PlateauSchedule(factor=0.5, patience=2)
    for loss in losses:
        fresh.observe(loss)
    assert fresh.scale == plateau_scales(losses, 0.5, 2)[-1]


def test_the_plateau_state_saved_to_disk_continues_the_same_decisions(tmp_path: Path) -> None:
    first = PlateauSchedule(factor=0.1, patience=1)
    for loss in [3.0, 2.0, 2.5, 2.4]:  # one cut, a best of 2.0, no bad validation since
        first.observe(loss)
    torch.save(first.state_dict(), tmp_path / "state.pt")
    resumed = PlateauSchedule(factor=0.1, patience=1)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    fresh = PlateauSchedule(factor=0.1, patience=1)
    later = [2.2, 2.1, 1.0, 1.5, 1.4]
    cuts = [resumed.observe(loss) for loss in later]
    assert cuts == [first.observe(loss) for loss in later] == [False, True, False, False, True]
    assert resumed.state_dict() == first.state_dict()
    assert resumed.factor(0) == pytest.approx(1e-3)
    # Without the saved state the same losses decide otherwise.
    assert [fresh.observe(loss) for loss in later] == [False] * 4 + [True]


def test_cosine_keeps_its_factor_and_no_state() -> None:
    schedule = LearningRateSchedule(OptimConfig(warmup_steps=3))
    assert [schedule.factor(step, 20) for step in range(20)] == [
        warmup_cosine(step, 20, 3) for step in range(20)
    ]
    schedule.add_validation_batch(torch.zeros(2, 3), {}, multi_label=True)  # nothing read
    assert schedule.end_validation(lambda *_: pytest.fail("no reduce")) is None
    assert schedule.state_dict() is None


def test_the_watched_loss_is_the_reference_codes_validation_loss() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, generator=generator)
    sets = torch.tensor([[1, 0, 0, 1, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 0, 0]])
    probabilities = torch.sigmoid(logits)
    bce = -(sets * probabilities.log() + (1 - sets) * (1 - probabilities).log())
    expected = (bce * (1 + 4 * sets)).mean()  # positives weighted C - 1 = 4
    total, count = validation_loss_sum(logits, torch.zeros(4), sets.bool(), multi_label=True)
    assert count == 4 and total / count == pytest.approx(float(expected), rel=1e-6)
    labels = torch.tensor([3, 1, -1, 0])  # the unlabeled image is not counted
    total, count = validation_loss_sum(logits, labels, sets.bool(), multi_label=False)
    kept = torch.nn.functional.cross_entropy(logits[[0, 1, 3]], labels[[0, 1, 3]])
    assert count == 3 and total / count == pytest.approx(float(kept), rel=1e-6)


def test_every_rank_takes_the_decision_of_the_whole_validation_set() -> None:
    """Two ranks, each half the batches: both see the loss of all of them."""
    optim = OptimConfig(schedule="plateau", plateau_patience=0)
    batches = [
        {"label": torch.tensor([0, 1]), "label_set": torch.eye(3, dtype=torch.bool)[:2]},
        {"label": torch.tensor([2]), "label_set": torch.eye(3, dtype=torch.bool)[2:]},
    ]
    logits = [torch.tensor([[2.0, -1.0, 0.0], [0.5, 0.5, -3.0]]), torch.tensor([[0.0, 1.0, 4.0]])]
    whole = LearningRateSchedule(optim)
    for batch_logits, batch in zip(logits, batches, strict=True):
        whole.add_validation_batch(batch_logits, batch, multi_label=True)
    expected = whole.end_validation(lambda tensor, reduce_op: tensor)
    ranks = [LearningRateSchedule(optim) for _ in batches]
    for rank, batch_logits, batch in zip(ranks, logits, batches, strict=True):
        rank.add_validation_batch(batch_logits, batch, multi_label=True)
    sums = [
        torch.stack(validation_loss_sum(x, batch["label"], batch["label_set"], True))
        for x, batch in zip(logits, batches, strict=True)
    ]
    assert all(rank.end_validation(lambda _, reduce_op: sum(sums)) == expected for rank in ranks)
    assert expected is not None and expected > 0


class RateRecorder(L.Callback):
    """The learning rate every training step used."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        self.rates.append(float(module.optimizer(0).optimizer.param_groups[0]["lr"]))


def logged_validation_losses(run: Path) -> list[float]:
    with (run / "logs" / "metrics.csv").open() as rows:
        return [float(row["val/loss"]) for row in csv.DictReader(rows) if row.get("val/loss")]


def test_the_reference_overlay_keeps_a_constant_rate_until_a_plateau(
    tiny_config: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    config = tiny_config(*SCALED_DOWN)
    assert config.optim.schedule == "plateau" and config.optim.plateau_factor == 0.1
    rates = RateRecorder()
    run_training(config, tmp_path, callbacks=[rates])
    losses = logged_validation_losses(tmp_path)
    assert len(losses) == 8  # after steps 2, 4, ..., 16
    scales = plateau_scales(losses, factor=0.1, patience=1)
    assert scales[-1] < 1.0, "the test needs a plateau"
    # A validation after step s sets the rate of steps s + 1 on.
    expected = [config.optim.lr] * 2 + [config.optim.lr * s for s in scales for _ in (0, 1)]
    assert rates.rates == pytest.approx(expected[:16], rel=1e-9)
    first_cut = next(i for i, rate in enumerate(rates.rates) if rate != config.optim.lr)
    assert rates.rates[:first_cut] == [config.optim.lr] * first_cut
    assert rates.rates[first_cut] == pytest.approx(config.optim.lr * 0.1)


def test_a_resumed_run_continues_on_the_same_rates(
    tiny_config: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    overrides = (*SCALED_DOWN, "trainer.checkpoint_every_n_steps=7")
    full_rates, resumed_rates = RateRecorder(), RateRecorder()
    full = run_training(tiny_config(*overrides), tmp_path / "full", callbacks=[full_rates])
    step7 = tmp_path / "full" / "checkpoints" / "step7.ckpt"
    saved = torch.load(step7, weights_only=True)["mile_ssl"]["lr_schedule"]
    assert saved["scale"] < 1.0 and saved["validations"] == 3  # cut before the save
    resumed = run_training(
        tiny_config(*overrides, f"trainer.resume_from={step7}"),
        tmp_path / "resumed",
        callbacks=[resumed_rates],
    )
    assert resumed_rates.rates == full_rates.rates[7:]
    full_state = torch.load(full.last_checkpoint, weights_only=True)
    resumed_state = torch.load(resumed.last_checkpoint, weights_only=True)
    assert resumed_state["mile_ssl"]["lr_schedule"] == full_state["mile_ssl"]["lr_schedule"]
    for key, value in full_state["state_dict"].items():
        assert torch.equal(value, resumed_state["state_dict"][key]), key
    assert full.metrics == resumed.metrics


RANK_SCRIPT = """
import json, sys
from pathlib import Path
import lightning as L
from mile_ssl.commands.train import run_training
from mile_ssl.config import compose_train_config


class Rates(L.Callback):
    def __init__(self):
        self.rates = []

    def on_train_batch_end(self, trainer, module, *args):
        self.rates.append(module.optimizer(0).optimizer.param_groups[0]["lr"])

    def on_train_end(self, trainer, module):
        state = module.lr_schedule.state_dict()
        Path(sys.argv[1], f"rank{trainer.global_rank}.json").write_text(
            json.dumps({"rates": self.rates, "state": state})
        )


run_training(compose_train_config(sys.argv[2:]), Path(sys.argv[1]), callbacks=[Rates()])
"""


def test_two_ranks_take_the_same_decisions(tmp_path: Path) -> None:
    """Each rank validates its own share of the images; the summed loss decides for both."""
    script = tmp_path / "rates.py"
    script.write_text(RANK_SCRIPT)
    run = tmp_path / "ddp"
    command = [sys.executable, str(script), str(run), *TINY_OVERRIDES, *SCALED_DOWN]
    ddp = ["trainer=ddp_cpu", "trainer.precision=32-true", "trainer.max_steps=8"]
    result = subprocess.run(
        [*command, *ddp, "data.batch_size=16"],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((run / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0] == ranks[1]
    assert ranks[0]["state"]["validations"] == 4 and ranks[0]["state"]["scale"] < 1.0
    losses = logged_validation_losses(run)
    assert ranks[0]["state"]["scale"] == pytest.approx(plateau_scales(losses, 0.1, 1)[-1])


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["optim.schedule=plateau"], ["optim.schedule", "trainer.val_every_n_steps"]),
        (["optim.schedule=step"], ["optim.schedule", "plateau"]),
        (["optim.plateau_factor=1.0"], ["optim.plateau_factor", "(0, 1)"]),
        (["optim.plateau_patience=-1"], ["optim.plateau_patience"]),
    ],
)
def test_a_plateau_schedule_it_cannot_run_is_refused_before_anything_is_written(
    overrides: list[str], named: list[str], tmp_path: Path
) -> None:
    result = run_cli_in_process(["train", *TINY_OVERRIDES, *overrides], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert all(name in result.stderr for name in named), result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []
