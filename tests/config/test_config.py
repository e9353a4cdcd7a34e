from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra.errors import ConfigCompositionException

from mile_ssl.config import MILE_VARIANTS, TrainConfig, compose_train_config
from mile_ssl.config.overrides import MOVED_KEYS

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
GROUPS = ("method", "data", "backbone", "checkpoint", "optim", "trainer", "experiment")
# Options of other groups that a group option needs to compose into a valid config.
COMPANIONS = {
    ("data", "folder"): ["data.root=/nonexistent"],
    ("data", "imagenet"): ["data.root=/nonexistent"],
}


def _options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(
    ("group", "option"), [(group, option) for group in GROUPS for option in _options(group)]
)
def test_every_shipped_yaml_composes(group: str, option: str) -> None:
    config = compose_train_config(
        [f"{group}={option}", "checkpoint=scratch", *COMPANIONS.get((group, option), [])]
        if group != "checkpoint"
        else [f"{group}={option}"]
    )
    if group == "method":
        assert config.method.name == option.removesuffix("_semi")
        assert config.mile.semi_supervised == option.endswith("_semi")


def test_every_group_has_options() -> None:
    for group in GROUPS:
        assert _options(group), group


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("mile.kt=0", "mile.kt"),
        ("mile.ks=0", "mile.ks"),
        ("mile.rho=1.0", "mile.rho"),
        ("mile.rho=0", "mile.rho"),
        ("mile.variant=other", "mile.variant"),
        ("mile.unlabeled_weight=0", "mile.unlabeled_weight"),
        ("mile.unlabeled_weight=1", "mile.unlabeled_weight"),
        ("data.fraction=0", "data.fraction"),
        ("data.fraction=1.5", "data.fraction"),
        ("method.name=other", "method.name"),
        ("trainer.max_steps=0", "trainer.max_steps"),
        ("optim.lr=-1", "optim.lr"),
    ],
)
def test_out_of_range_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        compose_train_config(["checkpoint=scratch", override])


def test_unknown_key_fails_at_composition_naming_it() -> None:
    with pytest.raises(ConfigCompositionException, match="mile.kappa"):
        compose_train_config(["checkpoint=scratch", "mile.kappa=3"])


def test_wrong_type_fails_naming_the_key() -> None:
    with pytest.raises(ConfigCompositionException, match="kt"):
        compose_train_config(["checkpoint=scratch", "mile.kt=many"])


@pytest.mark.parametrize("variant", MILE_VARIANTS)
def test_every_mile_variant_composes(variant: str) -> None:
    config = compose_train_config(["checkpoint=scratch", f"mile.variant={variant}"])
    assert config.mile.variant == variant
    with pytest.raises(ValueError, match="mile.variant"):
        compose_train_config(["checkpoint=scratch", "mile.variant=clone"])


def test_checkpoint_path_is_required_unless_scratch(tmp_path: Path) -> None:
    from mile_ssl.commands.train import run_training

    config = compose_train_config([])  # checkpoint=file without a path
    assert config.checkpoint.path is None
    with pytest.raises(ValueError, match="checkpoint.path.*checkpoint=scratch"):
        run_training(config, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_wandb_logger_without_wandb_installed_says_how_to_install(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    try:
        import wandb  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("wandb is installed")
    from mile_ssl.runs.loggers import build_logger

    config = compose_train_config(["checkpoint=scratch", "trainer.logger=wandb"])
    with pytest.raises(ValueError, match=r"mile-ssl\[wandb\]"):
        build_logger(config.trainer, tmp_path)


def test_semi_supervised_digit_experiment_extends_the_digit_one() -> None:
    digits = compose_train_config(["experiment=digits", "checkpoint=scratch"])
    semi = compose_train_config(
        [
            "experiment=digits_semi",
            "method=mile_semi",
            "mile.unlabeled_weight=1",
            "checkpoint=scratch",
        ]
    )
    assert (semi.data.fraction, semi.mile.rho, semi.optim.lr) == (0.1, 0.1, 0.05)
    assert semi.data.strong_student_view and semi.mile.unlabeled_weight == 1
    assert semi.trainer.max_steps == 600 and semi.trainer.val_every_n_steps is None
    # Everything it does not set comes from experiment=digits.
    assert semi.backbone == digits.backbone and semi.data.name == digits.data.name
    assert (semi.mile.kt, semi.mile.ks, semi.optim.warmup_steps) == (100, 100, 50)


def test_paths_with_equals_signs_are_one_value() -> None:
    path = "trained_models/byol/offline-ab12/byol-offline-ab12-ep=399.ckpt"
    config = compose_train_config([f"checkpoint.path={path}", "data.fraction=0.5"])
    assert config.checkpoint.path == path and config.data.fraction == 0.5
    quoted = compose_train_config([f"checkpoint.path='{path}'"])
    assert quoted.checkpoint.path == path


def test_steps_on_the_command_line_win_over_a_presets_epochs() -> None:
    recipe = ["experiment=imagenet/mocov2_1pct", "data.root=/data/imagenet"]
    assert compose_train_config(recipe).trainer.max_epochs == 60
    config = compose_train_config([*recipe, "trainer.max_steps=2", "optim.warmup_steps=1"])
    assert config.trainer.max_steps == 2 and config.trainer.max_epochs is None
    assert config.optim.warmup_steps == 1 and config.optim.warmup_epochs is None
    both = compose_train_config([*recipe, "trainer.max_steps=2", "trainer.max_epochs=3"])
    assert both.trainer.max_epochs == 3


@pytest.mark.parametrize(("old", "new"), sorted(MOVED_KEYS.items()))
def test_a_moved_key_names_its_new_name(old: str, new: str) -> None:
    with pytest.raises(ValueError, match=f"'{old}' moved to '{new}'"):
        compose_train_config(["checkpoint=scratch", f"{old}=1"])
    with pytest.raises(ValueError, match=f"'{old}' moved to '{new}'"):
        compose_train_config(["checkpoint=scratch", f"++{old}=1"])
    group, key = new.split(".")
    value = getattr(getattr(compose_train_config(["checkpoint=scratch", f"{new}=1"]), group), key)
    assert value == 1


def test_a_moved_key_on_the_command_line_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mile_ssl.cli import main

    monkeypatch.delenv("MILE_SSL_DEBUG", raising=False)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # main sets it; restored after the test
    with pytest.raises(SystemExit) as stop:
        main(["train", "checkpoint=scratch", "mile.strong_student_view=true"])
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert errors == [
        "mile-ssl train: error: config key 'mile.strong_student_view' moved to "
        "'data.strong_student_view'; set that instead"
    ]


# --------------------------------------------------------------------------- defaults once


def _group_prefix(path: Path) -> str:
    """Where a preset's keys land: the root for the primary and ``_global_`` files."""
    relative = path.relative_to(CONFIG_DIR)
    if len(relative.parts) == 1 or path.read_text().startswith("# @package _global_"):
        return ""
    return f"{relative.parts[0]}."


def _default(key: str) -> Any:
    node: Any = TrainConfig()
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _repeated_defaults(text: str, prefix: str, option: str) -> list[str]:
    """``key: value`` lines of a preset that set a dataclass default without saying why.

    A comment on the line says why (a recipe pinning a published value, a preset undoing
    what the file it extends sets); a group option's ``name`` equal to the option is how
    the option reads, not a repeat.
    """
    lines = text.splitlines()
    root = yaml.compose(text)
    found: list[str] = []

    def visit(node: yaml.MappingNode, prefix: str) -> None:
        for key_node, value_node in node.value:
            if node is root and key_node.value in ("defaults", "hydra"):
                continue  # Hydra's own keys, not TrainConfig's
            key = f"{prefix}{key_node.value}"
            default = _default(key)
            if dataclasses.is_dataclass(default):
                assert isinstance(value_node, yaml.MappingNode), key
                visit(value_node, f"{key}.")
                continue
            value = yaml.safe_load(yaml.serialize(value_node))
            line = lines[key_node.start_mark.line]
            own_name = key.count(".") == 1 and key.endswith(".name") and value == option
            if value == default and "#" not in line and not own_name:
                found.append(line.strip())

    if root is not None:  # a preset of comments only changes nothing
        assert isinstance(root, yaml.MappingNode)
        visit(root, prefix)
    return found


PRESETS = sorted(CONFIG_DIR.rglob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda path: str(path.relative_to(CONFIG_DIR)))
def test_no_preset_repeats_a_default(path: Path) -> None:
    repeated = _repeated_defaults(path.read_text(), _group_prefix(path), path.stem)
    assert repeated == [], "defaults live in mile_ssl.config only: drop these lines or say why"


def test_the_default_check_finds_a_repeated_default() -> None:
    folder = CONFIG_DIR / "data" / "folder.yaml"
    text = folder.read_text() + "image_size: 224\nnum_workers: null  # on purpose\n"
    assert _repeated_defaults(text, "data.", "folder") == ["image_size: 224"]
    nested = "# @package _global_\ndata:\n  digits:\n    center_prob: 0.6\n  name: digits\n"
    assert _repeated_defaults(nested, "", "x") == ["center_prob: 0.6", "name: digits"]
