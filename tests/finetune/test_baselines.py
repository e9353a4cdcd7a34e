"""The fixed-teacher baselines: distill and self_train."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mile_ssl.commands.evaluate import evaluate_checkpoint
from mile_ssl.commands.train import run_training
from mile_ssl.finetune import FixedTeacherModule
from mile_ssl.runs.finished_run import module_from_checkpoint


def test_distillation_loss_is_cross_entropy_to_tempered_teacher() -> None:
    from mile_ssl.losses import distillation_loss

    student = torch.tensor([[1.0, 0.0, -1.0]])
    teacher = torch.tensor([[0.0, 2.0, 0.0]])
    expected = -(torch.softmax(teacher / 2, 1) * torch.log_softmax(student / 2, 1)).sum()
    torch.testing.assert_close(distillation_loss(student, teacher, 2.0), expected)


def test_self_training_keeps_ground_truth_and_takes_teacher_argmax_elsewhere() -> None:
    from mile_ssl.pseudo_labels import self_training_targets

    teacher = torch.tensor([[0.0, 3.0], [2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, -1, -1])
    labelled = torch.tensor([True, False, False])
    assert self_training_targets(teacher, labels, labelled).tolist() == [0, 0, 1]


def test_distill_and_self_train_learn_from_a_frozen_earlier_run(
    tiny_config, tmp_path: Path
) -> None:
    teacher_run = run_training(
        tiny_config("method=softmax", "data.fraction=0.25", "trainer.max_steps=2"),
        tmp_path / "teacher",
    )
    teacher_state = torch.load(teacher_run.last_checkpoint, weights_only=True)["state_dict"]
    for method in ("distill", "self_train"):
        config = tiny_config(
            f"method={method}",
            "data.fraction=0.25",
            "data.batch_size=8",
            "data.unlabeled_ratio=2",
            "trainer.max_steps=3",
            "distill.supervised_weight=0.5",
            f"distill.teacher_checkpoint={teacher_run.last_checkpoint}",
        )
        result = run_training(config, tmp_path / method)
        saved = torch.load(result.last_checkpoint, weights_only=True)
        assert saved["mile_ssl"]["completed_steps"] == 3
        # Only the student is checkpointed; the teacher file is untouched.
        assert not any(key.startswith(("teacher.", "_fixed")) for key in saved["state_dict"])
        assert result.metrics["coverage"] == 1.0  # a softmax student predicts one label
        # The run is rebuilt as what it is, without its teacher, and evaluates on its own.
        rebuilt = module_from_checkpoint(saved)
        assert isinstance(rebuilt, FixedTeacherModule) and rebuilt.method.name == method
        assert rebuilt.networks() == [rebuilt.student] and rebuilt.completed_steps == 3
        evaluated = evaluate_checkpoint(result.last_checkpoint, config.data)
        assert evaluated["top1"] == pytest.approx(result.metrics["top1"])
    after = torch.load(teacher_run.last_checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(teacher_state[key], after[key]) for key in teacher_state)
    with pytest.raises(ValueError, match="distill.teacher_checkpoint"):
        run_training(tiny_config("method=distill", "data.fraction=0.25"), tmp_path / "none")
