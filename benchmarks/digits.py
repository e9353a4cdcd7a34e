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
``--wide-teacher KEY=VALUE`` (repeatable, e.g. ``backbone.kwargs.widths=[32,64,128]``)
adds SimCLR-v2's distillation from a larger network: a second teacher with those
overrides (from its own SSL pretraining under ``--init ssl``) and a ``<method>_wide`` row
for each teacher method (or those of ``--wide-methods``). ``--from-teacher METHOD``
adds a ``<method>_from_teacher`` row whose network starts from the teacher run's backbone
(a new head), as SimCLR-v2's distillation student can, instead of the initialisation.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from digits_summary import METRIC_KEYS, SPLITS, report
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
    parser.add_argument(
        "--wide-teacher",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="overrides of a larger teacher for <method>_wide rows of distill/self_train",
    )
    parser.add_argument(
        "--wide-methods",
        nargs="+",
        help="the teacher methods that get a <method>_wide row (default: all in --methods)",
    )
    parser.add_argument(
        "--from-teacher",
        nargs="+",
        default=[],
        metavar="METHOD",
        help="methods that also run from the --teacher-method run's backbone (a new head) "
        "instead of the initialisation, as <method>_from_teacher rows",
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


def run_method(
    args: argparse.Namespace,
    method: str,
    setting: tuple[str, ...],
    run: tuple[float, int, str],
    checkpoint: Path | None,
    extra_overrides: list[str],
    label: str | None = None,
    start_from: Path | None = None,
) -> tuple[RunResult, dict[str, Any]]:
    """Fine-tune one method in one setting; its result and benchmark row (val and test).

    ``label`` names the row and run folder instead of the method (``distill_wide``);
    ``start_from`` is a finished run's checkpoint whose network replaces the
    initialisation (its head is dropped).
    """
    fraction, seed, init = run
    init_overrides = [f"checkpoint.path={checkpoint}"] if init == "ssl" else ["checkpoint=scratch"]
    if start_from is not None:
        init_overrides = [f"checkpoint.path={start_from}"]
    config = compose_train_config(
        [
            f"experiment={args.experiment}",
            f"method={method}",
            f"data.fraction={fraction}",
            f"seed={seed}",
            f"data.split_seed={seed}",
            "trainer.progress_bar=false",
            *init_overrides,
            *args.overrides,
            # After the common overrides: the larger teacher's network replaces theirs.
            *extra_overrides,
            *setting,
        ]
    )
    started = time.perf_counter()
    name = f"{label or method}{args.tag}"
    suffix = f"[{','.join(setting)}]" if setting else ""
    result = run_training(config, args.workdir / f"{init}_f{fraction}_s{seed}_{name}{suffix}")
    test = evaluate_on_grids(
        config, result.last_checkpoint, make_test_grids(digit_grid_config(config.data))
    )
    metrics = {"val": result.metrics, "test": test}
    return result, _row(name, setting, run, metrics, time.perf_counter() - started)


WIDE = "_wide"
"""Suffix of the larger teacher's runs and of the rows distilled from it."""
FROM_TEACHER = "_from_teacher"
"""Suffix of the rows whose network starts from the teacher run's backbone."""


def benchmark_setting(
    args: argparse.Namespace,
    run: tuple[float, int, str],
    checkpoint: Path | None,
    wide_checkpoint: Path | None = None,
) -> list[dict[str, Any]]:
    """Every method (and every --select setting of it) for one fraction, seed and init.

    Teachers are trained once and reused: the ``--teacher-method`` run of the setting
    and, with ``--wide-teacher``, the same method with the larger network (initialised
    from ``wide_checkpoint``).
    """
    select_methods = set(args.select_methods or args.methods)
    rows: list[dict[str, Any]] = []
    runs: dict[tuple[str, tuple[str, ...]], RunResult] = {}

    def train(
        name: str,
        setting: tuple[str, ...],
        teacher: RunResult | None,
        wide: bool = False,
        start_from: RunResult | None = None,
    ) -> RunResult:
        extra = [f"distill.teacher_checkpoint={teacher.last_checkpoint}"] if teacher else []
        if wide and name not in TEACHER_METHODS:
            extra += args.wide_teacher
        label = f"{name}{WIDE}" if wide else name
        label += FROM_TEACHER if start_from else ""
        init_checkpoint = wide_checkpoint if wide and name not in TEACHER_METHODS else checkpoint
        # A run's last.ckpt is a starting point of its own (the mile_ssl_run adapter).
        start = start_from.last_checkpoint if start_from else None
        result, row = run_method(args, name, setting, run, init_checkpoint, extra, label, start)
        runs[(label, setting)] = result
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        return result

    def teacher(setting: tuple[str, ...], wide: bool) -> RunResult:
        teacher_setting = setting if args.teacher_method in select_methods else ()
        label = f"{args.teacher_method}{WIDE if wide else ''}"
        known = runs.get((label, teacher_setting))
        return known or train(args.teacher_method, teacher_setting, None, wide)

    for method in args.methods:
        for setting in args.settings if method in select_methods else [()]:
            if method in args.from_teacher:
                fixed = teacher(setting, wide=False)
                train(method, setting, fixed if method in TEACHER_METHODS else None, False, fixed)
            if method not in TEACHER_METHODS:
                if (method, setting) not in runs:
                    train(method, setting, None)
                continue
            train(method, setting, teacher(setting, wide=False))
            if args.wide_teacher and method in (args.wide_methods or args.methods):
                train(method, setting, teacher(setting, wide=True), wide=True)
    return rows


def ssl_checkpoint(args: argparse.Namespace, config: TrainConfig, seed: int, suffix: str) -> Path:
    """The SimCLR-pretrained backbone of ``config``'s network for ``seed`` (made once)."""
    spec = BackboneSpec(str(config.backbone.name), dict(config.backbone.kwargs))
    checkpoint = args.workdir / f"ssl_seed{seed}{suffix}.pt"
    if not checkpoint.exists():
        pretrain_digits_simclr(
            checkpoint, spec, steps=args.pretrain_steps, seed=seed, progress_bar=False
        )
    return checkpoint


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    # The first method's config: the overrides may only be valid with it.
    base_overrides = [
        f"experiment={args.experiment}",
        f"method={args.methods[0]}",
        "checkpoint=scratch",
        *args.overrides,
    ]
    base = compose_train_config(base_overrides)
    fractions = args.fractions or [base.data.fraction]
    rows: list[dict[str, Any]] = []
    wide = (
        compose_train_config([*base_overrides, *args.wide_teacher]) if args.wide_teacher else None
    )
    for seed in args.seeds:
        checkpoint = wide_checkpoint = None
        for init in args.init:
            if init == "ssl" and checkpoint is None:
                checkpoint = ssl_checkpoint(args, base, seed, "")
                if wide is not None:
                    wide_checkpoint = ssl_checkpoint(args, wide, seed, WIDE)
            for fraction in fractions:
                run = (fraction, seed, init)
                if not args.no_trivial:
                    rows.extend(trivial_rows(replace(base.data, split_seed=seed), run))
                rows.extend(benchmark_setting(args, run, checkpoint, wide_checkpoint))
    payload = report(
        rows,
        command=sys.argv[1:] if argv is None else list(argv),
        overrides=args.overrides,
        torch_threads=torch.get_num_threads(),
    )
    text = json.dumps(payload, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
