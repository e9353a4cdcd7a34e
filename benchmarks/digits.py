r"""Digit-grid benchmark: softmax vs sigmoid vs MILe (paper App. A.1), printed as JSON.

Every run is scored on the validation grids (where settings are chosen) and, from its
last checkpoint, on the held-out test grids (what is reported). One row per run
(method, setting, label fraction, seed, initialisation) plus two trivial reference rows
per setting, "predict all classes" and "predict the k most frequent classes": on this
data F1 rewards over-prediction, so an F1 gain only counts next to top-1, ReaL accuracy
and mAP.

    python benchmarks/digits.py --fractions 1.0 --seeds 0 1 2 --init scratch \\
        --select mile.rho=0.1,0.15,0.2 --select-methods mile --out digits.json

``--select KEY=V1,V2,...`` (repeatable: the grid is the product) runs each method of
``--select-methods`` once per value and, per method, initialisation and fraction, picks
the value with the best mean validation score (the mean of top-1 and mAP over seeds);
``selected`` in the JSON gives that setting's test numbers.

Semi-supervised rows (paper Sec. 4.4): ``mile_semi`` and the baselines ``distill`` and
``self_train``, whose fixed teacher is the ``--teacher-method`` run of the same seed,
fraction, initialisation and setting (trained first when it is not in ``--methods``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from mile_ssl.commands.evaluate import evaluate_module
from mile_ssl.commands.pretrain import pretrain_digits_simclr
from mile_ssl.commands.train import RunResult, run_training
from mile_ssl.config import TEACHER_METHODS, DataConfig, TrainConfig, compose_train_config
from mile_ssl.data.digits import (
    DigitGridConfig,
    DigitGridDataset,
    DigitGrids,
    make_digit_grids,
    make_test_grids,
)
from mile_ssl.metrics import classification_report
from mile_ssl.networks.backbones import BackboneSpec
from mile_ssl.runs.finished_run import read_finished_run
from mile_ssl.runs.trainer import resolve_precision

# fmt: off
METRIC_KEYS = (
    "f1@0.25", "f1@0.5", "precision@0.25", "recall@0.25", "top1", "real_acc", "real_f1",
    "coverage", "map",
)
# fmt: on
SPLITS = ("val", "test")
SELECTION_KEYS = ("top1", "map")
"""Validation metrics whose mean picks a setting: single-label and label-set ranking."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--experiment",
        default="digits",
        help="experiment config of every run, e.g. digits_semi for the semi-supervised rows",
    )
    parser.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        help="label fractions (default: the experiment's data.fraction)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--init", nargs="+", choices=["ssl", "scratch"], default=["ssl", "scratch"])
    parser.add_argument("--methods", nargs="+", default=["softmax", "sigmoid", "mile"])
    parser.add_argument(
        "--teacher-method",
        default="softmax",
        help="run whose last checkpoint is the fixed teacher of distill and self_train "
        "(SimCLR-v2 distils its cross-entropy fine-tuned network)",
    )
    parser.add_argument(
        "--select",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="settings grid chosen on validation, e.g. mile.rho=0.1,0.15 (repeatable)",
    )
    parser.add_argument(
        "--select-methods",
        nargs="+",
        help="methods the --select grid applies to (default: all of --methods)",
    )
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=Path("runs/benchmark_digits"))
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (recorded in the JSON)"
    )
    parser.add_argument(
        "--tag", default="", help="suffix of the method name in rows, e.g. [snapshot]"
    )
    parser.add_argument("--no-trivial", action="store_true", help="skip the reference rows")
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides for every run, e.g. mile.rho=0.1"
    )
    args = parser.parse_args(argv)
    try:
        args.settings = settings_grid(args.select)
    except ValueError as error:
        parser.error(str(error))
    return args


def settings_grid(select: Sequence[str]) -> list[tuple[str, ...]]:
    """Every combination of the ``KEY=V1,V2`` options as override tuples (``[()]`` if none)."""
    axes = []
    for option in select:
        key, sep, values = option.partition("=")
        choices = [value for value in values.split(",") if value]
        if not sep or not key or not choices:
            raise ValueError(f"--select {option!r}: expected KEY=V1,V2,..., e.g. mile.rho=0.1,0.2")
        axes.append([f"{key}={value}" for value in choices])
    return list(itertools.product(*axes))


def digit_grid_config(data: DataConfig) -> DigitGridConfig:
    """The grids a run with ``data`` trains and validates on, and its test grids."""
    digits = data.digits
    return DigitGridConfig(
        num_train=digits.num_train,
        num_val=digits.num_val,
        num_test=digits.num_test,
        center_prob=digits.center_prob,
        seed=data.split_seed,
    )


def evaluate_on_grids(config: TrainConfig, checkpoint: Path, grids: DigitGrids) -> dict[str, float]:
    """Metrics of the student in ``checkpoint`` on ``grids``, computed as in validation."""
    run = read_finished_run(checkpoint, exact_file=True)
    normalize = v2.Normalize(list(run.preprocessing.mean), list(run.preprocessing.std))
    loader = DataLoader(
        DigitGridDataset(grids, transform=normalize),
        batch_size=config.data.eval_batch_size or config.data.batch_size,
    )
    return evaluate_module(
        run.build_module(),
        loader,
        precision=resolve_precision(config.trainer.precision, config.trainer.accelerator),
        accelerator=config.trainer.accelerator,
    )


def _scaled(metrics: dict[str, float]) -> dict[str, float]:
    """The reported metrics, in percent except coverage."""
    return {key: 100 * metrics[key] if key != "coverage" else metrics[key] for key in METRIC_KEYS}


def _row(
    method: str,
    setting: tuple[str, ...],
    run: tuple[float, int, str],
    metrics: dict[str, dict[str, float]],
    seconds: float,
) -> dict[str, Any]:
    fraction, seed, init = run
    label = f"{method}[{','.join(setting)}]" if setting else method
    row: dict[str, Any] = {"method": label, "base_method": method, "setting": list(setting)}
    row.update({"fraction": fraction, "seed": seed, "init": init})
    row.update({split: _scaled(metrics[split]) for split in SPLITS})
    row["seconds"] = round(seconds, 1)
    return row


def trivial_rows(data: DataConfig, run: tuple[float, int, str]) -> list[dict[str, Any]]:
    """Reference predictors that ignore the image."""
    grid_config = digit_grid_config(data)
    train, val = make_digit_grids(grid_config)
    test = make_test_grids(grid_config)
    num_classes = train.label_sets.shape[1]
    frequency = torch.bincount(train.labels, minlength=num_classes).float()
    k = round(float(train.label_sets.sum(dim=1).float().mean()))
    top_k = frequency.argsort(descending=True)[:k]

    predict_all = torch.full((num_classes,), 10.0)
    predict_all[0] += 1.0  # an argmax is required; any fixed class is as good
    predict_frequent = torch.full((num_classes,), -10.0)
    predict_frequent[top_k] = 10.0 - torch.arange(k, dtype=torch.float32) * 0.1
    rows = []
    for name, scores in (
        ("predict_all", predict_all),
        (f"predict_top{k}_frequent", predict_frequent),
    ):
        metrics = {
            split: classification_report(
                scores.repeat(len(grids), 1), grids.labels, grids.label_sets, multi_label=True
            )
            for split, grids in (("val", val), ("test", test))
        }
        rows.append(_row(name, (), run, metrics, 0.0))
    return rows


def _mean_std(rows: list[dict[str, Any]], split: str) -> dict[str, float]:
    entry: dict[str, float] = {}
    for key in METRIC_KEYS:
        values = [row[split][key] for row in rows if not math.isnan(row[split][key])]
        entry[key] = round(statistics.fmean(values), 2) if values else float("nan")
        entry[f"{key}_std"] = round(statistics.pstdev(values), 2) if len(values) > 1 else 0.0
    return entry


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and population std over seeds of every (init, fraction, method, setting)."""
    groups: dict[tuple[str, float, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["init"], row["fraction"], row["method"])].append(row)
    summary = []
    for (init, fraction, method), members in groups.items():
        entry: dict[str, Any] = {
            "init": init,
            "fraction": fraction,
            "method": method,
            "base_method": members[0]["base_method"],
            "setting": members[0]["setting"],
            "runs": len(members),
            "seeds": [member["seed"] for member in members],
        }
        entry.update({split: _mean_std(members, split) for split in SPLITS})
        entry["seconds"] = round(statistics.fmean(member["seconds"] for member in members), 1)
        summary.append(entry)
    return summary


def select(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (init, fraction, method): the setting with the best mean validation score."""
    groups: dict[tuple[str, float, str], list[dict[str, Any]]] = defaultdict(list)
    for entry in summary:
        if entry["setting"]:
            groups[(entry["init"], entry["fraction"], entry["base_method"])].append(entry)
    chosen = []
    for (init, fraction, method), entries in groups.items():
        scores = {
            ",".join(entry["setting"]): round(
                statistics.fmean(entry["val"][key] for key in SELECTION_KEYS), 2
            )
            for entry in entries
        }
        best = max(entries, key=lambda entry: scores[",".join(entry["setting"])])
        chosen.append(
            {
                "init": init,
                "fraction": fraction,
                "method": method,
                "metric": "mean of validation " + " and ".join(SELECTION_KEYS),
                "validation_scores": scores,
                "setting": best["setting"],
                "runs": best["runs"],
                "val": best["val"],
                "test": best["test"],
            }
        )
    return chosen


def run_method(
    args: argparse.Namespace,
    method: str,
    setting: tuple[str, ...],
    run: tuple[float, int, str],
    checkpoint: Path | None,
    extra_overrides: list[str],
) -> tuple[RunResult, dict[str, Any]]:
    """Fine-tune one method in one setting; its result and benchmark row (val and test)."""
    fraction, seed, init = run
    init_overrides = [f"checkpoint.path={checkpoint}"] if init == "ssl" else ["checkpoint=scratch"]
    config = compose_train_config(
        [
            f"experiment={args.experiment}",
            f"method={method}",
            f"data.fraction={fraction}",
            f"seed={seed}",
            f"data.split_seed={seed}",
            "trainer.progress_bar=false",
            *init_overrides,
            *extra_overrides,
            *args.overrides,
            *setting,
        ]
    )
    started = time.perf_counter()
    name = f"{method}{args.tag}"
    suffix = f"[{','.join(setting)}]" if setting else ""
    result = run_training(config, args.workdir / f"{init}_f{fraction}_s{seed}_{name}{suffix}")
    test = evaluate_on_grids(
        config, result.last_checkpoint, make_test_grids(digit_grid_config(config.data))
    )
    metrics = {"val": result.metrics, "test": test}
    return result, _row(name, setting, run, metrics, time.perf_counter() - started)


def benchmark_setting(
    args: argparse.Namespace, run: tuple[float, int, str], checkpoint: Path | None
) -> list[dict[str, Any]]:
    """Every method (and every --select setting of it) for one fraction, seed and init."""
    select_methods = set(args.select_methods or args.methods)
    rows: list[dict[str, Any]] = []
    runs: dict[tuple[str, tuple[str, ...]], RunResult] = {}
    for method in args.methods:
        for setting in args.settings if method in select_methods else [()]:
            teacher_setting = setting if args.teacher_method in select_methods else ()
            teacher_key = (args.teacher_method, teacher_setting)
            needed = [(method, setting)]
            if method in TEACHER_METHODS and teacher_key not in runs:
                needed.insert(0, teacher_key)
            for name, name_setting in needed:
                extra = []
                if name in TEACHER_METHODS:
                    extra = [f"distill.teacher_checkpoint={runs[teacher_key].last_checkpoint}"]
                result, row = run_method(args, name, name_setting, run, checkpoint, extra)
                runs[(name, name_setting)] = result
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    # The first method's config: the overrides may only be valid with it.
    base = compose_train_config(
        [
            f"experiment={args.experiment}",
            f"method={args.methods[0]}",
            "checkpoint=scratch",
            *args.overrides,
        ]
    )
    fractions = args.fractions or [base.data.fraction]
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        checkpoint = None
        for init in args.init:
            if init == "ssl" and checkpoint is None:
                spec = BackboneSpec(str(base.backbone.name), dict(base.backbone.kwargs))
                checkpoint = args.workdir / f"ssl_seed{seed}.pt"
                if not checkpoint.exists():
                    pretrain_digits_simclr(
                        checkpoint, spec, steps=args.pretrain_steps, seed=seed, progress_bar=False
                    )
            for fraction in fractions:
                run = (fraction, seed, init)
                if not args.no_trivial:
                    rows.extend(trivial_rows(replace(base.data, split_seed=seed), run))
                rows.extend(benchmark_setting(args, run, checkpoint))
    summary = summarise(rows)
    payload = {
        "command": sys.argv[1:] if argv is None else list(argv),
        "overrides": args.overrides,
        # Results depend on it: reduction order changes with the thread count, and MILe's
        # thresholded targets turn such rounding differences into different runs.
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
        "summary": summary,
        "selected": select(summary),
    }
    text = json.dumps(payload, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
