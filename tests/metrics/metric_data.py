"""Random logits, targets and label sets shared by the metric tests."""

from __future__ import annotations

import torch


def make_data(
    seed: int, n: int = 200, c: int = 12, empty_fraction: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random logits, targets and label sets that usually contain the target."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, c, generator=gen) * 2.0
    targets = torch.randint(0, c, (n,), generator=gen)
    label_sets = torch.rand(n, c, generator=gen) < 0.15
    label_sets[torch.arange(n), targets] |= torch.rand(n, generator=gen) < 0.8
    empty = torch.rand(n, generator=gen) < empty_fraction
    label_sets[empty] = False
    return scores, targets, label_sets


def ensure_nonempty(label_sets: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    out = label_sets.clone()
    out[torch.arange(len(targets)), targets] |= ~out.any(dim=1)
    return out
