"""Errors a user can cause: one message naming the culprit, exit status 2, no traceback.

Every case runs the command line on real files, as a user would: in this process
(:func:`run_cli_in_process`), and for one case and the two-process run, through the
installed console script. The working folder is compared byte for byte before and
after: a command stopped by bad input leaves nothing behind and loses nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_OVERRIDES, run_cli, run_cli_in_process, write_image_folder
from tests.layouts import moco
from tests.runs.test_failed_start import tree_snapshot

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
    first_class = sorted((root / "images" / "train").iterdir())[0]
    (root / "one_class_split.txt").write_text(
        "".join(f"{image.name}\n" for image in sorted(first_class.iterdir()))
    )
    write_image_folder(root / "one_class" / "train", classes=1, per_class=2)
    write_image_folder(root / "one_class" / "val", classes=1, per_class=1)
    (root / "empty" / "train").mkdir(parents=True)
    (root / "empty" / "val").mkdir(parents=True)
    (root / "not_a_recipe.yaml").write_text("learning_rate: 0.1\n")
    (root / "a_file").write_text("not a folder\n")
    return root


def _train(*overrides: str) -> list[str]:
    return ["train", *TINY, *overrides]


def _folder(root: str, *overrides: str) -> list[str]:
    """A scratch run on the image folder ``{files}/<root>`` (four 32 px training images)."""
    return _train(
        "checkpoint=scratch",
        "data=folder",
        f"data.root={{files}}/{root}",
        "data.image_size=32",
        "data.num_workers=0",
        "trainer.max_steps=1",
        *overrides,
    )


def _solo_recipe(*overrides: str) -> list[str]:
    return [
        "train",
        "--config-path",
        str(FIXTURES / "linear" / "imagenet"),
        "--config-name",
        "byol.yaml",
        "data.train_path={files}/images/train",
        "data.val_path={files}/images/val",
        *overrides,
    ]


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
NAMED_FILE_ERRORS = {"missing split file", "missing label sets file"}
NEEDS_NO_GPU = {"no GPU", "solo-learn recipe asking for a GPU on a machine without one"}


CASES: dict[str, tuple[list[str], list[str]]] = {
    "misspelt key": (
        _train("checkpoint=scratch", "data.fractoin=0.1"),
        ["unknown key 'data.fractoin'; did you mean 'data.fraction'?"],
    ),
    "misspelt key with Hydra's +": (
        _train("checkpoint=scratch", "+trainer.max_step=2"),
        ["unknown key 'trainer.max_step'; did you mean 'trainer.max_steps'?"],
    ),
    "misspelt section": (
        _train("checkpoint=scratch", "trainr.max_steps=2"),
        ["unknown key 'trainr.max_steps'; did you mean 'trainer.max_steps'?"],
    ),
    "misspelt top-level key": (
        _train("checkpoint=scratch", "sead=2"),
        ["unknown key 'sead'; did you mean 'seed'?"],
    ),
    "value out of range": (_train("checkpoint=scratch", "mile.kt=0"), ["mile.kt"]),
    "unknown group option": (
        _train("checkpoint=scratch", "method=mlie"),
        ["unknown option 'method=mlie'; did you mean 'method=mile'?", "softmax"],
    ),
    "unknown nested group option": (
        _train("checkpoint=scratch", "experiment=imagenet/mocov2_1pc"),
        ["did you mean 'experiment=imagenet/mocov2_1pct'?"],
    ),
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
        _solo_recipe(),
        ["pretrained_feature_extractor=PATH", "byol.yaml"],
    ),
    "batch larger than the training set": (
        _folder("images", "data.batch_size=64"),
        ["4 training images", "data.batch_size"],
    ),
    "batch larger than the training set, into a new named folder": (
        _folder("images", "data.batch_size=64", "hydra.run.dir=new/deep/run"),
        ["data.batch_size"],
    ),
    "missing split file": (
        _folder("images", "data.split_file={files}/absent.txt"),
        ["config key 'data.split_file'", "absent.txt", "No such file or directory"],
    ),
    "split file of one class": (
        _folder("images", "data.split_file={files}/one_class_split.txt"),
        ["data.split_file", "one_class_split.txt", "one class only"],
    ),
    "missing label sets file": (
        _folder("images", "data.val_label_sets={files}/absent.json"),
        ["config key 'data.val_label_sets'", "absent.json"],
    ),
    "one class": (
        _folder("one_class"),
        ["one_class/train", "one class only (n00000000)", "at least two"],
    ),
    "no GPU": (
        _train("checkpoint=scratch", "trainer.accelerator=gpu"),
        ["'trainer.accelerator' is 'gpu'", "trainer.accelerator=cpu", "trainer.accelerator=auto"],
    ),
    "solo-learn recipe asking for a GPU on a machine without one": (
        _solo_recipe("pretrained_feature_extractor={files}/moco.pth.tar"),
        ["'trainer.accelerator' is 'gpu'", "solo-learn recipe", "trainer.accelerator=cpu"],
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


@pytest.fixture
def working(tmp_path: Path) -> Path:
    """A working folder that already holds an earlier run, which no error may touch."""
    earlier = tmp_path / "runs" / "2026-01-01" / "00-00-00-abcdef"
    earlier.mkdir(parents=True)
    (earlier / "metrics.json").write_text('{"metrics": {"top1": 0.5}}\n')
    return tmp_path


@pytest.mark.parametrize(
    "case", [pytest.param(case, marks=NO_GPU) if case in NEEDS_NO_GPU else case for case in CASES]
)
def test_user_error_is_one_message_and_exit_status_2(case: str, files: Path, working: Path) -> None:
    args, named = CASES[case]
    before = tree_snapshot(working)
    result = run_cli_in_process([arg.replace("{files}", str(files)) for arg in args], working)
    _assert_one_message(result, named, files)
    if case in NAMED_FILE_ERRORS:  # a bare OSError names neither the key nor the fix
        assert "[Errno" not in result.stderr
    assert tree_snapshot(working) == before, "the working folder changed"


def test_installed_script_exits_with_status_2_on_a_user_error(files: Path, working: Path) -> None:
    args, named = CASES["unrecognised checkpoint"]
    before = tree_snapshot(working)
    result = run_cli([arg.replace("{files}", str(files)) for arg in args], working)
    _assert_one_message(result, named, files)
    assert tree_snapshot(working) == before


def _assert_one_message(
    result: subprocess.CompletedProcess[str], named: list[str], files: Path
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


def test_debug_variable_shows_the_traceback(tmp_path: Path) -> None:
    result = run_cli_in_process(_train("checkpoint.path=missing.pt"), tmp_path, MILE_SSL_DEBUG="1")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "missing.pt" in result.stderr


def test_existing_run_directory_is_kept_after_an_error(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"kept": True}))
    before = tree_snapshot(tmp_path)
    result = run_cli_in_process(
        _train("checkpoint.path=missing.pt", f"hydra.run.dir={run}"), tmp_path
    )
    assert result.returncode == 2
    # Hydra wrote its records and log into the folder; the failed start took them out.
    assert tree_snapshot(tmp_path) == before


def test_a_requeued_jobs_folder_is_left_as_it_was(files: Path, tmp_path: Path) -> None:
    # Under SLURM the default folder is the job's own, which a requeued job finds again.
    run = tmp_path / "runs" / "slurm-4242"
    run.mkdir(parents=True)
    (run / "cli.log").write_text("[INFO] the first start of the job\n")
    (run / "metrics.json").write_text('{"kept": true}\n')
    before = tree_snapshot(tmp_path)
    args = _folder("images", "data.split_file={files}/absent.txt")
    result = run_cli_in_process(
        [arg.replace("{files}", str(files)) for arg in args], tmp_path, SLURM_JOB_ID="4242"
    )
    assert result.returncode == 2 and "data.split_file" in result.stderr
    assert tree_snapshot(tmp_path) == before


def test_a_config_of_ones_own_leaves_nothing_either(files: Path, tmp_path: Path) -> None:
    # Without mile_ssl's config.yaml, Hydra's own default folder (outputs/DATE/TIME).
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "mine.yaml").write_text("defaults:\n  - base_config\n  - _self_\n")
    before = tree_snapshot(tmp_path)
    result = run_cli_in_process(
        [
            "train",
            "--config-dir",
            "config",
            "--config-name",
            "mine",
            "checkpoint.init=scratch",
            "trainer.accelerator=cpu",
            "data.name=folder",
            f"data.root={files}/images",
            f"data.split_file={files}/absent.txt",
        ],
        tmp_path,
    )
    assert result.returncode == 2 and "data.split_file" in result.stderr
    assert tree_snapshot(tmp_path) == before


def test_no_arguments_prints_the_commands_to_stderr_and_exits_2(tmp_path: Path) -> None:
    result = run_cli_in_process([], tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("usage: mile-ssl COMMAND")
    assert all(command in result.stderr for command in ("train", "eval", "predict", "export"))


@pytest.fixture(scope="module")
def trained(files: Path, module_tmp_path: Path) -> Path:
    """A finished one-step sigmoid run on the image folder (its secondary mAP is undefined:
    the folder has no label sets beyond each image's own class)."""
    args = _folder("images", "method=sigmoid", "data.batch_size=2")
    run = module_tmp_path / "trained"
    result = run_cli_in_process(
        [*(arg.replace("{files}", str(files)) for arg in args), f"hydra.run.dir={run}"],
        module_tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def _strict_json(text: str) -> dict[str, object]:
    """Parse as a strict JSON parser does: NaN and Infinity are not JSON."""

    def refuse(constant: str) -> object:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_undefined_metrics_are_null_in_metrics_json_and_eval_json(
    trained: Path, files: Path, tmp_path: Path
) -> None:
    saved = _strict_json((trained / "metrics.json").read_text())["metrics"]
    assert isinstance(saved, dict) and saved["secondary_map"] is None
    assert 0.0 <= saved["top1"] <= 1.0
    evaluated = run_cli_in_process(
        ["eval", f"checkpoint={trained / 'checkpoints' / 'last.ckpt'}", "--json"], tmp_path
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = _strict_json(evaluated.stdout)["metrics"]
    assert isinstance(metrics, dict) and metrics["secondary_map"] is None
    assert metrics["top1"] == pytest.approx(saved["top1"])


def test_a_failed_resume_leaves_the_run_folder_byte_for_byte(
    trained: Path, files: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = tree_snapshot(tmp_path)
    # The run is at its last step: refused once the checkpoint and the data are read,
    # after Hydra appended to the run's log and the lock recorded this process.
    args = _folder("images", "method=sigmoid", "data.batch_size=2", f"hydra.run.dir={run}")
    result = run_cli_in_process([arg.replace("{files}", str(files)) for arg in args], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "raise trainer.max_steps" in result.stderr
    assert tree_snapshot(tmp_path) == before


def test_a_sweep_keeps_the_jobs_that_trained_and_removes_the_one_that_failed_to_start(
    files: Path, tmp_path: Path
) -> None:
    args = _folder("images", "method=sigmoid", "data.batch_size=2,64", "hydra.sweep.dir=sweep")
    result = run_cli_in_process(
        ["train", "-m", *(arg.replace("{files}", str(files)) for arg in args[1:])], tmp_path
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "data.batch_size" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "sweep" / "0" / "metrics.json").is_file()
    assert not (tmp_path / "sweep" / "1").exists()


@pytest.mark.skipif(os.cpu_count() == 1, reason="two CPU processes")
def test_error_in_a_two_process_run_exits_every_rank(files: Path, working: Path) -> None:
    # Found once both processes run: each has written its log into the run folder.
    args = _folder("images", "trainer=ddp_cpu", "data.batch_size=3")
    before = tree_snapshot(working)
    result = run_cli([arg.replace("{files}", str(files)) for arg in args], working, timeout=240)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    message = result.stderr[result.stderr.index("error:") :]
    assert "cannot fill one step of 3 images x 2 processes" in message
    assert tree_snapshot(working) == before


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
