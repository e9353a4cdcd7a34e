"""Single-label top-1 / top-k accuracy against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, top_k_accuracy_score

from mile_ssl.metrics.accuracy import top1_accuracy, topk_accuracy
from tests.metrics.metric_data import make_data


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top1_and_topk_match_sklearn(seed: int) -> None:
    scores, targets, _ = make_data(seed)
    expected = accuracy_score(targets.numpy(), scores.argmax(dim=1).numpy())
    assert top1_accuracy(scores, targets) == pytest.approx(expected)
    for k in (1, 3, 5, 11):
        expected_k = top_k_accuracy_score(
            targets.numpy(), scores.numpy(), k=k, labels=np.arange(scores.shape[1])
        )
        assert topk_accuracy(scores, targets, k) == pytest.approx(expected_k)
    assert topk_accuracy(scores, targets, 1) == pytest.approx(top1_accuracy(scores, targets))
    assert topk_accuracy(scores, targets, scores.shape[1]) == 1.0
