from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_lightly_byol_then_mile_runs_at_tiny_scale(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "lightly_byol_then_mile.py"),
            "--pretrain-steps",
            "2",
            "--finetune-steps",
            "4",
            "--num-train",
            "128",
            "--batch-size",
            "32",
            "--precision",
            "32-true",
        ],
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MILe from lightly BYOL: top1" in result.stdout
