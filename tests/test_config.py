from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from mile_ssl.config import MILE_VARIANTS, compose_train_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
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
    from mile_ssl.train import run_training

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
    from mile_ssl.loggers import build_logger

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
    assert semi.mile.strong_student_view and semi.mile.unlabeled_weight == 1
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
