from __future__ import annotations

import math

import torch

from mile_ssl.pseudo_labels import (
    STATISTICS,
    PhaseStatistics,
    PseudoLabelStats,
    confident_row_weights,
    pseudo_label_statistics,
    read_phase_means,
    statistics_dict,
)


def test_stats_count_labels_and_empty_sets() -> None:
    pseudo = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 0, 0]], dtype=torch.bool)
    stats = statistics_dict(pseudo_label_statistics(pseudo))
    assert stats == {"pseudo_labels_per_image": 1.25, "pseudo_empty_fraction": 0.5}


def test_collapse_is_diagnosed_both_ways() -> None:
    assert PseudoLabelStats(0.05, 0.95).collapse_reason(10) is not None
    assert "mile.rho" in (PseudoLabelStats(6.0, 0.0).collapse_reason(10) or "")
    assert PseudoLabelStats(1.8, 0.05).collapse_reason(10) is None


def test_quality_is_micro_precision_and_recall_over_known_sets_per_stream() -> None:
    pseudo = torch.tensor([[1, 1, 0], [0, 0, 1], [1, 1, 1], [0, 0, 0]], dtype=torch.bool)
    truth = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 0, 0]], dtype=torch.bool)
    labelled = torch.tensor([True, True, False, False])
    stats = statistics_dict(pseudo_label_statistics(pseudo, labelled, truth))
    # All images: row 3 has no known label and is left out; hits 2 of 3 predicted, 4 true.
    assert math.isclose(stats["pseudo_precision"], 2 / 3, rel_tol=1e-6)
    assert math.isclose(stats["pseudo_recall"], 2 / 4, rel_tol=1e-6)
    assert math.isclose(stats["pseudo_recall_labelled"], 2 / 3, rel_tol=1e-6)
    # The unlabeled stream: one known row (row 4) with no prediction: precision 0.
    assert stats["pseudo_precision_unlabeled"] == 0.0
    assert stats["pseudo_recall_unlabeled"] == 0.0
    assert stats["pseudo_labels_per_image_unlabeled"] == 1.5
    assert stats["pseudo_empty_fraction_unlabeled"] == 0.5


def test_statistics_without_images_to_measure_are_left_out() -> None:
    pseudo = torch.tensor([[1, 0], [0, 1]], dtype=torch.bool)
    unknown = torch.zeros(2, 2, dtype=torch.bool)
    all_labelled = torch.tensor([True, True])
    stats = statistics_dict(pseudo_label_statistics(pseudo, all_labelled, unknown))
    assert set(stats) == {
        "pseudo_labels_per_image",
        "pseudo_empty_fraction",
        "pseudo_labels_per_image_labelled",
        "pseudo_empty_fraction_labelled",
    }
    assert len(pseudo_label_statistics(pseudo)) == len(STATISTICS)


def test_empty_sets_weigh_nothing_unless_all_are_empty() -> None:
    some = torch.tensor([[1, 0], [0, 0], [0, 1]], dtype=torch.bool)
    assert confident_row_weights(some).tolist() == [1.0, 0.0, 1.0]
    assert confident_row_weights(torch.zeros(3, 2, dtype=torch.bool)).tolist() == [1.0] * 3


def test_phase_means_average_each_statistic_over_the_steps_it_applies_to() -> None:
    first = torch.tensor([[1, 1], [0, 0]], dtype=torch.bool)
    second = torch.tensor([[1, 0], [1, 0]], dtype=torch.bool)
    truth = torch.tensor([[1, 0], [0, 1]], dtype=torch.bool)
    phase = PhaseStatistics()
    phase.add(pseudo_label_statistics(first))
    phase.add(pseudo_label_statistics(second, label_sets=truth))
    restored = PhaseStatistics()
    restored.load_state(phase.state())  # as after a resume mid-phase
    for statistics in (phase, restored):
        finished = statistics.finish_phase()
        assert finished is not None
        means = read_phase_means(*finished)
        assert means["pseudo_labels_per_image"] == 1.0  # (1.0 + 1.0) / 2
        assert means["pseudo_empty_fraction"] == 0.25  # (0.5 + 0.0) / 2
        assert means["pseudo_precision"] == 0.5  # measured in the second step only
        assert statistics.finish_phase() is None  # the phase was cleared
