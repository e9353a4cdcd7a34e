from __future__ import annotations

import torch

from mile_ssl.pseudo_labels import PseudoLabelStats, pseudo_label_stats


def test_stats_count_labels_and_empty_sets() -> None:
    pseudo = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 0, 0]], dtype=torch.bool)
    stats = pseudo_label_stats(pseudo)
    assert stats.mean_size == 1.25
    assert stats.empty_fraction == 0.5


def test_collapse_is_diagnosed_both_ways() -> None:
    assert PseudoLabelStats(0.05, 0.95).collapse_reason(10) is not None
    assert "mile.rho" in (PseudoLabelStats(6.0, 0.0).collapse_reason(10) or "")
    assert PseudoLabelStats(1.8, 0.05).collapse_reason(10) is None


def test_pseudo_label_quality_is_micro_precision_and_recall_over_known_sets() -> None:
    from mile_ssl.pseudo_labels import pseudo_label_quality

    pseudo = torch.tensor([[1, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=torch.bool)
    truth = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 0]], dtype=torch.bool)
    # Row 3 has no known label: left out. Hits 2, predicted 3, true 3.
    assert pseudo_label_quality(pseudo, truth) == (2 / 3, 2 / 3)
    assert pseudo_label_quality(pseudo[2:], truth[2:]) is None
