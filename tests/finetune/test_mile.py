"""MILe: both variants, the teacher refresh, pseudo-labels, the student loss, resuming."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from mile_ssl.commands.train import run_training
from mile_ssl.config import MethodConfig, MileConfig, TrainConfig
from mile_ssl.finetune import MILeModule, copy_weights_
from mile_ssl.losses import multi_label_bce, per_image_bce
from mile_ssl.networks.backbones import BackboneSpec, build_backbone
from mile_ssl.pseudo_labels import threshold_pseudo_labels
from mile_ssl.schedule import unlabeled_steps


def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([tensor.detach().float().flatten() for tensor in module.state_dict().values()])


class StepRecorder(L.Callback):
    """Records, after every training batch, which networks' weights changed."""

    def __init__(self) -> None:
        self.changes: list[tuple[bool, bool]] = []
        self.teacher_grads_during_student: list[bool] = []
        self._previous: tuple[torch.Tensor, torch.Tensor] | None = None

    def _state(self, module: MILeModule) -> tuple[torch.Tensor, torch.Tensor]:
        assert module.teacher is not None
        return _flat(module.student), _flat(module.teacher)

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        self._previous = self._state(module)
        self._teacher_grads = [
            None if p.grad is None else p.grad.clone() for p in module.teacher.parameters()
        ]

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        assert self._previous is not None
        student, teacher = self._state(module)
        self.changes.append(
            (
                not torch.equal(student, self._previous[0]),
                not torch.equal(teacher, self._previous[1]),
            )
        )
        grads = [None if p.grad is None else p.grad.clone() for p in module.teacher.parameters()]
        unchanged = all(
            (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
            for a, b in zip(self._teacher_grads, grads, strict=True)
        )
        self.teacher_grads_during_student.append(unchanged)


def test_copy_variant_alternates_teacher_and_student_steps(tiny_config, tmp_path: Path) -> None:
    config = tiny_config(
        "method=mile", "mile.variant=copy", "mile.kt=3", "mile.ks=2", "trainer.max_steps=12"
    )
    recorder = StepRecorder()
    result = run_training(config, tmp_path, callbacks=[recorder])
    assert torch.load(result.last_checkpoint)["mile_ssl"]["completed_steps"] == 12
    # (student changed, teacher changed) per step: kt=3 teacher steps, then ks=2 student steps.
    teacher_step, student_step = (False, True), (True, False)
    expected = ([teacher_step] * 3 + [student_step] * 2) * 2 + [teacher_step] * 2
    assert recorder.changes == expected
    # The teacher takes no gradient while the student learns from it.
    for step, (student_changed, _) in enumerate(expected):
        if student_changed:
            assert recorder.teacher_grads_during_student[step], step


def test_snapshot_variant_trains_one_network_and_refreshes_snapshot(
    tiny_config, tmp_path: Path
) -> None:
    config = tiny_config(
        "method=mile", "mile.variant=snapshot", "mile.kt=3", "mile.ks=2", "trainer.max_steps=10"
    )
    recorder = StepRecorder()
    run_training(config, tmp_path, callbacks=[recorder])
    ground_truth, first_imitation, imitation = (True, False), (True, True), (True, False)
    expected = ([ground_truth] * 3 + [first_imitation, imitation]) * 2
    assert recorder.changes == expected


def test_copy_weights_is_in_place_and_includes_batchnorm_buffers() -> None:
    torch.manual_seed(0)
    source = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    target = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    source.train()
    source(torch.randn(8, 3, 6, 6))  # moves the running statistics away from their init
    pointers = [tensor.data_ptr() for tensor in target.state_dict().values()]
    copy_weights_(target, source)
    for (name, expected), actual in zip(
        source.state_dict().items(), target.state_dict().values(), strict=True
    ):
        assert torch.equal(expected, actual), name
    assert int(target[1].num_batches_tracked) == 1
    assert [tensor.data_ptr() for tensor in target.state_dict().values()] == pointers


def test_pseudo_labels_are_strictly_above_rho() -> None:
    probabilities = torch.tensor([[0.05, 0.1, 0.2, 0.9], [0.5, 0.11, 0.09, 0.0001]])
    logits = torch.logit(probabilities.double())
    pseudo = threshold_pseudo_labels(logits, rho=0.1)
    assert pseudo.tolist() == [[False, False, True, True], [True, True, False, False]]


def test_student_phase_uses_teacher_labels_for_the_same_batch(tiny_config) -> None:
    backbone, dim = build_backbone(BackboneSpec("tiny_resnet", {"widths": [8]}))
    module = MILeModule(backbone, dim, num_classes=10, mile=MileConfig(variant="copy"))
    images = torch.randn(4, 3, 24, 24)
    assert module.teacher is not None
    module.teacher.eval()
    with torch.no_grad():
        expected = torch.sigmoid(module.teacher(images)) > module.mile.rho
    module.teacher.train()
    assert torch.equal(module.pseudo_label(images), expected)
    assert module.teacher.training  # mode restored
    assert not module.pseudo_label(images).is_inference()


@pytest.mark.parametrize("variant", ["copy", "snapshot"])
def test_resume_mid_cycle_gives_the_same_final_weights(
    variant: str, tiny_config: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    # 256 grids / batch 32 = 8 steps per pass; cycles of 3 + 2 steps; the step-6
    # checkpoint is mid-cycle (student phase) and mid-pass.
    overrides = (
        "method=mile",
        f"mile.variant={variant}",
        "mile.kt=3",
        "mile.ks=2",
        "trainer.max_steps=14",
        "trainer.checkpoint_every_n_steps=6",
    )
    uninterrupted = run_training(tiny_config(*overrides), tmp_path / "full")
    resume_point = tmp_path / "full" / "checkpoints" / "step6.ckpt"
    assert resume_point.exists()
    resumed = run_training(
        tiny_config(*overrides, f"trainer.resume_from={resume_point}"), tmp_path / "resumed"
    )
    full_state = torch.load(uninterrupted.last_checkpoint, weights_only=True)
    resumed_state = torch.load(resumed.last_checkpoint, weights_only=True)
    assert full_state["mile_ssl"]["completed_steps"] == 14
    assert resumed_state["mile_ssl"]["completed_steps"] == 14
    for key, value in full_state["state_dict"].items():
        assert torch.equal(value, resumed_state["state_dict"][key]), key
    assert uninterrupted.metrics == resumed.metrics


def test_resume_with_different_schedule_is_refused(tiny_config, tmp_path: Path) -> None:
    first = run_training(
        tiny_config("method=mile", "mile.kt=2", "mile.ks=2", "trainer.max_steps=2"), tmp_path / "a"
    )
    config = tiny_config(
        "method=mile",
        "mile.kt=5",
        "mile.ks=2",
        "trainer.max_steps=4",
        f"trainer.resume_from={first.last_checkpoint}",
    )
    with pytest.raises(ValueError, match="mile"):
        run_training(config, tmp_path / "b")


def test_training_batches_need_only_image_and_label(tmp_path: Path) -> None:
    """Batches from a user's own loader (no label sets) train and log pseudo-label sizes."""
    from mile_ssl.config import MethodConfig

    backbone, dim = build_backbone(BackboneSpec("tiny_resnet", {"widths": [8, 16]}))
    module = MILeModule(
        backbone, dim, 4, method=MethodConfig("mile"), mile=MileConfig(kt=1, ks=1, rho=0.3)
    )
    generator = torch.Generator().manual_seed(0)
    batches = [
        {"image": torch.randn(8, 3, 16, 16, generator=generator), "label": torch.arange(8) % 4}
        for _ in range(4)
    ]
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    assert module.completed_steps == 4
    assert [entry["cycle"] for entry in module.pseudo_label_history] == [0, 1]
    assert all("pseudo_precision" not in entry for entry in module.pseudo_label_history)


def _masked_student_loss(
    logits: torch.Tensor,
    pseudo_labels: torch.Tensor,
    labelled: torch.Tensor | None,
    mile: MileConfig,
) -> torch.Tensor:
    """The student loss as rows were once selected: boolean indexing, host decisions."""
    if labelled is not None and mile.empty_pseudo_labels == "ignore":
        confident = pseudo_labels.any(dim=1)
        if confident.any():
            logits, pseudo_labels = logits[confident], pseudo_labels[confident]
            labelled = labelled[confident]
    if labelled is None or mile.unlabeled_weight is None:
        return multi_label_bce(logits, pseudo_labels)
    per_image = per_image_bce(logits, pseudo_labels)
    loss = per_image.new_zeros(())
    for rows, weight in ((labelled, 1.0), (~labelled, mile.unlabeled_weight)):
        if rows.any():
            loss = loss + weight * per_image[rows].mean()
    return loss


@pytest.mark.parametrize("empty_rule", ["ignore", "keep"])
@pytest.mark.parametrize("unlabeled_weight", [None, 0.5])
@pytest.mark.parametrize(
    "pseudo_rows",
    [
        "some empty",  # images with an empty set are dropped under "ignore"
        "all empty",  # ... unless every set is empty: then all are kept
        "unlabeled all empty",  # a stream left without images adds nothing
    ],
)
def test_student_loss_weights_rows_exactly_as_selecting_them(
    empty_rule: str, unlabeled_weight: float | None, pseudo_rows: str
) -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 4, generator=generator)
    pseudo_labels = torch.rand(6, 4, generator=generator) > 0.6
    labelled = torch.tensor([True, True, False, False, False, False])
    if pseudo_rows == "some empty":
        pseudo_labels[[0, 3]] = False
        pseudo_labels[[1, 2, 4, 5], 0] = True
    elif pseudo_rows == "all empty":
        pseudo_labels[:] = False
    else:
        pseudo_labels[:2, 1] = True
        pseudo_labels[2:] = False
    mile = MileConfig(
        semi_supervised=True, unlabeled_weight=unlabeled_weight, empty_pseudo_labels=empty_rule
    )
    backbone, dim = build_backbone(BackboneSpec("tiny_resnet", {"widths": [8]}))
    module = MILeModule(backbone, dim, num_classes=4, mile=mile)
    for stream in (labelled, None):
        torch.testing.assert_close(
            module.student_loss(logits, pseudo_labels, stream),
            _masked_student_loss(logits, pseudo_labels, stream, mile),
        )


def test_only_semi_supervised_student_steps_read_unlabeled_images() -> None:
    mile = MethodConfig("mile")
    assert unlabeled_steps(mile, MileConfig(kt=2, ks=3)) is None
    uses_unlabeled = unlabeled_steps(mile, MileConfig(kt=2, ks=3, semi_supervised=True))
    assert uses_unlabeled is not None
    assert [uses_unlabeled(step) for step in range(7)] == [False, False, True, True, True] + [
        False,
        False,
    ]
