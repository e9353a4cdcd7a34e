"""``benchmarks/digits.py`` at a tiny size: validation and test rows, selection on validation."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from mile_ssl.config import compose_train_config
from mile_ssl.data.digits import make_digit_grids
from mile_ssl.runs.finished_run import read_run_checkpoint
from tests.conftest import TINY_OVERRIDES, load_benchmark

RUN_OVERRIDES = [
    *(override for override in TINY_OVERRIDES if override != "checkpoint=scratch"),
    "optim.warmup_steps=0",
    "trainer.max_steps=4",
    "trainer.val_every_n_steps=null",
    "mile.kt=2",
    "mile.ks=2",
    "data.digits.num_train=64",
    "data.digits.num_val=32",
    "data.digits.num_test=48",
    "data.batch_size=16",
]
RHOS = ("0.1", "0.3")


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_benchmark("digits")


@pytest.fixture(scope="module")
def report(script: ModuleType, module_tmp_path: Path) -> tuple[dict[str, Any], Path]:
    out = module_tmp_path / "digits.json"
    script.main(
        [
            "--fractions",
            "1.0",
            "--seeds",
            "0",
            "--init",
            "scratch",
            "--methods",
            "sigmoid",
            "mile",
            "--select",
            f"mile.rho={','.join(RHOS)}",
            "--select-methods",
            "mile",
            "--workdir",
            str(module_tmp_path / "runs"),
            "--out",
            str(out),
            *RUN_OVERRIDES,
        ]
    )
    return json.loads(out.read_text()), module_tmp_path / "runs"


def test_every_row_has_validation_and_test_metrics(report: tuple[dict[str, Any], Path]) -> None:
    payload, _ = report
    methods = [row["method"] for row in payload["rows"]]
    assert methods == [
        "predict_all",
        "predict_top6_frequent",
        "sigmoid",
        *(f"mile[mile.rho={rho}]" for rho in RHOS),
    ]
    for row in payload["rows"]:
        for split in ("val", "test"):
            assert set(row[split]) == set(payload["summary"][0][split]) - {
                key for key in payload["summary"][0][split] if key.endswith("_std")
            }
            assert 0.0 <= row[split]["map"] <= 100.0
    # 32 validation and 48 test grids: the two splits are different images
    assert any(row["val"] != row["test"] for row in payload["rows"])


def test_selection_picks_the_best_validation_score(report: tuple[dict[str, Any], Path]) -> None:
    payload, _ = report
    (chosen,) = payload["selected"]
    assert chosen["method"] == "mile"
    scores = chosen["validation_scores"]
    assert set(scores) == {f"mile.rho={rho}" for rho in RHOS}
    assert scores[",".join(chosen["setting"])] == max(scores.values())
    entry = next(entry for entry in payload["summary"] if entry["setting"] == chosen["setting"])
    assert chosen["test"] == entry["test"]
    assert scores[",".join(chosen["setting"])] == round(
        (entry["val"]["top1"] + entry["val"]["map"]) / 2, 2
    )


def test_checkpoint_evaluation_reproduces_the_validation_metrics(
    script: ModuleType, report: tuple[dict[str, Any], Path]
) -> None:
    """The test numbers come from the last checkpoint; on the validation grids the same
    code must give the run's own validation metrics."""
    payload, runs = report
    row = next(row for row in payload["rows"] if row["method"] == "sigmoid")
    config = compose_train_config(
        [
            "experiment=digits",
            "method=sigmoid",
            "data.fraction=1.0",
            "seed=0",
            "data.split_seed=0",
            "checkpoint=scratch",
            *RUN_OVERRIDES,
        ]
    )
    (checkpoint,) = runs.glob("scratch_f1.0_s0_sigmoid/checkpoints/last.ckpt")
    _, val = make_digit_grids(script.digit_grid_config(config.data))
    metrics = script.evaluate_on_grids(config, checkpoint, val)
    assert metrics["map"] * 100 == pytest.approx(row["val"]["map"])
    assert metrics["top1"] * 100 == pytest.approx(row["val"]["top1"])


def test_malformed_select_is_a_usage_error(script: ModuleType) -> None:
    with pytest.raises(SystemExit):
        script.parse_args(["--select", "mile.rho"])
    with pytest.raises(SystemExit):
        script.parse_args(["--select", "mile.rho="])
    assert script.parse_args(
        ["--select", "mile.rho=0.1,0.2", "--select", "optim.lr=0.05,0.1"]
    ).settings == [
        ("mile.rho=0.1", "optim.lr=0.05"),
        ("mile.rho=0.1", "optim.lr=0.1"),
        ("mile.rho=0.2", "optim.lr=0.05"),
        ("mile.rho=0.2", "optim.lr=0.1"),
    ]


def test_distillation_from_a_wider_teacher_and_runs_started_from_the_teacher(
    script: ModuleType, tmp_path: Path
) -> None:
    """SimCLR-v2's two distillation rows, from a teacher of the student's size and from a
    wider one (``--wide-methods``: distill only), and a row whose network starts from the
    teacher run's backbone (``--from-teacher``); each teacher trained once for all."""
    out = tmp_path / "semi.json"
    script.main(
        [
            *("--fractions", "0.5", "--seeds", "0", "--init", "scratch", "--no-trivial"),
            *("--methods", "distill", "self_train", "mile_semi"),
            *("--wide-teacher", "backbone.kwargs.widths=[16,24]", "--wide-methods", "distill"),
            *("--from-teacher", "mile_semi"),
            *("--workdir", str(tmp_path / "runs"), "--out", str(out)),
            *RUN_OVERRIDES,
            "data.unlabeled_ratio=1",
        ]
    )
    rows = json.loads(out.read_text())["rows"]
    assert [row["method"] for row in rows] == [
        "softmax",
        "distill",
        "softmax_wide",
        "distill_wide",
        "self_train",
        "mile_semi_from_teacher",
        "mile_semi",
    ]
    runs = tmp_path / "runs"
    wide = read_run_checkpoint(runs / "scratch_f0.5_s0_softmax_wide" / "checkpoints" / "last.ckpt")
    assert wide["mile_ssl"]["metadata"]["backbone"]["kwargs"]["widths"] == [16, 24]
    student = read_run_checkpoint(
        runs / "scratch_f0.5_s0_distill_wide" / "checkpoints" / "last.ckpt"
    )
    assert student["mile_ssl"]["metadata"]["backbone"]["kwargs"]["widths"] == [8, 16]
    resolved = yaml.safe_load(
        (runs / "scratch_f0.5_s0_distill_wide" / "resolved_config.yaml").read_text()
    )
    assert resolved["distill"]["teacher_checkpoint"].endswith(
        "scratch_f0.5_s0_softmax_wide/checkpoints/last.ckpt"
    )
    started = yaml.safe_load(
        (runs / "scratch_f0.5_s0_mile_semi_from_teacher" / "resolved_config.yaml").read_text()
    )
    teacher = runs / "scratch_f0.5_s0_softmax" / "checkpoints" / "last.ckpt"
    assert started["checkpoint"]["path"] == str(teacher)  # the teacher's fine-tuned network
    metrics = json.loads(
        (runs / "scratch_f0.5_s0_mile_semi_from_teacher" / "metrics.json").read_text()
    )
    assert metrics["adapter"] == "mile_ssl_run"
    plain = runs / "scratch_f0.5_s0_mile_semi" / "resolved_config.yaml"
    assert yaml.safe_load(plain.read_text())["checkpoint"]["path"] is None


def test_reports_made_apart_merge_into_the_report_of_one_call(
    report: tuple[dict[str, Any], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rows run as two processes (split here by method) give the one call's summary."""
    whole, _ = report
    summary = load_benchmark("digits_summary")
    mile = [row for row in whole["rows"] if row["base_method"] == "mile"]
    others = [row for row in whole["rows"] if row["base_method"] != "mile"]
    parts = [tmp_path / "mile.json", tmp_path / "others.json"]
    for path, rows in zip(parts, (mile, others), strict=True):
        path.write_text(json.dumps({**whole, "rows": rows}))
    summary.main([*map(str, parts), "--out", str(tmp_path / "merged.json")])
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged["rows"] == mile + others
    key = lambda entry: (entry["method"], entry["init"])  # noqa: E731
    assert sorted(merged["summary"], key=key) == sorted(whole["summary"], key=key)
    assert merged["selected"] == whole["selected"]
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| init | fraction | method | runs | top1")
    assert len(table) == 2 + len(whole["summary"])
