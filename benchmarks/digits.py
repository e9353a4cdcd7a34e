"""Digit-grid benchmark: softmax vs sigmoid vs MILe (paper App. A.1), printed as JSON.

One row per run (method, label fraction, seed, initialisation) plus two trivial
reference rows per setting, "predict all classes" and "predict the k most frequent
classes": on this data F1 rewards over-prediction, so an F1 gain only counts next to
top-1, ReaL accuracy and mAP.

    python benchmarks/digits.py --fractions 1.0 0.1 --seeds 0 1 2 --init ssl scratch \
        --out digits.json

Semi-supervised rows (paper Sec. 4.4): ``mile_semi`` and the baselines ``distill`` and
``self_train``, whose fixed teacher is the ``--teacher-method`` run of the same seed,
fraction and initialisation (trained first when it is not in ``--methods``):

    python benchmarks/digits.py --experiment digits_semi --init scratch \
        --methods softmax sigmoid mile distill self_train
    python benchmarks/digits.py --experiment digits_semi --init scratch \
        --methods mile_semi --tag "[unlabeled_weight=1]" --no-trivial mile.unlabeled_weight=1
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from mile_ssl.backbones import BackboneSpec
from mile_ssl.config import TEACHER_METHODS, compose_train_config
from mile_ssl.data.digits import DigitGridConfig, make_digit_grids
from mile_ssl.metrics import classification_report
from mile_ssl.pretrain import pretrain_digits_simclr
from mile_ssl.train import RunResult, run_training

METRIC_KEYS = (
    "f1@0.25",
    "f1@0.5",
    "precision@0.25",
    "recall@0.25",
    "top1",
    "real_acc",
    "real_f1",
    "coverage",
    "map",
)


def parse_args() -> argparse.Namespace:
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
        default=None,
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
    return parser.parse_args()


def trivial_rows(seed: int, fraction: float, init: str) -> list[dict[str, Any]]:
    """Reference predictors that ignore the image."""
    train, val = make_digit_grids(DigitGridConfig(seed=seed))
    num_classes = val.label_sets.shape[1]
    rows = []
    predict_all = torch.full((len(val), num_classes), 10.0)
    predict_all[:, 0] += 1.0  # an argmax is required; any fixed class is as good
    frequency = torch.bincount(train.labels, minlength=num_classes).float()
    k = round(float(train.label_sets.sum(dim=1).float().mean()))
    top_k = frequency.argsort(descending=True)[:k]
    predict_frequent = torch.full((len(val), num_classes), -10.0)
    predict_frequent[:, top_k] = 10.0 - torch.arange(k, dtype=torch.float32) * 0.1
    for name, scores in (
        ("predict_all", predict_all),
        (f"predict_top{k}_frequent", predict_frequent),
    ):
        report = classification_report(scores, val.labels, val.label_sets, multi_label=True)
        rows.append(_row(name, fraction, seed, init, report, 0.0))
    return rows


def _row(
    method: str, fraction: float, seed: int, init: str, metrics: dict[str, float], seconds: float
) -> dict[str, Any]:
    row: dict[str, Any] = {"method": method, "fraction": fraction, "seed": seed, "init": init}
    row.update(
        {key: 100 * metrics[key] if key != "coverage" else metrics[key] for key in METRIC_KEYS}
    )
    row["seconds"] = round(seconds, 1)
    return row


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, float, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["init"], row["fraction"], row["method"])].append(row)
    summary = []
    for (init, fraction, method), members in groups.items():
        entry: dict[str, Any] = {
            "init": init,
            "fraction": fraction,
            "method": method,
            "runs": len(members),
        }
        for key in (*METRIC_KEYS, "seconds"):
            values = [member[key] for member in members if not math.isnan(member[key])]
            entry[key] = round(statistics.fmean(values), 2) if values else float("nan")
            entry[f"{key}_std"] = round(statistics.pstdev(values), 2) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def run_method(
    args: argparse.Namespace,
    method: str,
    fraction: float,
    seed: int,
    init: str,
    checkpoint: Path | None,
    extra_overrides: list[str],
) -> tuple[RunResult, dict[str, Any]]:
    """Fine-tune one method in one setting; its result and benchmark row."""
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
        ]
    )
    started = time.perf_counter()
    name = f"{method}{args.tag}"
    result = run_training(config, args.workdir / f"{init}_f{fraction}_s{seed}_{name}")
    row = _row(name, fraction, seed, init, result.metrics, time.perf_counter() - started)
    return result, row


def main() -> None:
    args = parse_args()
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
                if not args.no_trivial:
                    rows.extend(trivial_rows(seed, fraction, init))
                runs: dict[str, RunResult] = {}
                for method in args.methods:
                    needed = [method]
                    if method in TEACHER_METHODS and args.teacher_method not in runs:
                        needed.insert(0, args.teacher_method)
                    for name in needed:
                        teacher = runs.get(args.teacher_method)
                        extra = (
                            [f"distill.teacher_checkpoint={teacher.last_checkpoint}"]
                            if (name in TEACHER_METHODS and teacher is not None)
                            else []
                        )
                        result, row = run_method(
                            args, name, fraction, seed, init, checkpoint, extra
                        )
                        runs[name] = result
                        rows.append(row)
                        print(json.dumps(row), file=sys.stderr, flush=True)
    payload = {
        "overrides": args.overrides,
        # Results depend on it: reduction order changes with the thread count, and MILe's
        # thresholded targets turn such rounding differences into different runs.
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
        "summary": summarise(rows),
    }
    text = json.dumps(payload, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
