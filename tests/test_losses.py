from __future__ import annotations

import math

import torch

from mile_ssl.losses import (
    multi_label_bce,
    one_hot_bce,
    semi_supervised_bce,
    sigmoid_head_bias,
    softmax_cross_entropy,
)


def _per_image_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    probabilities = torch.sigmoid(logits)
    return -(targets * probabilities.log() + (~targets) * (1 - probabilities).log()).sum(dim=1)


def test_bce_sums_over_classes_and_averages_over_batch() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    targets = torch.tensor([[1, 0, 1], [0, 0, 1]], dtype=torch.bool)
    expected = _per_image_bce(logits, targets).sum() / 2
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


def test_semi_supervised_bce_averages_each_stream_on_its_own() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, generator=generator)
    targets = torch.rand(5, 4, generator=generator) > 0.5
    labelled = torch.tensor([True, False, False, True, False])
    per_image = _per_image_bce(logits, targets)
    expected = per_image[[0, 3]].mean() + 0.5 * per_image[[1, 2, 4]].mean()
    torch.testing.assert_close(semi_supervised_bce(logits, targets, labelled, 0.5), expected)


def test_more_unlabeled_images_do_not_dilute_the_labelled_gradient() -> None:
    labelled_logits = torch.tensor([[2.0, -1.0, 0.5]], requires_grad=True)
    targets = torch.tensor([[0, 1, 1]], dtype=torch.bool)
    gradients = []
    for ratio in (1, 7):
        logits = torch.cat([labelled_logits, torch.zeros(ratio, 3)])
        labelled = torch.tensor([True] + [False] * ratio)
        all_targets = torch.cat([targets, torch.zeros(ratio, 3, dtype=torch.bool)])
        (gradient,) = torch.autograd.grad(
            semi_supervised_bce(logits, all_targets, labelled, 1.0), labelled_logits
        )
        gradients.append(gradient)
    torch.testing.assert_close(gradients[0], gradients[1])
    single = torch.autograd.grad(multi_label_bce(labelled_logits, targets), labelled_logits)[0]
    torch.testing.assert_close(gradients[0], single)


def test_semi_supervised_bce_with_one_stream_is_that_streams_mean() -> None:
    logits = torch.randn(3, 2, generator=torch.Generator().manual_seed(1))
    targets = torch.ones(3, 2, dtype=torch.bool)
    none = torch.zeros(3, dtype=torch.bool)
    torch.testing.assert_close(
        semi_supervised_bce(logits, targets, none, 2.0), 2.0 * multi_label_bce(logits, targets)
    )
    torch.testing.assert_close(
        semi_supervised_bce(logits, targets, ~none, 2.0), multi_label_bce(logits, targets)
    )


def test_row_weights_of_zero_and_one_equal_selecting_the_rows() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 4, generator=generator)
    targets = torch.rand(5, 4, generator=generator) > 0.5
    labels = torch.tensor([0, 3, 1, 1, 2])
    keep = torch.tensor([True, False, True, False, True])
    weights = keep.float()
    torch.testing.assert_close(
        multi_label_bce(logits, targets, weights), multi_label_bce(logits[keep], targets[keep])
    )
    torch.testing.assert_close(
        one_hot_bce(logits, labels, weights), one_hot_bce(logits[keep], labels[keep])
    )
    torch.testing.assert_close(
        softmax_cross_entropy(logits, labels, weights),
        softmax_cross_entropy(logits[keep], labels[keep]),
    )


def test_rows_of_weight_zero_cannot_make_the_loss_non_finite() -> None:
    logits = torch.tensor([[2.0, -1.0], [float("inf"), float("nan")]])
    targets = torch.tensor([[1, 0], [0, 1]], dtype=torch.bool)
    loss = multi_label_bce(logits, targets, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(loss, multi_label_bce(logits[:1], targets[:1]))
    assert semi_supervised_bce(logits, targets, torch.tensor([True, False]), 1.0, None).isnan()
    weighted = semi_supervised_bce(
        logits, targets, torch.tensor([True, False]), 1.0, torch.tensor([1.0, 0.0])
    )
    torch.testing.assert_close(weighted, loss)  # the empty unlabeled stream adds 0
