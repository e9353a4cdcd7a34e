"""Training views: crop windows, per-item seeds, and batches that depend on the step alone."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from PIL import Image

from mile_ssl.data.augment import CROP_RATIO, TrainView, crop_window, train_transform
from mile_ssl.data.folder import LabeledImageFolder
from mile_ssl.data.images import load_rgb
from mile_ssl.data.sampling import SeededBatchSampler, SeededItems, StepBatchSampler, item_seed
from mile_ssl.networks.preprocessing import Preprocessing
from tests.conftest import write_image_folder


def test_crop_windows_lie_inside_the_image_with_the_allowed_shapes() -> None:
    rng = random.Random(0)
    for height, width in [(375, 500), (40, 36), (10, 300), (300, 10)]:
        for _ in range(200):
            window = crop_window(height, width, rng)
            assert window.top >= 0 and window.top + window.height <= height
            assert window.left >= 0 and window.left + window.width <= width
            if (height, width) == (375, 500):  # no fallback needed: ratios as asked
                ratio = window.width / window.height
                assert CROP_RATIO[0] - 0.02 <= ratio <= CROP_RATIO[1] + 0.02


def test_item_seeds_differ_between_steps_and_items() -> None:
    seeds = {item_seed(0, step, index) for step in range(50) for index in range(50)}
    assert len(seeds) == 2500
    assert item_seed(0, 3, 7) == item_seed(0, 3, 7) != item_seed(1, 3, 7)


def test_a_file_and_its_decoded_image_give_the_same_view(tmp_path: Path) -> None:
    path = tmp_path / "image.png"
    Image.effect_noise((30, 20), 60).convert("RGB").save(path)
    view = TrainView(16, Preprocessing())
    torch.manual_seed(5)
    from_file = view.from_file(path)
    torch.manual_seed(5)
    assert torch.equal(from_file, view(load_rgb(path)))
    assert from_file.shape == (3, 16, 16) and from_file.dtype == torch.float32


def test_training_batches_depend_on_the_step_not_on_what_ran_before(tmp_path: Path) -> None:
    write_image_folder(tmp_path, classes=2, per_class=6, size=40)
    dataset = SeededItems(LabeledImageFolder(tmp_path, train_transform(16, Preprocessing())))

    def batches(first_step: int) -> list[torch.Tensor]:
        sampler = StepBatchSampler(range(12), 4, seed=3, start_step=lambda: first_step)
        torch.manual_seed(first_step)  # the process's random state must not matter
        return [
            torch.stack([dataset[key]["image"] for key in keys])
            for keys in SeededBatchSampler(sampler)
        ]

    uninterrupted, resumed = batches(0), batches(1)
    assert len(uninterrupted) == 3 and len(resumed) == 2
    for expected, actual in zip(uninterrupted[1:], resumed, strict=True):
        assert torch.equal(expected, actual)
    second_pass = StepBatchSampler(range(12), 4, seed=3, start_step=lambda: 3)
    again = [keys for keys in SeededBatchSampler(second_pass)]
    first_pass = [keys for keys in SeededBatchSampler(StepBatchSampler(range(12), 4, seed=3))]
    assert {seed for keys in again for _, seed in keys}.isdisjoint(
        seed for keys in first_pass for _, seed in keys
    )
