"""The package layout: ``adapters/`` and ``configs/`` install as ``mile_ssl.*``."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

IMPORT_CHECK = """
import mile_ssl.adapters, mile_ssl.configs
from hydra import compose, initialize_config_module
from mile_ssl.config import register_configs
register_configs()
with initialize_config_module("mile_ssl.configs", version_base="1.3"):
    config = compose("config", overrides=["checkpoint=scratch"])
print(sorted(mile_ssl.adapters.available_adapters()), config.method.name)
"""


def test_adapters_and_configs_import_from_outside_the_repo(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "'mile_ssl'" in result.stdout and "'torchvision'" in result.stdout
    assert result.stdout.strip().endswith("mile")


def test_wheel_contains_adapters_configs_and_type_marker(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("mile_ssl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped_yaml = {
        f"mile_ssl/configs/{path.relative_to(REPO / 'configs').as_posix()}"
        for path in (REPO / "configs").rglob("*.yaml")
    }
    assert shipped_yaml <= names
    assert "mile_ssl/adapters/registry.py" in names
    assert "mile_ssl/py.typed" in names
    assert not any(name.startswith("adapters/") for name in names)
