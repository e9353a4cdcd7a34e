"""softmax and sigmoid fine-tuning, and the ground truth of batches that mix streams."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mile_ssl.commands.train import run_training
from mile_ssl.finetune.batches import ground_truth
from mile_ssl.losses import one_hot_bce, softmax_cross_entropy


@pytest.mark.parametrize("method", ["softmax", "sigmoid"])
def test_baselines_train_the_student_every_step(method: str, tiny_config, tmp_path: Path) -> None:
    config = tiny_config(f"method={method}", "trainer.max_steps=4")
    result = run_training(config, tmp_path)
    assert set(result.metrics) >= {"top1", "real_acc", "real_f1", "f1@0.25", "map", "coverage"}
    if method == "softmax":
        assert result.metrics["coverage"] == 1.0
    state = torch.load(result.last_checkpoint, weights_only=True)
    assert not any(key.startswith("teacher.") for key in state["state_dict"])
    assert "mile" not in state["mile_ssl"]  # MILe settings do not define these runs


def test_ground_truth_of_a_mixed_batch_is_that_of_its_labelled_images() -> None:
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    batch = {"label": torch.tensor([2, -1, 0, -1]), "labelled": torch.tensor([1, 0, 1, 0]) > 0}
    labels, weights = ground_truth(batch)
    kept = batch["labelled"]
    expected_labels = batch["label"][kept]
    torch.testing.assert_close(
        one_hot_bce(logits, labels, weights), one_hot_bce(logits[kept], expected_labels)
    )
    torch.testing.assert_close(
        softmax_cross_entropy(logits, labels, weights),
        softmax_cross_entropy(logits[kept], expected_labels),
    )
    assert ground_truth({"label": batch["label"][kept]})[1] is None
