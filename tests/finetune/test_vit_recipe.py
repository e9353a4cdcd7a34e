"""The ViT recipe end to end: AdamW and drop-path through ``mile-ssl train``, both MILe
networks' groups, the one line a ViT given the ResNet recipe gets, resuming."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import timm
import torch

from mile_ssl.commands.train import initial_backbone, run_training
from mile_ssl.config import BackboneConfig, CheckpointConfig, MethodConfig, OptimConfig
from mile_ssl.finetune import SupervisedModule
from tests.conftest import TINY_NETWORK, one_step_trainer, run_cli_in_process

NOT_TIMM = [entry for entry in TINY_NETWORK if not entry.startswith("backbone")]
NOT_TIMM += ["backbone=resnet18"]

VIT = "timm:vit_tiny_patch16_224"
TINY_VIT = [
    "checkpoint=scratch",
    f"backbone.name={VIT}",
    "+backbone.kwargs.patch_size=4",
    "+backbone.kwargs.depth=2",
    "+backbone.kwargs.embed_dim=48",
    "trainer.progress_bar=false",
    "trainer.precision=32-true",
    "trainer.accelerator=cpu",
]
"""A two-block, 48-wide ViT with 4-px patches, from random weights (digit grids: 24 px)."""
SMALL_DIGITS = [
    "data.digits.num_train=64",
    "data.digits.num_val=16",
    "data.batch_size=8",
    "trainer.log_every_n_steps=1",
]


def test_tiny_vit_trains_with_adamw_through_the_command(tmp_path: Path) -> None:
    """Copy-variant MILe: teacher and student optimisers hold the same AdamW groups."""
    result = run_cli_in_process(
        [
            "train",
            *TINY_VIT,
            *SMALL_DIGITS,
            "optim=adamw",
            "optim.warmup_epochs=null",
            "optim.clip_grad_norm=1.0",
            "backbone.drop_path_rate=0.1",
            "mile.variant=copy",
            "mile.kt=1",
            "mile.ks=1",
            "trainer.max_steps=2",
            "hydra.run.dir=run",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the ResNet recipe" not in result.stderr + result.stdout
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["mile_ssl"]["completed_steps"] == 2
    assert state["mile_ssl"]["optim"]["name"] == "adamw"
    assert state["mile_ssl"]["metadata"]["backbone"]["kwargs"]["drop_path_rate"] == 0.1
    student, teacher = state["optimizer_states"]
    assert len(student["param_groups"]) == len(teacher["param_groups"]) > 4
    for ours, theirs in zip(student["param_groups"], teacher["param_groups"], strict=True):
        # lr is the schedule's value at each network's last step; the rest is the group.
        assert {**ours, "lr": None} == {**theirs, "lr": None}
    rates = sorted({group["initial_lr"] for group in student["param_groups"]})
    assert rates == pytest.approx([2.5e-4 * 0.65**k for k in (3, 2, 1, 0)])  # stem, 2 blocks, top
    assert {group["weight_decay"] for group in student["param_groups"]} == {0.0, 0.05}
    assert len(teacher["state"]) > 0  # the teacher was trained (copy variant)


def test_a_vit_given_the_resnet_recipe_says_which_to_use(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backbone = timm.create_model(VIT.partition(":")[2], num_classes=0, img_size=16, patch_size=8)
    batch = {"image": torch.randn(4, 3, 16, 16), "label": torch.arange(4) % 2}

    def fit(optim: OptimConfig) -> list[str]:
        caplog.clear()
        module = SupervisedModule(backbone, 192, 2, method=MethodConfig("softmax"), optim=optim)
        trainer = one_step_trainer(tmp_path)
        with caplog.at_level(logging.WARNING, logger="mile_ssl"):
            trainer.fit(module, torch.utils.data.DataLoader([batch], batch_size=None))
        return [record.getMessage() for record in caplog.records if "recipe" in record.getMessage()]

    lines = fit(OptimConfig())
    assert len(lines) == 1
    assert "VisionTransformer" in lines[0] and "optim=sgd" in lines[0]
    assert "optim=adamw" in lines[0] and "experiment=imagenet/dinov2_vits14_10pct" in lines[0]
    assert fit(OptimConfig(name="adamw")) == []


def test_a_resume_keeps_the_optimiser_its_state_was_saved_with(tiny_config, tmp_path: Path) -> None:
    first = run_training(tiny_config("method=softmax", "trainer.max_steps=2"), tmp_path / "a")
    changed = tiny_config(
        "method=softmax",
        "optim=adamw",
        "optim.warmup_epochs=null",
        "trainer.max_steps=4",
        f"trainer.resume_from={first.last_checkpoint}",
    )
    with pytest.raises(ValueError, match=r"optim\.name=sgd with one rate.*optim\.name=adamw"):
        run_training(changed, tmp_path / "b")
    assert not (tmp_path / "b" / "checkpoints").exists()


def test_drop_path_is_built_into_a_checkpoint_s_vit_with_its_weights(tmp_path: Path) -> None:
    kwargs = {"img_size": 16, "patch_size": 8, "depth": 2}
    source = timm.create_model(VIT.partition(":")[2], num_classes=0, **kwargs)
    path = tmp_path / "vit.pth"
    torch.save(source.state_dict(), path)
    loaded = initial_backbone(
        BackboneConfig(name=VIT, kwargs=kwargs, drop_path_rate=0.2),
        CheckpointConfig(path=str(path), adapter="torchvision"),
    )
    module = loaded.module
    assert loaded.spec.kwargs["drop_path_rate"] == 0.2
    rates = [getattr(block.drop_path2, "drop_prob", 0.0) for block in module.blocks]
    assert rates == pytest.approx([0.0, 0.2])  # timm's linear rule: none in the first block
    for name, tensor in source.state_dict().items():
        assert torch.equal(module.state_dict()[name], tensor), name


def test_drop_path_on_a_torchvision_resnet_is_one_message(tmp_path: Path) -> None:
    result = run_cli_in_process(
        ["train", *NOT_TIMM, "backbone.drop_path_rate=0.1", "hydra.run.dir=run"],
        tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "config key 'backbone.drop_path_rate' (0.1) needs a timm backbone" in result.stderr
    assert "torchvision:resnet18" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
