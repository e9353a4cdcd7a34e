"""Shared fixtures: tiny, fast configurations of the real pipeline."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from mile_ssl.config import TrainConfig, compose_train_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_OVERRIDES = [
    "checkpoint=scratch",
    "data.digits.num_train=256",
    "data.digits.num_val=64",
    "data.batch_size=32",
    "backbone.kwargs.widths=[8,16]",
    "trainer.progress_bar=false",
    "trainer.precision=32-true",
    "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=1",
    "optim.warmup_steps=2",
]
"""A digit-grid run that takes a second: 256 grids, batch 32, an 8/16-channel ResNet."""


@pytest.fixture
def tiny_config() -> Callable[..., TrainConfig]:
    """Compose the shipped configs with the tiny overrides plus the test's own."""

    def compose(*overrides: str) -> TrainConfig:
        return compose_train_config([*TINY_OVERRIDES, *overrides])

    return compose


@pytest.fixture
def tiny_overrides() -> list[str]:
    """The tiny overrides as command-line arguments."""
    return list(TINY_OVERRIDES)
