from __future__ import annotations

import math

import pytest

from mile_ssl.schedule import Phase, mile_position, warmup_cosine


def test_mile_cycle_positions() -> None:
    phases = [mile_position(step, kt=3, ks=2) for step in range(11)]
    assert [p.phase for p in phases] == [Phase.TEACHER] * 3 + [Phase.STUDENT] * 2 + [
        Phase.TEACHER
    ] * 3 + [Phase.STUDENT] * 2 + [Phase.TEACHER]
    assert [p.cycle for p in phases] == [0] * 5 + [1] * 5 + [2]
    assert [p.step_in_phase for p in phases[:5]] == [0, 1, 2, 0, 1]
    assert phases[3].starts_phase and not phases[4].starts_phase
    with pytest.raises(ValueError):
        mile_position(-1, 1, 1)


def test_warmup_then_cosine() -> None:
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0)
    assert warmup_cosine(0, 100, 0) == pytest.approx(1.0)
