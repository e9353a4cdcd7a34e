"""Reading a run folder that a real two-step training wrote: checkpoint, typed config, network."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mile_ssl.commands.train import run_training
from mile_ssl.config import TrainConfig, compose_train_config
from mile_ssl.networks.preprocessing import Preprocessing
from mile_ssl.runs.finished_run import read_finished_run
from tests.conftest import TINY_OVERRIDES, folder_run_overrides, write_image_folder


@pytest.fixture(scope="module")
def run_dir(module_tmp_path: Path) -> Path:
    """Two MILe steps of the tiny ResNet on a two-class JPEG folder, 32-pixel crops."""
    root = module_tmp_path / "images"
    write_image_folder(root / "train", classes=2, per_class=4, size=36)
    write_image_folder(root / "val", classes=2, per_class=1, size=36)
    config = compose_train_config(
        [
            *TINY_OVERRIDES,
            *folder_run_overrides(root),
        ]
    )
    return run_training(config, module_tmp_path / "run").output_dir


def _copy_checkpoint(run_dir: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "checkpoints" / "last.ckpt", target)
    return target


def test_run_folder_and_checkpoint_file_read_the_same_run(run_dir: Path) -> None:
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    for path in (run_dir, run_dir / "checkpoints", checkpoint):
        run = read_finished_run(path)
        assert run.checkpoint_path == checkpoint, path
        assert run.folder == run_dir
    assert run.config_path == run_dir / "resolved_config.yaml"
    assert isinstance(run.config, TrainConfig)
    assert run.config.data.image_size == 32 and run.config.trainer.max_steps == 2
    assert run.config.method.name == "mile" and run.config.mile.kt == 1
    assert run.image_size == 32
    assert run.num_classes == 2
    assert run.class_names == ["n00000000", "n00000001"]
    assert run.preprocessing == Preprocessing()
    assert run.state["completed_steps"] == 2

    module = run.build_module()
    assert module.completed_steps == 2 and module.num_classes == 2
    stored = run.checkpoint["state_dict"]
    for name, tensor in module.state_dict().items():
        torch.testing.assert_close(tensor, stored[name], msg=name)


def test_the_hydra_config_is_read_when_training_wrote_none(run_dir: Path, tmp_path: Path) -> None:
    checkpoint = _copy_checkpoint(run_dir, tmp_path / "run" / "checkpoints" / "last.ckpt")
    config = OmegaConf.load(run_dir / "resolved_config.yaml")
    config.data.image_size = 48
    hydra_config = tmp_path / "run" / ".hydra" / "config.yaml"
    hydra_config.parent.mkdir()
    OmegaConf.save(config, hydra_config)
    run = read_finished_run(checkpoint)
    assert run.config_path == hydra_config
    assert run.image_size == 48

    # The config training wrote comes first; digit grids have no image size.
    config.data.name = "digits"
    OmegaConf.save(config, tmp_path / "run" / "resolved_config.yaml")
    run = read_finished_run(tmp_path / "run")
    assert run.config_path == tmp_path / "run" / "resolved_config.yaml"
    assert run.config.data.name == "digits" and run.image_size is None


def test_a_checkpoint_without_its_config_names_what_is_missing(
    run_dir: Path, tmp_path: Path
) -> None:
    run = read_finished_run(_copy_checkpoint(run_dir, tmp_path / "alone.ckpt"))
    assert run.config_path is None and run.image_size is None
    assert run.num_classes == 2  # everything the checkpoint holds is still there
    with pytest.raises(FileNotFoundError) as error:
        _ = run.config
    message = str(error.value)
    assert "alone.ckpt" in message and str(tmp_path) in message
    assert "resolved_config.yaml" in message and ".hydra/config.yaml" in message


def test_an_unreadable_config_is_named(
    run_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _copy_checkpoint(run_dir, tmp_path / "run" / "checkpoints" / "last.ckpt")
    config_file = tmp_path / "run" / "resolved_config.yaml"
    config_file.write_text("data: {image_size: [\n")
    with pytest.raises(ValueError, match=re.escape(str(config_file))):
        _ = read_finished_run(tmp_path / "run").config
    config_file.write_text("data:\n  colour: red\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(config_file))}.*colour"):
        _ = read_finished_run(tmp_path / "run").config
    # The image size is a default the caller can override: a warning, not a failure.
    with caplog.at_level(logging.WARNING, logger="mile_ssl.runs.finished_run"):
        assert read_finished_run(tmp_path / "run").image_size is None
    assert str(config_file) in caplog.text


def test_wrong_files_are_named(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.ckpt"):
        read_finished_run(tmp_path / "absent.ckpt")
    plain = tmp_path / "plain.pth"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(ValueError, match=r"plain\.pth is not a checkpoint of a mile_ssl"):
        read_finished_run(plain)
    truncated = tmp_path / "cut.ckpt"
    data = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=r"cut\.ckpt"):
        read_finished_run(truncated)
    with pytest.raises(IsADirectoryError, match=re.escape(str(run_dir))):
        read_finished_run(run_dir, exact_file=True)
    for name in ("step1.ckpt", "step2.ckpt"):
        _copy_checkpoint(run_dir, tmp_path / "several" / name)
    with pytest.raises(ValueError, match=r"several.*step1\.ckpt.*no last\.ckpt"):
        read_finished_run(tmp_path / "several")


def test_input_settings_come_from_the_run_unless_given(
    run_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = read_finished_run(run_dir)
    assert run.data_config() == run.config.data  # no overrides: the run's own data
    root = tmp_path / "elsewhere"
    named = [f"data.root={root}", "data=folder"]
    with caplog.at_level(logging.WARNING, logger="mile_ssl.runs.finished_run"):
        data = run.data_config(named)
        assert (data.root, data.image_size, data.backend) == (str(root), 32, "torchvision")
        assert run.input_setting("image_size", 32, option="--image-size") == 32
    assert "differs" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="mile_ssl.runs.finished_run"):
        assert run.data_config([*named, "data.image_size=224"]).image_size == 224
        assert run.input_setting("image_size", 48, option="--image-size") == 48
    said = [record.getMessage() for record in caplog.records if "differs" in record.getMessage()]
    assert len(said) == 2
    assert said[0].startswith("data.image_size=224 differs") and "data.image_size=32" in said[0]
    assert said[1].startswith("--image-size=48 differs")

    # A checkpoint without its config: the shipped defaults, nothing to differ from.
    alone = read_finished_run(_copy_checkpoint(run_dir, tmp_path / "alone.ckpt"))
    assert alone.data_config(named).image_size == 224
    assert alone.input_setting("image_size", 48) == 48
