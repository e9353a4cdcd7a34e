from __future__ import annotations

from collections import Counter

import pytest
import torch

from mile_ssl.data.sampling import StepBatchSampler, stratified_fraction


def test_stratified_fraction_keeps_each_class_share() -> None:
    labels = [label for label in range(5) for _ in range(100)] + [5] * 3
    chosen = stratified_fraction(labels, 0.1, seed=0)
    counts = Counter(labels[index] for index in chosen)
    assert [counts[label] for label in range(5)] == [10] * 5
    assert counts[5] == 1  # rare classes keep at least one image
    assert chosen == sorted(set(chosen))
    assert stratified_fraction(labels, 0.1, seed=0) == chosen
    assert stratified_fraction(labels, 0.1, seed=1) != chosen
    assert stratified_fraction(labels, 1.0, seed=3) == list(range(len(labels)))


def test_stratified_fraction_rejects_bad_fraction() -> None:
    with pytest.raises(ValueError, match="fraction"):
        stratified_fraction([0, 1], 0.0, seed=0)


def test_step_batches_cover_each_pass_once_and_reshuffle() -> None:
    indices = list(range(100, 164))
    sampler = StepBatchSampler(indices, batch_size=8, seed=0)
    first_pass = list(sampler)
    assert len(first_pass) == len(sampler) == 8
    assert sorted(i for batch in first_pass for i in batch) == indices
    assert [sampler.batch(step) for step in range(8)] == first_pass
    assert [sampler.batch(step) for step in range(8, 16)] != first_pass


def test_ranks_get_disjoint_slices_of_the_same_global_batch() -> None:
    indices = list(range(96))
    single = StepBatchSampler(indices, batch_size=16, seed=3)
    ranks = [StepBatchSampler(indices, 8, seed=3, rank=r, world_size=2) for r in range(2)]
    for step in range(5):
        parts = [sampler.batch(step) for sampler in ranks]
        assert not set(parts[0]) & set(parts[1])
        assert parts[0] + parts[1] == single.batch(step)


def test_iteration_starts_at_the_restored_step() -> None:
    step = {"value": 0}
    sampler = StepBatchSampler(
        list(range(40)), batch_size=4, seed=1, start_step=lambda: step["value"]
    )
    uninterrupted = [sampler.batch(s) for s in range(10, 20)]
    step["value"] = 13  # mid-pass of the second pass
    assert list(sampler) == uninterrupted[3:]


def test_too_few_images_for_one_step_is_an_error() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        StepBatchSampler(list(range(10)), batch_size=8, seed=0, world_size=2)


def test_indices_are_python_ints() -> None:
    batch = StepBatchSampler(torch.arange(16).tolist(), 4, seed=0).batch(0)
    assert all(type(index) is int for index in batch)
