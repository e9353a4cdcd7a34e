"""Semi-supervised MILe: the teacher labels unlabeled images for the student."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from mile_ssl.commands.train import run_training
from mile_ssl.config import MileConfig, TrainConfig
from mile_ssl.data.datamodule import MILeDataModule, UnlabeledStream
from mile_ssl.data.sampling import SemiSupervisedBatchSampler, StepBatchSampler
from mile_ssl.finetune import MILeModule
from mile_ssl.losses import multi_label_bce
from mile_ssl.networks.backbones import BackboneSpec, build_backbone
from mile_ssl.networks.preprocessing import Preprocessing
from mile_ssl.pseudo_labels import threshold_pseudo_labels

SEMI = (
    "method=mile",
    "mile.variant=copy",
    "mile.semi_supervised=true",
    "data.unlabeled_ratio=3",
    "data.fraction=0.25",
    "data.batch_size=8",
    "mile.kt=2",
    "mile.ks=2",
    "mile.rho=0.1",
)


def test_student_batches_mix_labelled_and_unlabeled_images(tiny_config) -> None:
    config: TrainConfig = tiny_config(*SEMI)
    datamodule = MILeDataModule(
        config.data, Preprocessing(), UnlabeledStream(3, lambda step: step % 2 == 1)
    )
    labelled_pool = set(datamodule.train_indices)
    unlabeled_pool = set(datamodule.unlabeled_indices)
    # A quarter of the 256 grids, rounded per class (ten classes), and all the others.
    assert abs(len(labelled_pool) - 64) <= 10
    assert labelled_pool | unlabeled_pool == set(range(256))
    assert not labelled_pool & unlabeled_pool
    for step, batch in zip(range(4), datamodule.train_dataloader(), strict=False):
        flags = batch["labelled"]
        assert int(flags.sum()) == 8
        assert len(flags) == (8 + 24 if step % 2 else 8)
        assert set(batch["index"][flags].tolist()) <= labelled_pool
        assert not set(batch["index"][~flags].tolist()) & labelled_pool
        assert (batch["label"][~flags] == -1).all()  # no label leaks from unlabeled images


def test_unlabeled_shards_are_disjoint_across_ranks() -> None:
    unlabeled = list(range(100, 196))
    ranks = [
        SemiSupervisedBatchSampler(
            StepBatchSampler(list(range(32)), 4, seed=0, rank=rank, world_size=2),
            StepBatchSampler(unlabeled, 12, seed=1, rank=rank, world_size=2),
            lambda step: True,
        )
        for rank in range(2)
    ]
    first = [next(iter(sampler)) for sampler in ranks]
    shards = [{index for index, labelled in batch if not labelled} for batch in first]
    assert len(shards[0]) == len(shards[1]) == 12 and not shards[0] & shards[1]


class TeacherWatcher(L.Callback):
    """Records what the teacher sees and which weights label each student batch."""

    def __init__(self) -> None:
        self.teacher_training_batches: list[int] = []
        self.labelling_weights: list[torch.Tensor] = []
        self.weights_after_step: list[torch.Tensor] = []

    def on_train_start(self, trainer: L.Trainer, module: Any) -> None:
        def hook(network: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if network.training:
                self.teacher_training_batches.append(inputs[0].shape[0])
            else:
                self.labelling_weights.append(_weights(network))

        module.teacher.register_forward_pre_hook(hook)

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        self.weights_after_step.append(_weights(module.teacher))


def _weights(network: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in network.parameters()])


def test_teacher_trains_on_labels_only_and_labels_with_its_current_weights(
    tiny_config, tmp_path: Path
) -> None:
    watcher = TeacherWatcher()
    run_training(tiny_config(*SEMI, "trainer.max_steps=8"), tmp_path, callbacks=[watcher])
    # 4 teacher steps (2 per cycle), each on the 8 labelled images only.
    assert watcher.teacher_training_batches == [8, 8, 8, 8]
    # Student steps 2, 3, 6, 7 are labelled by the teacher as it stood after the
    # cycle's last teacher step (1 and 5).
    assert len(watcher.labelling_weights) == 4
    for labelled_at, teacher_step in zip(watcher.labelling_weights, [1, 1, 5, 5], strict=True):
        assert torch.equal(labelled_at, watcher.weights_after_step[teacher_step])
    assert not torch.equal(watcher.weights_after_step[1], watcher.weights_after_step[5])


def test_semi_supervised_resume_continues_both_streams(
    tiny_config: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    overrides = (*SEMI, "trainer.max_steps=11", "trainer.checkpoint_every_n_steps=5")
    full = run_training(tiny_config(*overrides), tmp_path / "full")
    resumed = run_training(
        tiny_config(*overrides, f"trainer.resume_from={tmp_path / 'full/checkpoints/step5.ckpt'}"),
        tmp_path / "resumed",
    )
    a = torch.load(full.last_checkpoint, weights_only=True)["state_dict"]
    b = torch.load(resumed.last_checkpoint, weights_only=True)["state_dict"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_semi_supervised_needs_unlabeled_images(tiny_config, tmp_path: Path) -> None:
    config = tiny_config("method=mile_semi", "data.fraction=1.0", "trainer.max_steps=1")
    assert config.mile.semi_supervised and config.data.unlabeled_ratio == 7
    with pytest.raises(ValueError, match="data.fraction below 1"):
        run_training(config, tmp_path)


class ViewWatcher(L.Callback):
    """Records each batch and the inputs the teacher (labelling) and student receive."""

    def __init__(self) -> None:
        self.batches: list[dict[str, torch.Tensor]] = []
        self.labelled_inputs: list[torch.Tensor] = []
        self.student_inputs: list[torch.Tensor] = []

    def on_train_start(self, trainer: L.Trainer, module: Any) -> None:
        def teacher_hook(network: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if not network.training:
                self.labelled_inputs.append(inputs[0].detach().clone())

        def student_hook(network: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if network.training:  # not validation
                self.student_inputs.append(inputs[0].detach().clone())

        if isinstance(module, MILeModule):
            module.teacher.register_forward_pre_hook(teacher_hook)
        module.student.register_forward_pre_hook(student_hook)

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, *args: Any) -> None:
        self.batches.append({key: value.clone() for key, value in batch.items()})


def test_teacher_labels_the_weak_view_and_the_student_learns_from_the_strong_one(
    tiny_config, tmp_path: Path
) -> None:
    config: TrainConfig = tiny_config(
        *SEMI, "mile.variant=snapshot", "data.strong_student_view=true", "trainer.max_steps=4"
    )
    watcher = ViewWatcher()
    run_training(config, tmp_path, callbacks=[watcher])
    # Steps 0, 1 (ground truth): the student sees the weak view of labelled images.
    # Steps 2, 3: the teacher labels the weak view, the student trains on the strong view.
    student_steps = watcher.student_inputs
    assert len(student_steps) == 4 and len(watcher.labelled_inputs) == 2
    for step in (0, 1):
        assert torch.equal(student_steps[step], watcher.batches[step]["image"])
    for step, labelled_input in zip((2, 3), watcher.labelled_inputs, strict=True):
        batch = watcher.batches[step]
        assert torch.equal(labelled_input, batch["image"])
        assert torch.equal(student_steps[step], batch["image_strong"])
        assert not torch.equal(batch["image"], batch["image_strong"])


@pytest.mark.parametrize("method", ["softmax", "sigmoid"])
def test_supervised_baselines_train_on_the_strong_view_when_asked(
    tiny_config, tmp_path: Path, method: str
) -> None:
    config: TrainConfig = tiny_config(
        f"method={method}", "data.strong_student_view=true", "trainer.max_steps=2"
    )
    watcher = ViewWatcher()
    run_training(config, tmp_path, callbacks=[watcher])
    assert len(watcher.student_inputs) == 2
    for inputs, batch in zip(watcher.student_inputs, watcher.batches, strict=True):
        assert torch.equal(inputs, batch["image_strong"])
        assert not torch.equal(inputs, batch["image"])


def _nested_unlabeled_folder(root: Path, count: int) -> list[Path]:
    from PIL import Image

    paths = []
    for index in range(count):
        path = root / f"part{index % 2}" / "deeper" / f"img{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (30, 30), 20 * index).save(path)
        paths.append(path)
    return paths


def test_unlabeled_root_replaces_the_complement_and_carries_no_labels(
    tiny_config, tmp_path: Path
) -> None:
    _nested_unlabeled_folder(tmp_path / "extra", 40)
    config: TrainConfig = tiny_config(
        "method=mile_semi",
        "data.fraction=1.0",
        "data.batch_size=8",
        "data.unlabeled_ratio=2",
        f"data.unlabeled_root={tmp_path / 'extra'}",
    )
    datamodule = MILeDataModule(config.data, Preprocessing(), UnlabeledStream(2, lambda step: True))
    assert datamodule.unlabeled_indices == list(range(256, 296))
    batch = next(iter(datamodule.train_dataloader()))
    unlabeled = ~batch["labelled"]
    assert int(unlabeled.sum()) == 16
    assert batch["image"].shape == (24, 3, 24, 24)
    assert (batch["index"][unlabeled] >= 256).all()
    assert (batch["label"][unlabeled] == -1).all()
    assert not batch["label_set"][unlabeled].any()
    result = run_training(
        tiny_config(
            "method=mile_semi",
            "data.fraction=1.0",
            "data.batch_size=8",
            "data.unlabeled_ratio=2",
            "mile.kt=1",
            "mile.ks=1",
            "trainer.max_steps=2",
            f"data.unlabeled_root={tmp_path / 'extra'}",
        ),
        tmp_path / "run",
    )
    history = json.loads((result.output_dir / "pseudo_labels.json").read_text())
    # Quality is measured where the truth is known: on labelled grids, not on the folder.
    assert "pseudo_precision_labelled" in history[0]
    assert "pseudo_precision_unlabeled" not in history[0]
    assert "pseudo_labels_per_image_unlabeled" in history[0]


def test_unlabeled_list_resolves_paths_and_names_missing_files(tiny_config, tmp_path: Path) -> None:
    paths = _nested_unlabeled_folder(tmp_path / "extra", 6)
    listing = tmp_path / "extra" / "unlabeled.txt"
    listing.write_text("\n".join(str(p.relative_to(listing.parent)) for p in paths[:4]) + "\n")
    config: TrainConfig = tiny_config("data.fraction=0.5", f"data.unlabeled_list={listing}")
    datamodule = MILeDataModule(config.data, Preprocessing(), UnlabeledStream(1, lambda s: True))
    assert datamodule.unlabeled_indices == [256, 257, 258, 259]
    listing.write_text("part0/deeper/img0.png\npart0/deeper/missing.png\n")
    with pytest.raises(FileNotFoundError, match=r"unlabeled\.txt: 1 of 2 .*missing\.png"):
        MILeDataModule(config.data, Preprocessing(), UnlabeledStream(1, lambda s: True))
    with pytest.raises(ValueError, match="uses no unlabeled images"):
        MILeDataModule(tiny_config(f"data.unlabeled_root={tmp_path}").data, Preprocessing())


def test_pseudo_label_history_is_written_plotted_and_survives_resume(
    tiny_config, tmp_path: Path
) -> None:
    from PIL import Image

    overrides = (*SEMI, "trainer.max_steps=12", "trainer.checkpoint_every_n_steps=7")
    full = run_training(tiny_config(*overrides), tmp_path / "full")
    history = json.loads((full.output_dir / "pseudo_labels.json").read_text())
    assert [entry["cycle"] for entry in history] == [0, 1, 2]
    assert [entry["step"] for entry in history] == [4, 8, 12]
    for entry in history:
        assert 0 <= entry["pseudo_precision_unlabeled"] <= 1
        assert 0 <= entry["pseudo_recall_unlabeled"] <= 1
        assert entry["pseudo_labels_per_image"] >= 0
    with Image.open(full.output_dir / "pseudo_labels.png") as image:
        assert image.format == "PNG" and image.width > 1000
    # Resumed between the two student steps of cycle 1: identical history.
    resumed = run_training(
        tiny_config(*overrides, f"trainer.resume_from={tmp_path / 'full/checkpoints/step7.ckpt'}"),
        tmp_path / "resumed",
    )
    assert json.loads((resumed.output_dir / "pseudo_labels.json").read_text()) == history


class StudentLossWatcher(L.Callback):
    """Records, per student step, the teacher's and student's logits and the step's loss."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []
        self._current: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: L.Trainer, module: Any) -> None:
        def keep(name: str) -> Callable[..., None]:
            def hook(network: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
                if network.training == (name == "student"):
                    self._current[name] = output.detach().clone()

            return hook

        module.teacher.register_forward_hook(keep("teacher"))
        module.student.register_forward_hook(keep("student"))

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, *args: Any) -> None:
        self._current = {"labelled": batch["labelled"].clone()}

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, *args: Any) -> None:
        if "teacher" in self._current:  # a student step: the teacher labelled the batch
            self.steps.append({**self._current, "loss": outputs["loss"].detach().clone()})


@pytest.mark.parametrize("unlabeled_weight", [None, 0.5])
def test_student_loss_weighs_the_streams_as_configured(
    tiny_config, tmp_path: Path, unlabeled_weight: float | None
) -> None:
    weight = [] if unlabeled_weight is None else [f"mile.unlabeled_weight={unlabeled_weight}"]
    config: TrainConfig = tiny_config(
        *SEMI, "mile.empty_pseudo_labels=keep", "trainer.max_steps=4", *weight
    )
    watcher = StudentLossWatcher()
    run_training(config, tmp_path, callbacks=[watcher])
    assert len(watcher.steps) == 2
    for step in watcher.steps:
        targets = threshold_pseudo_labels(step["teacher"], config.mile.rho)
        labelled = step["labelled"]
        one_mean = multi_label_bce(step["student"], targets)
        per_stream = multi_label_bce(
            step["student"][labelled], targets[labelled]
        ) + 0.5 * multi_label_bce(step["student"][~labelled], targets[~labelled])
        expected, other = (
            (one_mean, per_stream) if unlabeled_weight is None else (per_stream, one_mean)
        )
        torch.testing.assert_close(step["loss"], expected)
        assert not torch.allclose(step["loss"], other)


def test_unlabeled_images_take_their_own_threshold_when_one_is_set() -> None:
    backbone, dim = build_backbone(BackboneSpec("tiny_resnet", {"widths": [8]}))
    images = torch.randn(6, 3, 24, 24)
    labelled = torch.tensor([True, True, True, False, False, False])
    one = MILeModule(backbone, dim, 5, mile=MileConfig(rho=0.5, semi_supervised=True))
    with torch.no_grad():  # outputs spread around 0.5 so that the two thresholds differ
        one.teacher.head.bias.copy_(torch.linspace(-1.0, 1.0, 5))
    probabilities = torch.sigmoid(one.teacher.eval()(images).float())
    assert one.pseudo_label(images, labelled).equal(probabilities > 0.5)
    two = MILeModule(
        backbone, dim, 5, mile=MileConfig(rho=0.5, unlabeled_rho=0.6, semi_supervised=True)
    )
    two.load_state_dict(one.state_dict())
    labels = two.pseudo_label(images, labelled)
    assert labels[:3].equal(probabilities[:3] > 0.5)
    assert labels[3:].equal(probabilities[3:] > 0.6)
    assert not labels.equal(probabilities > 0.5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=mile", "mile.unlabeled_rho=0.6"], "mile.unlabeled_rho=0.6 thresholds"),
        (["method=mile_semi", "mile.unlabeled_rho=1.5"], "mile.unlabeled_rho"),
    ],
)
def test_an_unlabeled_threshold_without_unlabeled_images_is_refused(
    tiny_config: Callable[..., TrainConfig], overrides: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(*overrides)
