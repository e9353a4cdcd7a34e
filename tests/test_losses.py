from __future__ import annotations

import math

import torch

from mile_ssl.losses import multi_label_bce, one_hot_bce, sigmoid_head_bias, softmax_cross_entropy


def test_bce_sums_over_classes_and_averages_over_batch() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    targets = torch.tensor([[1, 0, 1], [0, 0, 1]], dtype=torch.bool)
    probabilities = torch.sigmoid(logits)
    per_element = -(targets * probabilities.log() + (~targets) * (1 - probabilities).log())
    expected = per_element.sum() / 2
    torch.testing.assert_close(multi_label_bce(logits, targets), expected)


def test_one_hot_bce_equals_bce_on_one_hot_targets() -> None:
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 4, 2, 2])
    targets = torch.nn.functional.one_hot(labels, 5)
    torch.testing.assert_close(one_hot_bce(logits, labels), multi_label_bce(logits, targets))


def test_softmax_cross_entropy_is_mean_negative_log_likelihood() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.0]])
    expected = -torch.log_softmax(logits, dim=1)[0, 1]
    torch.testing.assert_close(softmax_cross_entropy(logits, torch.tensor([1])), expected)


def test_sigmoid_head_bias_starts_at_the_uniform_prior() -> None:
    bias = sigmoid_head_bias(1000)
    assert bias == -math.log(1000)
    assert abs(torch.sigmoid(torch.tensor(bias)).item() - 1 / 1001) < 1e-9


def test_bf16_logits_give_a_float32_loss() -> None:
    logits = torch.randn(2, 3).to(torch.bfloat16)
    assert multi_label_bce(logits, torch.ones(2, 3)).dtype == torch.float32
