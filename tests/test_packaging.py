"""The package: its layout, its dependencies and extras, and a build without warnings."""

from __future__ import annotations

import ast
import logging
import re
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import get_args

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from mile_ssl.data.digits import DigitGridConfig, make_digit_grids
from mile_ssl.extras import Extra, MissingExtraError
from mile_ssl.runs.report import plot_pseudo_label_history
from tests.conftest import TINY_OVERRIDES, run_cli_in_process

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

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
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--verbose",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        text=True,
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
    # setuptools says what it dislikes in the configuration as *Warning lines.
    assert not re.findall(r"\w+Warning\b.*", build.stdout + build.stderr)


def _names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(requirement).name) for requirement in requirements}


def test_core_leaves_the_demo_the_loggers_and_dali_to_extras() -> None:
    core = _names(PROJECT["dependencies"])
    extras = PROJECT["optional-dependencies"]
    optional = {"lightly", "scikit-learn", "matplotlib", "tensorboard", "wandb"}
    assert not core & optional
    assert not any(name.startswith("nvidia-dali") for name in core)
    assert _names(extras["demo"]) == {"lightly", "scikit-learn", "matplotlib"}
    assert _names(extras["tensorboard"]) == {"tensorboard"}
    assert _names(extras["wandb"]) == {"wandb"}
    # Every extra a message can name exists.
    assert set(get_args(Extra)) <= set(extras)


def _imported_modules(path: Path) -> tuple[set[str], set[str]]:
    """Top-level modules ``path`` imports, and those it imports through an extra."""
    imported: set[str] = set()
    through_extra: set[str] = set()

    def top_level(node: ast.AST) -> set[str]:
        if isinstance(node, ast.Import):
            return {alias.name.split(".")[0] for alias in node.names}
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            return {node.module.split(".")[0]}
        return set()

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        imported |= top_level(node)
        if isinstance(node, ast.With) and any(
            isinstance(item.context_expr, ast.Call)
            and getattr(item.context_expr.func, "id", None) == "extra_imports"
            for item in node.items
        ):
            for statement in node.body:
                for child in ast.walk(statement):
                    through_extra |= top_level(child)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "import_extra":
            module = node.args[0]
            assert isinstance(module, ast.Constant), ast.dump(node)
            through_extra.add(str(module.value).split(".")[0])
    return imported, through_extra


def test_every_module_the_core_imports_is_a_declared_dependency() -> None:
    core = _names(PROJECT["dependencies"])
    distributions = packages_distributions()
    undeclared = []
    for path in sorted(
        [*REPO.joinpath("mile_ssl").rglob("*.py"), *REPO.joinpath("adapters").rglob("*.py")]
    ):
        imported, through_extra = _imported_modules(path)
        for module in sorted(imported - through_extra - set(sys.stdlib_module_names)):
            if module in ("mile_ssl", "__future__"):
                continue
            providers = {canonicalize_name(name) for name in distributions.get(module, [])}
            if not providers & core:
                undeclared.append(f"{path.relative_to(REPO)}: {module} ({sorted(providers)})")
    assert undeclared == []


@pytest.mark.parametrize("logger", ["tensorboard", "wandb"])
def test_a_missing_logger_extra_is_one_message(
    logger: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, logger, None)  # import raises, as without the extra
    args = ["train", *TINY_OVERRIDES, f"trainer.logger={logger}", "hydra.run.dir=run"]
    result = run_cli_in_process(args, tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"trainer.logger={logger} needs the '{logger}' extra" in result.stderr
    assert f"pip install 'mile-ssl[{logger}]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("error:") == 1
    assert not (tmp_path / "run").exists()


def test_the_demo_without_its_extra_is_one_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its submodules too: a module found in sys.modules is used without its package.
    for name in ["lightly", *(name for name in sys.modules if name.startswith("lightly."))]:
        monkeypatch.setitem(sys.modules, name, None)
    # Imported afresh, as in a new process, so that they meet the missing package.
    for module in ("mile_ssl.commands.demo", "mile_ssl.commands.pretrain"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    result = run_cli_in_process(["demo", "--quick", "--out", "out"], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "needs the 'demo' extra" in result.stderr
    assert "pip install 'mile-ssl[demo]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_digit_data_without_scikit_learn_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from mile_ssl.data import digits

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    digits._load_source_digits.cache_clear()
    with pytest.raises(MissingExtraError, match=r"data=digits needs the 'demo' extra") as error:
        make_digit_grids(DigitGridConfig(num_train=8, num_val=8))
    assert "pip install 'mile-ssl[demo]'" in str(error.value)
    assert isinstance(error.value, ImportError) and isinstance(error.value, ValueError)


def test_training_without_matplotlib_skips_only_its_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    statistics = ("pseudo_labels_per_image", "pseudo_empty_fraction", "pseudo_precision")
    history = [{"step": 2, "pseudo_recall": 0.5, **dict.fromkeys(statistics, 0.25)}]
    plot = tmp_path / "pseudo_labels.png"
    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING):
        patch.setitem(sys.modules, "matplotlib", None)
        assert plot_pseudo_label_history(plot, history) is None
    assert not plot.exists()
    assert "pseudo_labels.png not written" in caplog.text
    assert "pip install 'mile-ssl[demo]'" in caplog.text
    assert plot_pseudo_label_history(plot, history) == plot
    assert plot.stat().st_size > 0
