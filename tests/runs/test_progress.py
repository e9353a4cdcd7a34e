from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from mile_ssl.runs import progress
from mile_ssl.runs.progress import ImageRate, step_description
from mile_ssl.schedule import Phase, StepPosition, mile_position
from tests.conftest import TINY_OVERRIDES, run_cli_in_process

BAR_ON = [
    override for override in TINY_OVERRIDES if not override.startswith("trainer.progress_bar")
]
"""The tiny run with the default progress bar."""

MILE_RUN = ["method=mile", "mile.kt=1", "mile.ks=1", "trainer.max_steps=4", "hydra.run.dir=run"]
"""Two cycles of one teacher and one student step."""


def bar_lines(text: str) -> list[str]:
    """Every state the bar was drawn in (tqdm redraws a line after a carriage return)."""
    return [line.strip() for line in re.split(r"[\r\n]", text) if line.strip().startswith("step ")]


def logged(run: Path, step: int, name: str) -> float:
    """The value of ``name`` the run's CSV log holds for training step ``step``."""
    with (run / "logs" / "metrics.csv").open(newline="") as file:
        rows = [row for row in csv.DictReader(file) if row["step"] == str(step) and row[name]]
    return float(rows[0][name])


def shown(line: str, name: str) -> float:
    found = re.search(rf"{re.escape(name)}=([0-9.e+-]+)", line)
    assert found is not None, line
    return float(found.group(1))


def test_description_names_mile_phase_and_one_based_cycle() -> None:
    assert step_description(3, 4, mile_position(2, 1, 1), 2) == (
        "step 3/4, teacher phase, cycle 2/2"
    )
    assert step_description(2, 4, mile_position(1, 1, 1), 2) == (
        "step 2/4, student phase, cycle 1/2"
    )


@pytest.mark.parametrize("phase", [Phase.SUPERVISED, Phase.DISTILL])
def test_description_of_other_methods_is_the_step_alone(phase: Phase) -> None:
    assert step_description(7, 10, StepPosition(phase, 0, 6), 1) == "step 7/10"


def test_description_without_a_step_count_or_schedule() -> None:
    assert step_description(5, None, None, 1) == "step 5"


def test_image_rate_leaves_out_time_before_a_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 1.0, 3.0, 103.0, 104.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    rate = ImageRate(window=10)
    assert rate.per_second() is None
    rate.restart()  # 0 s
    rate.add(32)  # 1 s: 32 images in 1 s
    rate.add(32)  # 3 s: 32 images in 2 s
    rate.restart()  # 103 s: validation took 100 s
    rate.add(32)  # 104 s
    assert rate.per_second() == pytest.approx(96 / 4)


def test_mile_run_shows_steps_phase_cycle_its_phase_loss_and_images_per_second(
    tmp_path: Path,
) -> None:
    result = run_cli_in_process(["train", *BAR_ON, *MILE_RUN], tmp_path)
    assert result.returncode == 0, result.stderr
    lines = bar_lines(result.stdout)
    assert not any("Epoch" in line for line in re.split(r"[\r\n]", result.stdout))
    student = [line for line in lines if line.startswith("step 2/4, student phase, cycle 1/2")]
    teacher = [line for line in lines if line.startswith("step 3/4, teacher phase, cycle 2/2")]
    assert student and teacher, lines
    # The loss of the step's own phase, as logged (Lightning shows three significant digits).
    run = tmp_path / "run"
    for line, step, name in ((student[-1], 1, "student"), (teacher[-1], 2, "teacher")):
        assert shown(line, "loss") == pytest.approx(logged(run, step, f"train/{name}_loss"), 5e-3)
        assert "_loss" not in line
        assert shown(line, "images/s") > 0


def test_other_methods_show_steps_loss_and_images_per_second(tmp_path: Path) -> None:
    result = run_cli_in_process(
        ["train", *BAR_ON, "method=softmax", "trainer.max_steps=4", "hydra.run.dir=run"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    last = [line for line in bar_lines(result.stdout) if line.startswith("step 4/4")][-1]
    assert "phase" not in last and "cycle" not in last
    expected = logged(tmp_path / "run", 3, "train/supervised_loss")
    assert shown(last, "loss") == pytest.approx(expected, 5e-3)
    assert shown(last, "images/s") > 0


def test_progress_bar_false_shows_no_bar(tmp_path: Path) -> None:
    result = run_cli_in_process(
        ["train", *BAR_ON, *MILE_RUN, "trainer.progress_bar=false"], tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert bar_lines(result.stdout) == []
    assert "images/s" not in result.stdout + result.stderr
