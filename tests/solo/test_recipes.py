"""solo-learn's linear / fine-tune recipes, run as solo-learn's users run them.

The recipes under ``tests/fixtures/solo_learn`` have the structure of the published ones
(``pretrained_feature_extractor: None``, ``devices: [0]``, ``precision: 16``,
``data.format: dali``, the ``wandb`` and ``override hydra/...`` defaults); each trains two
steps from a checkpoint in a solo-learn run folder, with the checkpoint and data paths
given on the command line as ``main_linear.py`` takes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from mile_ssl.config import compose_train_config
from mile_ssl.solo.command_line import expand_solo_command
from mile_ssl.solo.recipes import read_solo_config, translate_solo_config
from tests.conftest import run_cli_in_process, write_image_folder
from tests.layouts import R18, R50, solo_learn_run, vit_shapes

FIXTURES = Path(__file__).parents[1] / "fixtures" / "solo_learn"
RECIPES = sorted(path.relative_to(FIXTURES) for path in FIXTURES.glob("*/*/*.yaml"))
IMAGE_SIZE = 32

# What each published recipe's pretrained run used: (backbone, method, features, timm spec).
RUNS: dict[str, tuple[str, str, int, str]] = {
    "linear/imagenet/byol.yaml": ("resnet50", "byol", 2048, "torchvision:resnet50"),
    "linear/imagenet/barlow.yaml": ("resnet50", "barlow_twins", 2048, "torchvision:resnet50"),
    "linear/imagenet-100/mocov2plus.yaml": ("resnet18", "mocov2plus", 512, "torchvision:resnet18"),
    "linear/imagenet-100/barlow.yaml": ("resnet18", "barlow_twins", 512, "torchvision:resnet18"),
    "linear/imagenet-100/mocov3_vit.yaml": (
        "vit_small",
        "mocov3",
        384,
        "timm:vit_small_patch16_224",
    ),
    "finetune/imagenet/mae.yaml": ("vit_base", "mae", 768, "timm:vit_base_patch16_224"),
    "finetune/imagenet-100/mae.yaml": ("vit_base", "mae", 768, "timm:vit_base_patch16_224"),
}


def test_every_fixture_has_a_pretrained_run() -> None:
    assert sorted(str(path) for path in RECIPES) == sorted(RUNS)


@pytest.fixture(scope="module")
def images(module_tmp_path: Path) -> Path:
    write_image_folder(module_tmp_path / "images" / "train", per_class=8)
    write_image_folder(module_tmp_path / "images" / "val", per_class=3)
    return module_tmp_path / "images"


def _pretrained_run(folder: Path, recipe: str) -> Path:
    """A checkpoint in solo-learn's run layout for the backbone ``recipe`` fine-tunes."""
    backbone, method, width, _ = RUNS[recipe]
    shapes = {
        "resnet18": R18,
        "resnet50": R50,
        "vit_small": vit_shapes("vit_small_patch16_224", IMAGE_SIZE),
        "vit_base": vit_shapes("vit_base_patch16_224", IMAGE_SIZE),
    }[backbone]
    args = {
        "method": method,
        "backbone": {"name": backbone, "kwargs": {}},
        "data": {"dataset": "imagenet100"},
    }
    return solo_learn_run(folder, shapes, args, feature_dim=width)


def _solo_command(recipe: str, checkpoint: Path, images: Path) -> list[str]:
    """``main_linear.py``'s command line, with CPU settings for this machine.

    The fine-tuning recipes warm up for solo-learn's default 10 epochs; here for half an
    epoch (one of the two steps), so that warm-up ends before the run does.
    """
    path = FIXTURES / recipe
    warmup = ["++scheduler.warmup_epochs=0.5"] if recipe.startswith("finetune/") else []
    return [
        "--config-path",
        str(path.parent),
        "--config-name",
        path.name,
        f'pretrained_feature_extractor="{checkpoint}"',
        f"data.train_path={images / 'train'}",
        f"data.val_path={images / 'val'}",
        "accelerator=cpu",
        "devices=1",
        "precision=32",
        "optimizer.batch_size=8",
        "data.num_workers=0",
        *warmup,
    ]


@pytest.mark.parametrize("recipe", sorted(RUNS))
def test_published_recipe_trains_two_steps(recipe: str, images: Path, tmp_path: Path) -> None:
    checkpoint = _pretrained_run(tmp_path, recipe)
    result = run_cli_in_process(
        [
            "train",
            *_solo_command(recipe, checkpoint, images),
            "trainer.max_steps=2",
            f"data.image_size={IMAGE_SIZE}",
            "trainer.progress_bar=false",
            "hydra.run.dir=run",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # The command line's trainer.max_steps=2 wins over the recipe's max_epochs: 100.
    assert metrics["steps"] == 2
    assert metrics["adapter"] == "solo_learn"
    assert metrics["backbone"] == RUNS[recipe][3]
    assert metrics["labelled_images"] == 16
    resolved = yaml.safe_load((tmp_path / "run" / "resolved_config.yaml").read_text())
    solo = read_solo_config(FIXTURES / recipe)
    # solo-learn's rule: lr x batch x devices x nodes / 256, with the overridden batch.
    assert resolved["optim"]["lr"] == pytest.approx(float(solo["optimizer"]["lr"]) * 8 / 256)
    assert resolved["trainer"]["max_epochs"] is None
    log = result.stdout + result.stderr
    # solo-learn's DALI loading becomes the DALI backend (on the CPU here).
    expected_backend = "dali" if solo["data"]["format"] == "dali" else "torchvision"
    assert resolved["data"]["backend"] == expected_backend
    assert "data.format: dali is not available" not in log
    # The fine-tuning recipes' AdamW, layer decay and drop-path reach the run.
    optimizer, layer_decay = solo["optimizer"]["name"], solo["optimizer"].get("layer_decay")
    assert resolved["optim"]["name"] == optimizer
    assert resolved["optim"]["layer_decay"] == layer_decay
    drop_path = solo["backbone"].get("kwargs", {}).get("drop_path_rate")
    assert resolved["backbone"]["drop_path_rate"] == drop_path
    assert ("applies none of them" in log) == (layer_decay is not None)


def test_recipe_without_checkpoint_names_the_key(images: Path, tmp_path: Path) -> None:
    recipe = FIXTURES / "linear" / "imagenet" / "byol.yaml"
    with pytest.raises(ValueError, match="pretrained_feature_extractor=PATH"):
        expand_solo_command(recipe, [f"data.train_path={images / 'train'}"])


def test_command_line_wins_over_derived_values(tmp_path: Path, images: Path) -> None:
    recipe = "linear/imagenet-100/mocov2plus.yaml"
    checkpoint = _pretrained_run(tmp_path, recipe)
    args = _solo_command(recipe, checkpoint, images)[4:]
    command = expand_solo_command(
        FIXTURES / recipe,
        [*args, "max_epochs=3", "devices=[0,1]", "++seed=7", "trainer.max_steps=5", "-m"],
    )
    config = compose_train_config([arg for arg in command.arguments if arg != "-m"])
    assert command.arguments[-1] == "-m"  # Hydra flags pass through
    assert config.trainer.max_steps == 5 and config.trainer.max_epochs is None
    # Two GPU indices on the CPU (the command line's accelerator=cpu) are two processes.
    assert config.trainer.devices == 2 and config.seed == 7
    # solo-learn keys change the recipe before translation: the rate scales with them.
    assert config.optim.lr == pytest.approx(3.0 * 8 * 2 / 256)
    user = compose_train_config([*command.arguments[:-1], "optim.lr=0.5"])
    assert user.optim.lr == 0.5


def test_gpu_indices_become_a_device_count_on_the_cpu(images: Path, tmp_path: Path) -> None:
    # Published recipes keep devices: [0]; Lightning's CPU accelerator takes a count only.
    recipe = "linear/imagenet-100/mocov2plus.yaml"
    checkpoint = _pretrained_run(tmp_path, recipe)
    path = FIXTURES / recipe
    result = run_cli_in_process(
        [
            "train",
            "--config-path",
            str(path.parent),
            "--config-name",
            path.stem,
            f'pretrained_feature_extractor="{checkpoint}"',
            f"data.train_path={images / 'train'}",
            f"data.val_path={images / 'val'}",
            "optimizer.batch_size=8",
            "data.num_workers=0",
            "trainer.accelerator=cpu",
            "trainer.precision=32-true",
            "trainer.max_steps=2",
            f"data.image_size={IMAGE_SIZE}",
            "trainer.progress_bar=false",
            "hydra.run.dir=run",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "devices: [0] are GPU indices; with accelerator=cpu that is trainer.devices=1" in (
        result.stdout + result.stderr
    )
    resolved = yaml.safe_load((tmp_path / "run" / "resolved_config.yaml").read_text())
    assert resolved["trainer"]["accelerator"] == "cpu" and resolved["trainer"]["devices"] == 1
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 2


def test_device_list_is_kept_for_gpus_and_counted_for_the_cpu() -> None:
    recipe = FIXTURES / "finetune" / "imagenet" / "mae.yaml"  # devices: [0, ..., 7]
    solo: dict[str, Any] = read_solo_config(recipe)
    on_gpus = compose_train_config(translate_solo_config(solo, recipe).overrides)
    assert on_gpus.trainer.devices == list(range(8))
    on_cpu = compose_train_config(translate_solo_config(solo, recipe, "cpu").overrides)
    assert on_cpu.trainer.devices == 8
    # The learning rate is scaled by the same eight devices either way.
    assert on_cpu.optim.lr == on_gpus.optim.lr == pytest.approx(5e-4 * 64 * 8 / 256)
    solo["accelerator"] = "cpu"  # the recipe's own accelerator counts too
    assert compose_train_config(translate_solo_config(solo, recipe).overrides).trainer.devices == 8


def test_recipe_backbone_must_match_the_run(tmp_path: Path, images: Path) -> None:
    checkpoint = _pretrained_run(tmp_path, "linear/imagenet-100/mocov2plus.yaml")
    recipe = FIXTURES / "linear" / "imagenet" / "byol.yaml"  # resnet50
    args = _solo_command("linear/imagenet/byol.yaml", checkpoint, images)[4:]
    with pytest.raises(ValueError, match="pass backbone.name=resnet18"):
        expand_solo_command(recipe, args)
    command = expand_solo_command(recipe, [*args, "backbone.name=resnet18"])
    assert any(arg.startswith("checkpoint.path=") for arg in command.arguments)


def test_translation_maps_keys_and_reports_the_rest() -> None:
    recipe = FIXTURES / "finetune" / "imagenet" / "mae.yaml"
    solo: dict[str, Any] = read_solo_config(recipe)
    assert solo["optimizer"]["lr"] == 5e-4  # a number, as Hydra reads it
    solo["pretrained_feature_extractor"] = "mae.ckpt"
    translation = translate_solo_config(solo, recipe)
    config = compose_train_config(translation.overrides)
    assert config.checkpoint.path == "mae.ckpt"
    assert config.backbone.name == "timm:vit_base_patch16_224"
    assert config.data.name == "folder" and config.data.batch_size == 64
    assert config.optim.lr == pytest.approx(5e-4 * 64 * 8 / 256)
    assert config.trainer.max_epochs == 100 and config.trainer.precision == "16-mixed"
    assert config.trainer.devices == [0, 1, 2, 3, 4, 5, 6, 7]
    unsupported = dict(translation.unsupported)
    for key in (
        "defaults: wandb",
        "name",
        "checkpoint.dir",
        "auto_resume.enabled",
        "label_smoothing",
        "mixup",
        "cutmix",
    ):
        assert key in unsupported, key
    # AdamW and layer decay are mapped; warm-up from solo-learn's 0.0 is mile_ssl's too.
    for key in ("optimizer.name", "optimizer.layer_decay", "scheduler.warmup_start_lr"):
        assert key not in unsupported, key


def test_from_solo_takes_the_same_overrides(tmp_path: Path, images: Path) -> None:
    recipe = "linear/imagenet-100/mocov2plus.yaml"
    checkpoint = _pretrained_run(tmp_path, recipe)
    out = tmp_path / "translated.yaml"
    args = _solo_command(recipe, checkpoint, images)[4:]
    result = run_cli_in_process(
        ["from-solo", str(FIXTURES / recipe), *args, "trainer.max_steps=2", "--out", str(out)],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "optimizer.lr -> optim.lr=0.09375" in result.stdout
    written = yaml.safe_load(out.read_text())
    assert written["checkpoint"]["path"] == str(checkpoint)
    assert written["trainer"]["max_steps"] == 2 and written["trainer"]["max_epochs"] is None

    without = run_cli_in_process(["from-solo", str(FIXTURES / recipe), "--out", str(out)], tmp_path)
    assert without.returncode == 0, without.stderr
    assert "checkpoint.path is unset" in out.read_text()


def _translate(recipe: str, **changes: Any) -> tuple[Any, Any]:
    """A fixture with dotted ``changes`` (``optimizer__name="lars"``), translated and composed.

    A change to ``None`` removes the key.
    """
    path = FIXTURES / recipe
    solo: dict[str, Any] = read_solo_config(path)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = solo
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    translation = translate_solo_config(solo, path, "cpu")
    return translation, compose_train_config(translation.overrides)


@pytest.mark.parametrize("recipe", ["finetune/imagenet/mae.yaml", "finetune/imagenet-100/mae.yaml"])
def test_mae_finetune_recipe_is_the_adamw_recipe(recipe: str) -> None:
    translation, config = _translate(recipe)
    solo = read_solo_config(FIXTURES / recipe)
    assert config.optim.name == "adamw"
    assert config.optim.layer_decay == solo["optimizer"]["layer_decay"] == 0.75
    assert config.optim.weight_decay == solo["optimizer"]["weight_decay"] == 0.05
    assert config.optim.betas == [0.9, 0.999]  # solo-learn's default AdamW kwargs
    assert config.backbone.drop_path_rate == solo["backbone"]["kwargs"]["drop_path_rate"]
    assert config.backbone.kwargs == {}
    # AdamW's rate scales with the batch as SGD's does: 5e-4 x 64 x 8 devices / 256.
    assert config.optim.lr == pytest.approx(5e-4 * 64 * 8 / 256)
    # warmup_cosine without warmup_epochs: solo-learn's 10, said to be its default.
    assert config.optim.warmup_epochs == 10
    assert ("scheduler.warmup_epochs", "optim.warmup_epochs=10 (solo-learn's default)") in (
        translation.mapping
    )
    assert config.optim.clip_grad_norm is None
    (note,) = [warning for warning in translation.warnings if "layer_decay" in warning]
    assert "timm's numbering" in note and "optim.layer_decay=null" in note
    unsupported = dict(translation.unsupported)
    assert "no label smoothing" in unsupported["label_smoothing"]
    assert "no mixup" in unsupported["mixup"] and "no cutmix" in unsupported["cutmix"]
    assert not [key for key in unsupported if key.startswith(("optimizer", "backbone"))]


def test_optimizer_kwargs_and_gradient_clipping_map() -> None:
    recipe = "finetune/imagenet-100/mae.yaml"
    translation, config = _translate(
        recipe,
        optimizer__kwargs={"betas": [0.9, 0.95], "eps": 1e-6},
        gradient_clip_val=1.0,
    )
    assert config.optim.betas == [0.9, 0.95]
    assert config.optim.clip_grad_norm == 1.0
    assert dict(translation.unsupported)["optimizer.kwargs.eps"].startswith("no such option")
    # Lightning's clipping by value is not mile_ssl's norm: reported, not applied.
    translation, config = _translate(recipe, gradient_clip_val=1.0, gradient_clip_algorithm="value")
    assert config.optim.clip_grad_norm is None
    assert "global norm only" in dict(translation.unsupported)["gradient_clip_algorithm"]
    # solo-learn's default layer_decay, 0, is one rate.
    translation, config = _translate(recipe, optimizer__layer_decay=0.0)
    assert config.optim.layer_decay is None
    assert not [warning for warning in translation.warnings if "layer_decay" in warning]
    # Without layer decay solo-learn's AdamW decays norms and biases too; mile_ssl's never.
    assert any("decays norms and biases here" in warning for warning in translation.warnings)


def test_sgd_lars_and_adam_train_as_mile_ssl_optimizers() -> None:
    recipe = "linear/imagenet-100/mocov2plus.yaml"
    translation, config = _translate(recipe)
    # torch's SGD, which solo-learn uses, has plain momentum unless the recipe says.
    assert config.optim.name == "sgd" and config.optim.nesterov is False
    assert config.optim.momentum == 0.9
    translation, config = _translate(
        recipe,
        optimizer__name="lars",
        optimizer__kwargs={"momentum": 0.8, "eta": 0.02},
        optimizer__exclude_bias_n_norm_wd=True,
    )
    assert config.optim.name == "sgd" and config.optim.momentum == 0.8
    unsupported = dict(translation.unsupported)
    assert "no per-layer trust ratio" in unsupported["optimizer.name"]
    assert "optimizer.kwargs.eta" in unsupported
    assert "decays every weight" in unsupported["optimizer.exclude_bias_n_norm_wd"]
    translation, config = _translate(recipe, optimizer__name="adam")
    assert config.optim.name == "adamw"
    assert "decoupled" in dict(translation.unsupported)["optimizer.name"]
    translation, config = _translate(
        recipe, optimizer__name="adamw", optimizer__exclude_bias_n_norm_wd=True
    )
    assert config.optim.name == "adamw" and not translation.warnings
    assert "optimizer.exclude_bias_n_norm_wd" not in dict(translation.unsupported)


def test_unknown_optimizer_is_refused_by_name(images: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipes" / "rmsprop.yaml"
    recipe.parent.mkdir()
    solo = read_solo_config(FIXTURES / "finetune" / "imagenet-100" / "mae.yaml")
    solo["optimizer"]["name"] = "rmsprop"
    recipe.write_text(yaml.safe_dump(solo))
    result = run_cli_in_process(
        [
            "train",
            "--config-path",
            str(recipe.parent),
            "--config-name",
            recipe.name,
            "pretrained_feature_extractor=mae.ckpt",
            f"data.train_path={images / 'train'}",
            f"data.val_path={images / 'val'}",
            "hydra.run.dir=run",
        ],
        tmp_path,
    )
    assert result.returncode == 2
    assert "optimizer.name='rmsprop' is not one of solo-learn's optimizers" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()
