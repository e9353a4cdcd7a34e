"""The finiteness check run on every loaded file and before every checkpoint save."""

from __future__ import annotations

import torch

from mile_ssl.adapters.diagnostics import non_finite_tensors


def test_counts_the_values_of_exactly_the_tensors_with_a_nan_or_an_infinity() -> None:
    state = {
        "fine": torch.randn(4, 4),
        "nan": torch.tensor([1.0, float("nan")]),
        "inf": torch.tensor([float("-inf"), 2.0]),
        "both": torch.tensor([float("inf"), float("-inf")]),  # the sum is NaN
        "steps": torch.tensor(7),  # integers cannot diverge
        "half_nan": torch.tensor([float("nan")], dtype=torch.bfloat16),
    }
    assert non_finite_tensors(state) == {"nan": 1, "inf": 1, "both": 2, "half_nan": 1}


def test_a_finite_tensor_whose_sum_overflows_is_finite() -> None:
    large = torch.full((4,), 60_000.0, dtype=torch.float16)  # sums to inf in float16
    assert not torch.isfinite(large.sum())
    huge = torch.full((3,), 3e38)  # sums to inf in float32
    assert non_finite_tensors({"large": large, "huge": huge}) == {}


def test_nothing_to_check() -> None:
    assert non_finite_tensors({}) == {}
    assert non_finite_tensors({"count": torch.tensor(3)}) == {}
