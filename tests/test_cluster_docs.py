"""docs/cluster.md: its sbatch script is valid bash and its commands compose as written."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from tests.conftest import run_cli_in_process

DOC = Path(__file__).resolve().parents[1] / "docs" / "cluster.md"


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def _command(block: str, first_word: str) -> list[str]:
    joined = block.replace("\\\n", " ")
    line = next(line for line in joined.splitlines() if line.strip().startswith(first_word))
    return shlex.split(line.strip())


def test_the_sbatch_script_is_valid_bash_with_signal_and_requeue(tmp_path: Path) -> None:
    script = next(block for block in _bash_blocks() if block.startswith("#!/bin/bash"))
    assert "#SBATCH --signal=USR1@" in script and "#SBATCH --requeue" in script
    path = tmp_path / "job.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0


def test_the_srun_command_trains_in_the_jobs_own_folder(tmp_path: Path) -> None:
    script = next(block for block in _bash_blocks() if block.startswith("#!/bin/bash"))
    words = _command(script, "srun")
    assert words[1].endswith("mile-ssl") and words[2] == "train"
    result = run_cli_in_process(
        [*words[2:], "--cfg", "hydra", "--resolve"],
        tmp_path,
        SLURM_JOB_ID="4242",
        SLURM_NTASKS="16",
        SLURM_JOB_NAME="mile_r50_10pct",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "dir: runs/slurm-4242\n" in result.stdout


def test_the_torchrun_command_composes(tmp_path: Path) -> None:
    torchrun = next(block for block in _bash_blocks() if block.startswith("torchrun"))
    words = _command(torchrun, "torchrun")
    train = words[words.index("mile_ssl") + 1 :]
    result = run_cli_in_process([*train, "--cfg", "job"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "num_nodes: 2" in result.stdout and "strategy: ddp" in result.stdout
