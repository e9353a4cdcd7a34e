"""Errors a user can cause: one message naming the culprit, exit status 2, no traceback.

Every case runs the command line on real files, as a user would: in this process
(:func:`run_cli_in_process`), and for one case and the two-process run, through the
installed console script.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_OVERRIDES, run_cli, run_cli_in_process, write_image_folder
from tests.layouts import moco

FIXTURES = Path(__file__).parent / "fixtures" / "solo_learn"
TINY = [override for override in TINY_OVERRIDES if not override.startswith("checkpoint")]


@pytest.fixture(scope="module")
def files(module_tmp_path: Path) -> Path:
    """A folder of the inputs the cases below get wrong."""
    root = module_tmp_path
    moco(2)(root)  # moco.pth.tar: a ResNet-50 MoCo-v2 file
    torch.save({"step": 1, "weights": {"enc.0.weight": torch.zeros(2)}}, root / "mystery.pt")
    good = (root / "moco.pth.tar").read_bytes()
    (root / "truncated.pth").write_bytes(good[: len(good) // 2])
    write_image_folder(root / "images" / "train", per_class=2)
    write_image_folder(root / "images" / "val", per_class=1)
    (root / "empty" / "train").mkdir(parents=True)
    (root / "empty" / "val").mkdir(parents=True)
    (root / "not_a_recipe.yaml").write_text("learning_rate: 0.1\n")
    (root / "a_file").write_text("not a folder\n")
    return root


def _train(*overrides: str) -> list[str]:
    return ["train", *TINY, *overrides]


CASES: dict[str, tuple[list[str], list[str]]] = {
    "misspelt key": (_train("checkpoint=scratch", "data.fractoin=0.1"), ["data.fractoin"]),
    "value out of range": (_train("checkpoint=scratch", "mile.kt=0"), ["mile.kt"]),
    "unknown group option": (_train("checkpoint=scratch", "method=mlie"), ["mlie", "method"]),
    "type mismatch": (_train("checkpoint=scratch", "trainer.max_steps=many"), ["max_steps"]),
    "missing checkpoint": (_train("checkpoint.path=missing.pt"), ["missing.pt"]),
    "no checkpoint given": (_train(), ["checkpoint.path", "checkpoint=scratch"]),
    "unrecognised checkpoint": (_train("checkpoint.path={files}/mystery.pt"), ["mystery.pt"]),
    "truncated checkpoint": (_train("checkpoint.path={files}/truncated.pth"), ["truncated.pth"]),
    "contradicted backbone": (
        [
            "train",
            "checkpoint.path={files}/moco.pth.tar",
            "backbone=resnet18",
            "data=folder",
            "data.root={files}/images",
        ],
        ["torchvision:resnet18", "torchvision:resnet50", "backbone=auto"],
    ),
    "unknown adapter": (
        _train("checkpoint.path={files}/moco.pth.tar", "checkpoint.adapter=mocov9"),
        ["mocov9"],
    ),
    "folder without root": (_train("checkpoint=scratch", "data=folder"), ["data.root"]),
    "missing data folder": (
        _train("checkpoint=scratch", "data=folder", "data.root={files}/nowhere"),
        ["nowhere"],
    ),
    "empty data folder": (
        _train("checkpoint=scratch", "data=folder", "data.root={files}/empty"),
        ["empty/train", "no class sub-folders"],
    ),
    "unwritable run directory": (
        _train("checkpoint=scratch", "hydra.run.dir={files}/a_file/run"),
        ["a_file"],
    ),
    "solo-learn recipe without checkpoint": (
        [
            "train",
            "--config-path",
            str(FIXTURES / "linear" / "imagenet"),
            "--config-name",
            "byol.yaml",
            "data.train_path={files}/images/train",
            "data.val_path={files}/images/val",
        ],
        ["pretrained_feature_extractor=PATH", "byol.yaml"],
    ),
    "from-solo on another YAML": (
        ["from-solo", "{files}/not_a_recipe.yaml"],
        ["not_a_recipe.yaml", "pretrained_feature_extractor"],
    ),
    "inspect a missing file": (["inspect", "{files}/absent.pth"], ["absent.pth"]),
    "eval a missing run": (["eval", "checkpoint={files}/absent.ckpt"], ["absent.ckpt"]),
    "eval an SSL checkpoint": (["eval", "checkpoint={files}/moco.pth.tar"], ["moco.pth.tar"]),
    "eval with a training override": (
        ["eval", "checkpoint={files}/moco.pth.tar", "backbone=resnet18"],
        ["backbone=resnet18", "only data overrides"],
    ),
    "predict a missing image": (
        ["predict", "{files}/absent.jpg", "checkpoint={files}/moco.pth.tar"],
        ["absent.jpg"],
    ),
    "export a missing run": (["export", "checkpoint={files}/absent.ckpt"], ["absent.ckpt"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_message_and_exit_status_2(
    case: str, files: Path, tmp_path: Path
) -> None:
    args, named = CASES[case]
    result = run_cli_in_process([arg.replace("{files}", str(files)) for arg in args], tmp_path)
    _assert_one_message(result, named, files, tmp_path)


def test_installed_script_exits_with_status_2_on_a_user_error(files: Path, tmp_path: Path) -> None:
    args, named = CASES["unrecognised checkpoint"]
    result = run_cli([arg.replace("{files}", str(files)) for arg in args], tmp_path)
    _assert_one_message(result, named, files, tmp_path)


def _assert_one_message(
    result: subprocess.CompletedProcess[str], named: list[str], files: Path, tmp_path: Path
) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    last_line = result.stderr.strip().splitlines()[-1]
    # Errors in the arguments themselves come with the usage, as argparse prints them.
    usage = result.stderr.startswith("usage: mile-ssl")
    assert usage or last_line == "(set MILE_SSL_DEBUG=1 to see the traceback)"
    message = result.stderr[result.stderr.index("error:") :]
    for text in named:
        assert text.replace("{files}", str(files)) in message, message
    # Schema class names are mile_ssl's internals, not something the user wrote.
    assert "object_type=" not in message and "reference_type=" not in message
    # Nothing is left behind: no run directory for a run that never started.
    assert not (tmp_path / "runs").exists(), sorted((tmp_path / "runs").rglob("*"))


def test_debug_variable_shows_the_traceback(tmp_path: Path) -> None:
    result = run_cli_in_process(_train("checkpoint.path=missing.pt"), tmp_path, MILE_SSL_DEBUG="1")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "missing.pt" in result.stderr


def test_existing_run_directory_is_kept_after_an_error(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"kept": True}))
    result = run_cli_in_process(
        _train("checkpoint.path=missing.pt", f"hydra.run.dir={run}"), tmp_path
    )
    assert result.returncode == 2
    assert json.loads((run / "metrics.json").read_text()) == {"kept": True}


@pytest.mark.skipif(os.cpu_count() == 1, reason="two CPU processes")
def test_error_in_a_two_process_run_exits_every_rank(files: Path, tmp_path: Path) -> None:
    result = run_cli(
        _train(
            "trainer=ddp_cpu",
            "checkpoint=scratch",
            "data=folder",
            f"data.root={files}/empty",
        ),
        tmp_path,
        timeout=240,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "no class sub-folders" in result.stderr[result.stderr.index("error:") :]


@pytest.mark.parametrize(
    "command",
    [
        "train",
        "eval",
        "predict",
        "export",
        "inspect",
        "from-solo",
        "check-data",
        "checkpoints",
        "demo",
    ],
)
def test_every_command_has_help_with_an_example(command: str, tmp_path: Path) -> None:
    result = run_cli_in_process([command, "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"mile-ssl {command}" in result.stdout
    assert "example" in result.stdout.lower()


def test_train_help_starts_with_mile_ssl(tmp_path: Path) -> None:
    text = run_cli_in_process(["train", "--help"], tmp_path).stdout
    assert text.startswith("mile-ssl train: fine-tune a self-supervised checkpoint")
    assert "powered by Hydra" not in text
    assert "method: distill, mile, mile_semi, self_train, sigmoid, softmax" in text
    assert "checkpoint.path" in text and "mile.kt / mile.ks" in text
