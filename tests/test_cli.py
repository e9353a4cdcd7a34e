"""The command line end to end.

The first train run and the command dispatch go through the installed console script; the
other cases run ``mile_ssl.cli.main`` in this process (:func:`run_cli_in_process`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MILE_SSL, run_cli, run_cli_in_process


def test_train_writes_a_complete_run_directory(tmp_path: Path, tiny_overrides: list[str]) -> None:
    result = run_cli(
        [
            "train",
            *tiny_overrides,
            "method=mile",
            "mile.kt=1",
            "mile.ks=1",
            "trainer.max_steps=2",
            "hydra.run.dir=run",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 2
    assert 0.0 <= metrics["metrics"]["top1"] <= 1.0
    assert (run / ".hydra" / "config.yaml").exists()
    resolved = (run / "resolved_config.yaml").read_text()
    assert "kt: 1" in resolved and "max_steps: 2" in resolved
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert (run / "logs" / "metrics.csv").exists()
    assert "ReaL-F1" in result.stdout


def test_sweep_runs_every_combination(tmp_path: Path, tiny_overrides: list[str]) -> None:
    result = run_cli_in_process(
        [
            "train",
            "-m",
            *tiny_overrides,
            "trainer.max_steps=1",
            "method=sigmoid",
            "data.fraction=0.5,1.0",
            "hydra.sweep.dir=sweep",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    runs = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    assert len(runs) == 2
    labelled = sorted(json.loads(path.read_text())["labelled_images"] for path in runs)
    # Half of the 256 grids (rounded per class, ten classes), then all of them.
    assert abs(labelled[0] - 128) <= 10 and labelled[1] == 256


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("mile.kt=0", "mile.kt"),
        ("mile.kappa=1", "mile.kappa"),
        ("data.fraction=2", "data.fraction"),
    ],
)
def test_invalid_config_fails_before_training_naming_the_key(
    override: str, message: str, tmp_path: Path, tiny_overrides: list[str]
) -> None:
    result = run_cli_in_process(["train", *tiny_overrides, override, "hydra.run.dir=run"], tmp_path)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_overrides_after_hydras_flags_compose(tmp_path: Path) -> None:
    # Steps typed next to a recipe add trainer.max_epochs=null after the flag.
    result = run_cli_in_process(
        ["train", "checkpoint=scratch", "trainer.max_steps=7", "--cfg", "job"], tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "max_steps: 7" in result.stdout and "max_epochs: null" in result.stdout
    assert not (tmp_path / "runs").exists()


def test_missing_checkpoint_is_refused_naming_the_file(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    overrides = [o for o in tiny_overrides if not o.startswith("checkpoint")]
    missing = tmp_path / "missing.pt"
    result = run_cli_in_process(
        ["train", *overrides, f"checkpoint.path={missing}", "hydra.run.dir=run"], tmp_path
    )
    assert result.returncode != 0
    assert str(missing) in result.stderr + result.stdout


def test_unknown_command_and_help(tmp_path: Path) -> None:
    unknown = run_cli(["frobnicate"], tmp_path)
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("mile-ssl: unknown command 'frobnicate'")
    help_text = run_cli(["--help"], tmp_path)
    assert help_text.returncode == 0 and "train" in help_text.stdout


@pytest.mark.parametrize(("args", "status"), [(["--help"], 0), ([], 2), (["frobnicate"], 2)])
def test_usage_is_answered_without_importing_torch(args: list[str], status: int) -> None:
    """The answer takes a tenth of a second, not the seconds torch and Lightning take."""
    probe = (
        "import sys\n"
        f"sys.argv = ['mile-ssl', *{args!r}]\n"
        "from mile_ssl.console import main\n"
        "try:\n    main()\n"
        "except SystemExit as stop:\n"
        "    print('status', stop.code, 'torch' in sys.modules, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stderr.splitlines()[-1] == f"status {status} False"
    assert "usage: mile-ssl COMMAND" in result.stdout + result.stderr


def test_output_piped_into_a_reader_that_stops_early_ends_quietly(tmp_path: Path) -> None:
    """``mile-ssl --help | head -1``: no traceback when the reader has gone."""
    script = subprocess.Popen(
        [MILE_SSL, "--help"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert script.stdout is not None and script.stderr is not None
    script.stdout.close()  # the reader is gone before the usage is written
    stderr = script.stderr.read().decode()
    assert script.wait(timeout=300) == 141  # 128 + SIGPIPE, as `cat FILE | head` reports
    assert stderr == ""


def test_inspect_describes_a_checkpoint(tmp_path: Path) -> None:
    import torch
    import torchvision

    state = {
        f"module.encoder_q.{key}": value
        for key, value in torchvision.models.resnet18(weights=None).state_dict().items()
        if not key.startswith("fc.")
    }
    state["module.queue"] = torch.zeros(8, 4)
    torch.save({"state_dict": state, "arch": "resnet18"}, tmp_path / "moco.pth.tar")
    text = run_cli_in_process(["inspect", "moco.pth.tar"], tmp_path)
    assert text.returncode == 0, text.stderr
    assert "mocov2" in text.stdout and "torchvision:resnet18" in text.stdout
    as_json = run_cli_in_process(["inspect", "moco.pth.tar", "--json"], tmp_path)
    description = json.loads(as_json.stdout)
    assert description["format"] == "mocov2"
    assert description["backbone"]["name"] == "torchvision:resnet18"


def test_eval_predict_export_on_a_trained_run(
    tmp_path: Path, tiny_overrides: list[str], image_folder: Path
) -> None:
    data = [
        "data=folder",
        f"data.root={image_folder}",
        "data.image_size=32",
        "data.batch_size=8",
        "data.num_workers=0",
    ]
    trained = run_cli_in_process(
        [
            "train",
            *tiny_overrides,
            *data,
            "method=sigmoid",
            "trainer.max_steps=2",
            "hydra.run.dir=run",
        ],
        tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    checkpoint = f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}"

    evaluated = run_cli_in_process(["eval", checkpoint, *data, "--json"], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    metrics = json.loads(evaluated.stdout)["metrics"]
    assert metrics["num_samples"] == 6
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert metrics["top1"] == pytest.approx(saved["top1"])

    predicted = run_cli_in_process(
        ["predict", str(image_folder / "val"), checkpoint, "--json"], tmp_path
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    results = json.loads(predicted.stdout)
    assert len(results) == 6 and all(result["predicted"] for result in results)

    exported = run_cli_in_process(["export", checkpoint, "--out", "exported"], tmp_path)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (tmp_path / "exported" / "model.json").exists()
    assert (tmp_path / "exported" / "model.safetensors").exists()


def test_train_from_a_lightning_checkpoint_name_with_equals_signs(
    tmp_path: Path, image_folder: Path
) -> None:
    from tests.layouts import lightly_benchmark

    checkpoint = lightly_benchmark(tmp_path)  # epoch=99-step=1.ckpt, as Lightning names it
    result = run_cli_in_process(
        [
            "train",
            f"checkpoint.path={checkpoint}",
            "data=folder",
            f"data.root={image_folder}",
            "data.image_size=32",
            "data.num_workers=0",
            "data.batch_size=8",
            "trainer.max_steps=1",
            "trainer.accelerator=cpu",
            "trainer.precision=32-true",
            "trainer.progress_bar=false",
            "hydra.run.dir=run",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["checkpoint"] == str(checkpoint) and metrics["adapter"] == "lightly"
