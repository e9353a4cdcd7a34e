"""Every command in the README's code blocks runs, on small stand-ins for the user's files.

The commands are read from README.md, so the README cannot drift from the code: a new
command runs here as soon as it is written there. The stand-ins have the names the
README uses (``ssl.pt``, ``byol.pkl``, ``r50_1x_sk1.pth``, ``/data/imagenet``...) and the
upstream layouts. ``mile-ssl train`` gets small-run overrides appended, which win as any
later override does: two steps without warm-up, small images and batches, one unlabeled image per
labelled one, the CPU, and ``data.allow_missing=true`` (a stand-in ImageNet cannot hold
the files of the 1 % list). Commands that need hardware this machine lacks (8 GPUs,
several nodes, SLURM) are composed with ``--cfg job`` instead of run:
:data:`COMPOSED_ONLY` says which. ``mile-ssl`` commands run in this process
(:func:`run_cli_in_process`), except those that start processes of their own
(:data:`OWN_PROCESSES`), which run the installed script, as do Python scripts.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import (
    MILE_SSL,
    run_cli_in_process,
    write_image_folder,
    write_imagenet_tree,
    write_jpeg,
)
from tests.layouts import R50, byol, moco, simclrv2, solo_learn_run

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUNNERS = ("mile-ssl", ".venv/bin/mile-ssl", "python", ".venv/bin/python", "torchrun", "srun")
NOT_COMMANDS = ("make", "source")
"""First words of README lines that are set-up, not mile_ssl commands (CI runs make)."""

SMALL_TRAIN = [
    "trainer.max_steps=2",
    "optim.warmup_steps=0",
    "data.batch_size=2",
    "data.allow_missing=true",
    "data.unlabeled_ratio=1",
    "data.num_workers=0",
    "data.image_size=32",
    "data.digits.num_train=256",
    "data.digits.num_val=64",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.progress_bar=false",
]
SMALL_SCRIPTS = {
    "examples/lightly_byol_then_mile.py": [
        "--pretrain-steps=2",
        "--finetune-steps=2",
        "--num-train=128",
        "--batch-size=32",
        "--precision=32-true",
    ],
}
"""Options appended to each script the README runs, for its smallest useful size."""
SCRIPT_OUTPUT = {"examples/lightly_byol_then_mile.py": "MILe from lightly BYOL: top1"}
"""What each script the README runs prints when it has done its work."""
COMPOSED_ONLY = ("torchrun", "srun", "trainer.devices=8")
"""Markers of commands that need GPUs or nodes: composed, not run."""
OWN_PROCESSES = ("trainer=ddp_cpu",)
"""Markers of commands that start processes (DDP ranks): run through the installed script."""


def readme_commands() -> list[list[str]]:
    """The commands of README.md's shell blocks, continuation lines joined, comments cut."""
    commands = []
    for language, body in re.findall(r"```(\w*)\n(.*?)```", README.read_text(), re.S):
        if language not in ("", "bash"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] in RUNNERS:
                commands.append(words)
            elif words and words[0] not in NOT_COMMANDS and not line.startswith("#"):
                assert "->" in words, f"README line neither command nor diagram: {line}"
    return commands


def _name(words: list[str]) -> str:
    return " ".join(words)[:90]


COMMANDS = readme_commands()


def test_readme_is_a_short_guide() -> None:
    """Measurements and protocol details belong in benchmarks/ and docs/, not here."""
    assert len(README.read_bytes()) < 15_000


def test_readme_holds_the_commands_of_every_use() -> None:
    subcommands = {words[words.index("mile-ssl") + 1] for words in COMMANDS if "mile-ssl" in words}
    subcommands |= {
        words[words.index(".venv/bin/mile-ssl") + 1]
        for words in COMMANDS
        if ".venv/bin/mile-ssl" in words
    }
    assert {"train", "from-solo", "eval", "predict", "export", "checkpoints"} <= subcommands


@pytest.fixture(scope="module")
def sandbox(module_tmp_path: Path) -> Path:
    """A working directory with every file the README's commands name."""
    data = module_tmp_path / "data"
    write_imagenet_tree(data / "imagenet")
    write_image_folder(data / "pets" / "train", per_class=8)
    write_image_folder(data / "pets" / "val", per_class=2)
    for index in range(4):
        write_jpeg(data / "unlabeled_pet_photos" / "garden" / f"{index}.jpg", 100 + index)
    work = module_tmp_path / "work"
    work.mkdir()
    moco(2)(work).rename(work / "ssl.pt")
    byol(work).rename(work / "byol.pkl")
    simclrv2(1, selective_kernel=True)(work)  # r50_1x_sk1.pth
    args = {"method": "byol", "backbone": {"name": "resnet50"}, "data": {"dataset": "imagenet"}}
    solo_learn_run(work, R50, args, feature_dim=2048, run_id="RUN_ID", epoch=99)
    shutil.copytree(
        ROOT / "tests" / "fixtures" / "solo_learn" / "linear" / "imagenet",
        work / "scripts" / "linear" / "imagenet",
    )
    cache = module_tmp_path / "cache"  # $MILE_SSL_CACHE: the public checkpoints named
    cache.mkdir()
    moco(2)(cache).rename(cache / "moco_v2_800ep_pretrain.pth.tar")
    # A stand-in, not the published file: accepted as a user accepts a file by hand.
    accepted = run_cli_in_process(
        ["checkpoints", "--download", "mocov2_800ep", "--force"], work, MILE_SSL_CACHE=str(cache)
    )
    assert accepted.returncode == 0, accepted.stderr
    write_jpeg(work / "photo.jpg", 1)
    write_jpeg(work / "more_photos" / "a.jpg", 2)
    (work / "examples").symlink_to(ROOT / "examples")
    trained = run_cli_in_process(
        [
            "train",
            "checkpoint=scratch",
            "method=sigmoid",
            "data=imagenet",
            f"data.root={data / 'imagenet'}",
            *SMALL_TRAIN,
            "hydra.run.dir=runs/x",
        ],
        work,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    return work


def _localised(words: list[str], data: Path) -> list[str]:
    """The command with the README's data folders pointing at the stand-ins."""
    return [word.replace("/data/", f"{data}/") for word in words]


def _runnable(words: list[str], index: int) -> list[str]:
    """The command line to run for a README command (see the module notes)."""
    if words[0] == "torchrun":
        words = ["mile-ssl", *words[words.index("mile_ssl") + 1 :]]
    if words[0] == "srun":
        words = words[1:]
    if words[0].endswith("mile-ssl"):
        words = [MILE_SSL, *words[1:]]
        if words[1] == "train":
            if any(marker in " ".join(words) for marker in COMPOSED_ONLY):
                return [*words, "--cfg", "job"]
            devices = [] if "trainer=ddp_cpu" in words else ["trainer.devices=1"]
            return [*words, *SMALL_TRAIN, *devices, f"hydra.run.dir=runs/readme_{index}"]
        return words
    return [sys.executable, *words[1:], *SMALL_SCRIPTS[words[1]]]


@pytest.mark.parametrize("index", range(len(COMMANDS)), ids=[_name(w) for w in COMMANDS])
def test_readme_command_runs(index: int, sandbox: Path) -> None:
    words = _runnable(_localised(COMMANDS[index], sandbox.parent / "data"), index)
    added = {"HF_HUB_OFFLINE": "1", "MILE_SSL_CACHE": str(sandbox.parent / "cache")}
    added |= {"NODE_RANK": "0", "MASTER_ADDR": "127.0.0.1", "SLURM_JOB_ID": "7"}
    words = [os.path.expandvars(word) if "$" in word else word for word in words]
    if words[0] == MILE_SSL and not any(marker in words for marker in OWN_PROCESSES):
        result = run_cli_in_process(words[1:], sandbox, **added)
    else:
        result = subprocess.run(
            words,
            cwd=sandbox,
            env={**os.environ, **added},
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert result.returncode == 0, f"{shlex.join(words)}\n{result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr
    if words[0] == sys.executable:
        assert SCRIPT_OUTPUT[words[1]] in result.stdout


def _config_keys(node: type, prefix: str) -> set[str]:
    keys = set()
    for item in dataclasses.fields(node):
        default = item.default_factory() if callable(item.default_factory) else item.default
        if dataclasses.is_dataclass(default):
            keys |= _config_keys(type(default), f"{prefix}{item.name}.")
        else:
            keys.add(f"{prefix}{item.name}")
    return keys


def _reference_table_keys() -> set[str]:
    keys = set()
    for line in README.read_text().splitlines():
        first_cell = line.split("|")[1] if line.startswith("|") else ""
        names = re.findall(r"`([\w.]+)`", first_cell)
        if not names or not names[0].startswith(("mile.", "data.")):
            continue
        parent = names[0].rsplit(".", 1)[0]
        keys |= {name if "." in name else f"{parent}.{name}" for name in names}
    return keys


def test_reference_table_holds_every_mile_and_data_key() -> None:
    from mile_ssl.config import DataConfig, MileConfig

    documented = _reference_table_keys()
    existing = _config_keys(MileConfig, "mile.") | _config_keys(DataConfig, "data.")
    assert documented - existing == set(), "README names keys that do not exist"
    assert existing - documented == set(), "README's reference table misses keys"
