"""benchmarks/digits_plots.py: the kt x ks heatmap and the rho sweep of a merged report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import load_benchmark

METRICS = ("f1@0.25", "f1@0.5", "precision@0.25", "recall@0.25", "top1", "real_acc", "real_f1")


def _row(setting: list[str], seed: int, fraction: float, score: float) -> dict[str, Any]:
    """A benchmark row whose every metric is ``score`` (coverage: score / 100)."""
    metrics = {key: score for key in (*METRICS, "map")}
    metrics["coverage"] = score / 100
    label = f"mile[{','.join(setting)}]"
    return {
        "method": label,
        "base_method": "mile",
        "setting": setting,
        "fraction": fraction,
        "seed": seed,
        "init": "scratch",
        "val": dict(metrics),
        "test": {**metrics, "map": score + 1},
        "seconds": 1.0,
    }


def _report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary = load_benchmark("digits_summary")
    return summary.report(rows, command=["test"], overrides=[], torch_threads=1)


def test_heatmap_cells_are_test_means_and_the_validation_choice_is_marked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = []
    for kt in (10, 100):
        for ks in (10, 30, 100):
            for seed in (0, 1):
                # kt=100, ks=30 scores best; seed 1 scores 2 more than seed 0.
                score = 50.0 + (10 if (kt, ks) == (100, 30) else 0) + 2 * seed
                rows.append(_row([f"mile.kt={kt}", f"mile.ks={ks}"], seed, 0.1, score))
    report_file = tmp_path / "sweep.json"
    report_file.write_text(json.dumps(_report(rows)))
    png = tmp_path / "kt_ks.png"

    load_benchmark("digits_plots").main(["heatmap", str(report_file), "--out", str(png)])

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "| mile.kt \\ mile.ks | 10 | 30 | 100 |" in table
    best, other = "61.0 / 62.0 / 0.61 (2)", "51.0 / 52.0 / 0.51 (2)"
    assert f"| 100 | {other} | **{best}** | {other} |" in table
    assert f"| 10 | {other} | {other} | {other} |" in table


def test_sweep_table_orders_values_and_gives_each_validation_score(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        _row([f"mile.rho={rho}"], seed, fraction, 40.0 + 100 * rho * (1 if seed else 0.5))
        for fraction in (0.1, 1.0)
        for rho in (0.5, 0.05, 0.2)
        for seed in (0, 1)
    ]
    report_file = tmp_path / "rho.json"
    report_file.write_text(json.dumps(_report(rows)))
    png = tmp_path / "rho.png"

    load_benchmark("digits_plots").main(["sweep", str(report_file), "--out", str(png)])

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 10 %")]
    assert [line.split(" | ")[1] for line in lines] == ["0.05", "0.2", "**0.5**"]
    # rho = 0.2: seeds at 50 and 60, validation score = mean of top-1 and mAP (both 55).
    assert lines[1].startswith("| 10 % | 0.2 | 2 | 55.0 ± 5.0 | 55.0 ± 5.0 | 55.0 ± 5.0 |")
    assert lines[1].endswith("| 56.0 ± 5.0 | 0.55 | 55.0 |")


def test_a_key_that_was_not_swept_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_file = tmp_path / "rho.json"
    report_file.write_text(json.dumps(_report([_row(["mile.rho=0.1"], 0, 1.0, 50.0)])))

    with pytest.raises(SystemExit) as stop:
        load_benchmark("digits_plots").main(
            ["sweep", str(report_file), "--key", "mile.kt", "--out", str(tmp_path / "x.png")]
        )

    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "mile.kt is not among the swept settings ['mile.rho=0.1']" in err
    assert str(report_file) in err and not (tmp_path / "x.png").exists()


def test_a_report_without_a_sweep_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unswept = _row([], 0, 1.0, 50.0)
    report_file = tmp_path / "table.json"
    report_file.write_text(json.dumps(_report([unswept])))

    with pytest.raises(SystemExit) as stop:
        load_benchmark("digits_plots").main(
            ["heatmap", str(report_file), "--out", str(tmp_path / "x.png")]
        )

    assert stop.value.code == 2
    assert f"{report_file} has no rows of a swept setting" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
