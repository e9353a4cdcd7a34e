"""The ImageNet recipes of the MILe paper's Table 5, and the reference code's schedule.

SimCLR-v2's self-distillation and its distillation from a ResNet-50 (2x+SK) teacher at 1 %
and 10 % labels, and semi-supervised MILe at 10 %: each composes to its protocol, its
header gives the paper's number and a teacher command that composes too, and a
distillation recipe trains two steps from a teacher run. The overlay
``base/mile_reference_schedule.yaml`` turns a recipe into the reference code's run, whose
MILe cycle is the reference loop's. (Every recipe's composition is also recorded in
tests/fixtures/imagenet_recipes_composed.json, tests/test_recipes.py.)
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from mile_ssl.commands.train import run_training
from mile_ssl.config import compose_train_config
from mile_ssl.schedule import Phase, StepPosition, mile_position
from tests.conftest import write_imagenet_tree
from tests.test_recipes import RECIPES, SMOKE

DISTILLATION = {
    # recipe: (temperature, the paper's top-1, the teacher's checkpoint argument)
    "simclrv2_sk1_1pct_self_distill": (0.1, "70.15", "checkpoint.name=simclrv2_r50_1x_sk1"),
    "simclrv2_sk1_10pct_self_distill": (0.1, "74.43", "checkpoint.name=simclrv2_r50_1x_sk1"),
    "simclrv2_sk1_1pct_distill_from_2x": (1.0, "69.0", "checkpoint.path=r50_2x_sk1.pth"),
    "simclrv2_sk1_10pct_distill_from_2x": (1.0, "75.1", "checkpoint.path=r50_2x_sk1.pth"),
}
MILE_TABLE_5 = {"1pct": "73.08", "10pct": "75.3"}
OVERLAY = "imagenet/base/mile_reference_schedule"


def _header(name: str) -> str:
    return (RECIPES / f"{name}.yaml").read_text().split("defaults:")[0]


def _teacher_command(header: str) -> list[str]:
    """The arguments of the teacher's ``mile-ssl train`` command in a recipe header."""
    found = re.search(r"#\s+mile-ssl train (.+) \\\n#\s+(.+)\n", header)
    assert found is not None, "the header gives the teacher's command"
    return f"{found[1]} {found[2]}".split()


@pytest.mark.parametrize("name", list(DISTILLATION))
def test_distillation_recipe_composes_as_shipped(name: str) -> None:
    temperature, published, teacher_checkpoint = DISTILLATION[name]
    fraction = name.split("_")[2]
    config = compose_train_config([f"experiment=imagenet/{name}", "data.root=/x"])
    assert config.method.name == "distill" and config.distill.temperature == temperature
    assert config.distill.supervised_weight == 0.0 and config.distill.teacher_checkpoint is None
    assert config.checkpoint.adapter == "simclrv2" and config.checkpoint.projection_layers == 0
    # The batches, optimiser and length of the MILe rows it is compared with.
    semi = compose_train_config(
        [f"experiment=imagenet/simclrv2_sk1_{fraction}_semi", "data.root=/x"]
    )
    assert config.data == semi.data and config.data.unlabeled_ratio == 7
    assert config.optim == semi.optim and config.trainer == semi.trainer

    header = _header(name)
    assert f"Published top-1 to expect: {published} %" in header and "Table 5" in header
    assert f"MILe: {MILE_TABLE_5[fraction]} %" in header
    assert "has not been reproduced with this code yet" in header
    teacher_args = _teacher_command(header)
    assert teacher_checkpoint in teacher_args and "method=softmax" in teacher_args
    teacher = compose_train_config([a for a in teacher_args if not a.startswith("hydra.")])
    assert teacher.method.name == "softmax" and teacher.checkpoint.projection_layers == 1
    assert (teacher.data.fraction, teacher.data.split) == (config.data.fraction, "simclr")
    run_dir = next(a for a in teacher_args if a.startswith("hydra.run.dir="))
    run_line = header.split("# Run:")[1]
    checkpoint = run_dir.split("=")[1] + "/checkpoints/last.ckpt"
    assert f"distill.teacher_checkpoint={checkpoint}" in run_line


def test_semi_supervised_10pct_recipe_composes_as_shipped() -> None:
    config = compose_train_config(["experiment=imagenet/simclrv2_sk1_10pct_semi", "data.root=/x"])
    plain = compose_train_config(["experiment=imagenet/simclrv2_sk1_10pct", "data.root=/x"])
    assert config.mile.semi_supervised and config.mile.empty_pseudo_labels == "ignore"
    assert config.data.unlabeled_ratio == 7 and config.data.fraction == 0.1
    assert dataclasses.replace(config.mile, semi_supervised=False) == plain.mile
    assert config.optim == plain.optim and config.trainer == plain.trainer
    header = _header("simclrv2_sk1_10pct_semi")
    assert "75.3 %" in header and "74.43 %" in header and "This project's design" in header


def test_distillation_and_mile_semi_recipes_train_two_steps_from_a_teacher_run(
    module_tmp_path: Path, tmp_path: Path
) -> None:
    """Both students of docs/imagenet.md's Table 5 commands, from one teacher run."""
    tree = write_imagenet_tree(module_tmp_path / "imagenet")
    teacher = run_training(
        compose_train_config(
            ["experiment=imagenet/simclrv2_sk1_1pct", f"data.root={tree}", *SMOKE, "method=softmax"]
        ),
        tmp_path / "teacher",
    )
    config = compose_train_config(
        [
            "experiment=imagenet/simclrv2_sk1_1pct_self_distill",
            f"data.root={tree}",
            *SMOKE,
            "data.unlabeled_ratio=1",  # the tiny tree has 6 unlabeled images
            f"distill.teacher_checkpoint={teacher.last_checkpoint}",
        ]
    )
    result = run_training(config, tmp_path / "student")
    payload = json.loads((result.output_dir / "metrics.json").read_text())
    assert payload["steps"] == 2 and payload["labelled_images"] == 6
    assert result.metrics["num_samples"] == 2

    # The lever the digit benchmark chose: mile_semi started from the teacher's network.
    semi = compose_train_config(
        [
            "experiment=imagenet/simclrv2_sk1_1pct_semi",
            f"data.root={tree}",
            *SMOKE,
            "data.unlabeled_ratio=1",
            f"checkpoint.path={teacher.output_dir}",
            "checkpoint.init=checkpoint",
            "checkpoint.adapter=mile_ssl_run",
            "mile.unlabeled_rho=0.3",
        ]
    )
    started = run_training(semi, tmp_path / "semi")
    recorded = json.loads((started.output_dir / "metrics.json").read_text())
    assert recorded["steps"] == 2 and recorded["labelled_images"] == 6


def test_docs_command_of_mile_semi_from_the_teacher_composes() -> None:
    docs = (Path(__file__).parents[1] / "docs" / "imagenet.md").read_text()
    block = next(
        part for part in docs.split("```bash")[1:] if "checkpoint.adapter=mile_ssl_run" in part
    )
    command = block.split("```")[0].replace("\\\n", " ").split()
    assert command[:2] == ["mile-ssl", "train"]
    config = compose_train_config(command[2:])
    assert config.mile.semi_supervised and config.data.fraction == 0.1
    assert (config.checkpoint.adapter, config.checkpoint.projection_layers) == ("mile_ssl_run", 0)
    assert config.mile.unlabeled_rho == 0.3


def test_reference_schedule_overlay_gives_a_recipe_the_reference_codes_schedule() -> None:
    recipe = compose_train_config(["experiment=imagenet/simclrv2_sk1_10pct", "data.root=/x"])
    config = compose_train_config(
        [f"experiment=[imagenet/simclrv2_sk1_10pct,{OVERLAY}]", "data.root=/x"]
    )
    assert (config.optim.schedule, config.optim.plateau_factor) == ("plateau", 0.1)
    assert config.optim.plateau_patience == 10 and config.optim.warmup_steps == 0
    assert (config.trainer.max_steps, config.trainer.max_epochs) == (200_000, None)
    assert config.trainer.val_every_n_steps == 6000 and config.trainer.precision == "16-mixed"
    assert (config.mile.kt, config.mile.ks, config.mile.variant) == (1999, 1999, "snapshot")
    # The recipe's optimiser (the reference code's), data and network are kept.
    keep = ("lr", "momentum", "nesterov", "weight_decay", "name", "head_lr")
    assert {k: getattr(config.optim, k) for k in keep} == {
        k: getattr(recipe.optim, k) for k in keep
    }
    assert (config.data, config.checkpoint, config.method) == (
        recipe.data,
        recipe.checkpoint,
        recipe.method,
    )
    text = (RECIPES / "base" / "mile_reference_schedule.yaml").read_text()
    assert f"'experiment=[imagenet/simclrv2_sk1_10pct,{OVERLAY}]'" in text
    for line in text.splitlines():  # every value states its source
        if re.match(r"\s+\w+: \S", line):
            assert "  # reference code" in line, line


def reference_loop_phases(k1: int, k2: int, iterations: int) -> list[Phase]:
    """The phase of each iteration of the MILe reference code's loop, restated.

    Its counters switch phase when ``iters + 1 == k``, that is after ``k - 1`` steps.
    """
    phases: list[Phase] = []
    teacher = student = False
    teacher_steps = student_steps = 0
    start = True
    for _ in range(iterations):
        if teacher and teacher_steps + 1 == k1:
            teacher, student, teacher_steps = False, True, 0
        if start or (student and student_steps + 1 == k2):
            start, teacher, student, student_steps = False, True, False, 0
        phases.append(Phase.STUDENT if student else Phase.TEACHER)
        if student:
            student_steps += 1
        else:
            teacher_steps += 1
    return phases


def test_the_overlays_mile_cycle_is_the_reference_loops() -> None:
    config = compose_train_config([f"experiment=[imagenet/mocov2_10pct,{OVERLAY}]", "data.root=/x"])
    kt, ks = config.mile.kt, config.mile.ks
    steps = 3 * (kt + ks) + 10
    reference = reference_loop_phases(2000, 2000, steps)  # the reference's k1 = k2 = 2000
    assert [mile_position(step, kt, ks).phase for step in range(steps)] == reference
    assert reference[: kt + ks].count(Phase.TEACHER) == 1999
    assert mile_position(kt + ks, kt, ks) == StepPosition(Phase.TEACHER, 1, 0)
