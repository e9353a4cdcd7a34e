"""``mile-ssl``: the command line. Parsing only; the work happens in the modules it calls.

``mile-ssl train [hydra overrides]`` fine-tunes (``-m`` sweeps work as in any Hydra
app); ``mile-ssl demo`` runs the embedded digit-grid demo end to end.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from mile_ssl.atomic_files import write_text_atomically
from mile_ssl.config import register_configs, to_train_config
from mile_ssl.config.overrides import normalise_overrides, overrides_first
from mile_ssl.runs.failed_start import (
    record_job_folder,
    recording_run_folders,
    undone_if_start_fails,
)
from mile_ssl.runs.layout import keep_run_records, register_run_name_resolver
from mile_ssl.runs.lock import holding_named_run_folder
from mile_ssl.solo.command_line import expand_solo_command, expand_solo_recipe
from mile_ssl.usage import split_command
from mile_ssl.user_errors import (
    EXIT_SIGINT,
    EXIT_USER_ERROR,
    exit_on_user_error,
    holding_interrupts,
    interrupt_without_traceback,
    release_interrupts,
)

EXIT_PREEMPTED = 143
"""Exit status of a run stopped by a scheduler's signal (SIGTERM, SIGUSR1, SIGUSR2) after
saving its resumable checkpoint: 128 + SIGTERM, what a job killed by SIGTERM reports, so
that a scheduler or script never reads a preempted run as a finished one."""


@hydra.main(config_path="pkg://mile_ssl.configs", config_name="config", version_base="1.3")
def _train(config: DictConfig) -> None:
    hydra_config = HydraConfig.get()
    output_dir = Path(hydra_config.runtime.output_dir)
    record_job_folder(hydra_config)
    with exit_on_user_error("train"):
        release_interrupts()
        # Imported here, where a Ctrl-C during the seconds they take still removes the
        # run folder Hydra has just made (mile_ssl.runs.failed_start).
        from mile_ssl.commands.train import run_training
        from mile_ssl.runs.guard import RunInterruptedError
        from mile_ssl.runs.report import format_metrics_table

        train_config = to_train_config(config)
        # Hydra already logs to the console and the run's log file; Lightning's own console
        # handler would print every Lightning message twice.
        logging.getLogger("lightning.pytorch").handlers.clear()
        try:
            result = run_training(train_config, output_dir)
        except RunInterruptedError as stop:
            _print_on_rank_zero(stop.resume_message(hydra_config.overrides.task, output_dir))
            raise SystemExit(EXIT_PREEMPTED if stop.preempted else EXIT_SIGINT) from None
    _print_on_rank_zero(format_metrics_table({train_config.method.name: result.metrics}))
    _print_on_rank_zero(f"run directory: {result.output_dir}")


@rank_zero_only
def _print_on_rank_zero(text: str) -> None:
    print(text)


def _demo(argv: Sequence[str]) -> None:
    """Pretrain on the embedded digit grids with lightly, fine-tune, print the comparison."""
    from mile_ssl.commands.demo import run_demo

    parser = _command_parser(
        "demo",
        _demo.__doc__,
        "mile-ssl demo --out demo_output",
    )
    parser.add_argument("--out", default="demo_output", help="output directory")
    parser.add_argument("--quick", action="store_true", help="a few steps only (smoke test)")
    args = parser.parse_args(argv)
    run_demo(args.out, quick=args.quick)


def _from_solo(argv: Sequence[str]) -> None:
    """Translate a solo-learn recipe into a mile_ssl config file."""
    from omegaconf import OmegaConf

    from mile_ssl.config import compose_train_config

    parser = _command_parser(
        "from-solo",
        _from_solo.__doc__,
        "mile-ssl from-solo scripts/linear/imagenet/byol.yaml "
        "pretrained_feature_extractor=byol.ckpt data.train_path=/data/imagenet/train "
        "data.val_path=/data/imagenet/val --out byol_mile.yaml",
    )
    parser.add_argument("recipe", type=Path, help="solo-learn linear or fine-tune YAML")
    parser.add_argument(
        "overrides", nargs="*", help="solo-learn or mile_ssl overrides, as for mile-ssl train"
    )
    parser.add_argument("--out", type=Path, help="where to write (default: RECIPE.mile.yaml)")
    args = parser.parse_intermixed_args(argv)
    command = expand_solo_command(args.recipe, args.overrides, require_checkpoint=False)
    config = compose_train_config(command.arguments)
    out = args.out or args.recipe.with_suffix(".mile.yaml")
    body = OmegaConf.to_yaml(OmegaConf.structured(config))
    unset = (
        "" if config.checkpoint.path else "# checkpoint.path is unset: add checkpoint.path=FILE\n"
    )
    write_text_atomically(
        out,
        f"# Translated from the solo-learn recipe {args.recipe}\n"
        "# Run: mile-ssl train --config-dir <this folder> --config-name <this file>\n"
        f"{unset}defaults:\n  - base_config\n  - _self_\n\n{body}",
    )
    print(f"mapping of {args.recipe}:\n{command.translation.report()}")
    for warning in command.translation.warnings:
        print(f"warning: {warning}")
    print(f"wrote {out}")


def _inspect(argv: Sequence[str]) -> None:
    """Describe a checkpoint: format, architecture, kept and dropped keys, preprocessing."""
    from mile_ssl.adapters.inspect import describe_checkpoint, format_description
    from mile_ssl.networks.backbones import BackboneSpec
    from mile_ssl.runs.report import json_text

    parser = _command_parser(
        "inspect",
        _inspect.__doc__,
        "mile-ssl inspect moco_v2_800ep_pretrain.pth.tar",
        "mile-ssl inspect trained_models/byol/RUN_ID --json",
    )
    parser.add_argument("path", type=Path, help="checkpoint file or solo-learn run folder")
    parser.add_argument("--adapter", default="auto", help="adapter name (default: detect)")
    parser.add_argument("--backbone", help="architecture, when the file does not state it")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    backbone = BackboneSpec(args.backbone) if args.backbone else None
    description = describe_checkpoint(args.path, adapter=args.adapter, backbone=backbone)
    print(json_text(description) if args.json else format_description(description))


def _command_parser(
    command: str, description: str | None, *examples: str
) -> argparse.ArgumentParser:
    """A subcommand's parser, its ``--help`` ending with examples."""
    label = "example" if len(examples) == 1 else "examples"
    return argparse.ArgumentParser(
        prog=f"mile-ssl {command}",
        description=description,
        epilog=f"{label}:\n" + "\n".join(f"  {example}" for example in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _split_checkpoint(
    parser: argparse.ArgumentParser, items: Sequence[str]
) -> tuple[Path, list[str]]:
    """Take ``checkpoint=PATH`` out of the positional ``items``."""
    paths = [item.split("=", 1)[1] for item in items if item.startswith("checkpoint=")]
    if len(paths) != 1 or not paths[0]:
        parser.error("give exactly one checkpoint=PATH (a run's .ckpt file or run folder)")
    return Path(paths[0]), [item for item in items if not item.startswith("checkpoint=")]


def _eval(argv: Sequence[str]) -> None:
    """All metrics of a run on its validation set or the data given, input sized as trained."""
    from mile_ssl.commands.eval_report import eval_command_result, format_eval_result
    from mile_ssl.runs.report import json_text

    parser = _command_parser(
        "eval",
        _eval.__doc__,
        "mile-ssl eval checkpoint=runs/DATE/TIME/checkpoints/last.ckpt "
        "data=imagenet data.root=/data/imagenet",
    )
    parser.add_argument(
        "items", nargs="+", metavar="checkpoint=PATH [DATA OVERRIDES]", help="run and data"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_intermixed_args(argv)
    checkpoint, overrides = _split_checkpoint(parser, args.items)
    foreign = [item for item in overrides if not item.lstrip("+~").startswith(("data.", "data="))]
    if foreign:
        parser.error(
            f"{foreign}: eval takes the method, backbone and preprocessing from the run's "
            "checkpoint; only data overrides (data=..., data.KEY=...) apply"
        )
    result = eval_command_result(checkpoint, overrides=overrides)
    print(json_text(result) if args.json else format_eval_result(result))


def _predict(argv: Sequence[str]) -> None:
    """Multi-label predictions for images or folders of images."""
    from mile_ssl.commands.predict import format_predictions, predict, prediction_failures
    from mile_ssl.runs.report import json_text

    parser = _command_parser(
        "predict",
        _predict.__doc__,
        "mile-ssl predict photo.jpg photos/ checkpoint=runs/DATE/TIME/checkpoints/last.ckpt",
    )
    parser.add_argument(
        "items", nargs="+", metavar="IMAGE_OR_FOLDER... checkpoint=PATH", help="inputs and run"
    )
    parser.add_argument("--threshold", type=float, default=0.5, help="sigmoid threshold")
    parser.add_argument("--top-k", type=int, default=5, help="classes listed per image")
    parser.add_argument("--image-size", type=int, default=None, help="evaluation crop size")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_intermixed_args(argv)
    checkpoint, inputs = _split_checkpoint(parser, args.items)
    if not inputs:
        parser.error("give at least one image file or folder")
    results = predict(
        checkpoint,
        inputs,
        threshold=args.threshold,
        top_k=args.top_k,
        image_size=args.image_size,
    )
    failures = prediction_failures(results)
    for path, reason in failures:
        print(f"mile-ssl predict: {path}: {reason}", file=sys.stderr)
    print(json_text(results) if args.json else format_predictions(results))
    if failures:
        # Bad input, as everywhere else: the readable inputs' predictions are printed first.
        raise SystemExit(EXIT_USER_ERROR)


def _export(argv: Sequence[str]) -> None:
    """Write the fine-tuned student as plain weights for torchvision / timm / safetensors."""
    from mile_ssl.commands.export import FORMATS, export_checkpoint

    parser = _command_parser(
        "export",
        _export.__doc__,
        "mile-ssl export checkpoint=runs/DATE/TIME/checkpoints/last.ckpt --out exported",
    )
    parser.add_argument("items", nargs="+", metavar="checkpoint=PATH", help="the run")
    parser.add_argument("--out", type=Path, default=Path("export"), help="output folder")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--image-size", type=int, default=None, help="evaluation crop size")
    args = parser.parse_intermixed_args(argv)
    checkpoint, rest = _split_checkpoint(parser, args.items)
    if rest:
        parser.error(f"unexpected arguments {rest}")
    written = export_checkpoint(checkpoint, args.out, args.formats, image_size=args.image_size)
    for kind, path in written.items():
        print(f"{kind:12} {path}")


def _check_data(argv: Sequence[str]) -> None:
    """Find unreadable images in a dataset before training (a cached scan)."""
    from mile_ssl.config import compose_train_config
    from mile_ssl.data.integrity import check_data_report

    parser = _command_parser(
        "check-data",
        _check_data.__doc__,
        "mile-ssl check-data data=imagenet data.root=/data/imagenet",
        "mile-ssl check-data --decode data=imagenet data.root=/data/imagenet",
    )
    parser.add_argument("overrides", nargs="+", metavar="DATA OVERRIDES", help="as for train")
    parser.add_argument(
        "--decode",
        action="store_true",
        help="decode every file in full, as training does (slower). Without it, only "
        "headers and end markers are read, which misses damage inside files that look "
        "complete: corrupt PNG or JPEG data, a file cut off and given a new end marker",
    )
    args = parser.parse_intermixed_args(argv)
    data = compose_train_config(["checkpoint=scratch", *args.overrides]).data
    text, status = check_data_report(data, decode=args.decode)
    print(text)
    if status:
        raise SystemExit(status)


def _checkpoints(argv: Sequence[str]) -> None:
    """List the public SSL checkpoints known by name, or download one."""
    from mile_ssl import public_checkpoints as catalogue

    parser = _command_parser(
        "checkpoints",
        _checkpoints.__doc__,
        "mile-ssl checkpoints",
        "mile-ssl checkpoints --download mocov2_800ep",
        "mile-ssl checkpoints --download mocov2_800ep --force",
        "mile-ssl train checkpoint.name=mocov2_800ep experiment=imagenet/mocov2_1pct "
        "data.root=/data/imagenet",
    )
    parser.add_argument("--download", metavar="NAME", help="fetch (or check) NAME into the cache")
    parser.add_argument("--force", action="store_true", help=catalogue.FORCE_HELP)
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    if args.force and not args.download:
        parser.error("--force goes with --download NAME")
    if args.download:
        print(catalogue.resolve_public_checkpoint(args.download, force=args.force))
        return
    print(catalogue.format_public_checkpoints(as_json=args.json))


def main(argv: Sequence[str] | None = None) -> None:
    """Dispatch ``mile-ssl COMMAND``."""
    command, rest = split_command(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with exit_on_user_error(command), interrupt_without_traceback(command):
        if command == "train":
            # Hydra reports composition errors itself, with exit status 1; this lets them
            # reach exit_on_user_error like every other user error.
            os.environ["HYDRA_FULL_ERROR"] = "1"
            register_configs()
            register_run_name_resolver()
            overrides = keep_run_records(normalise_overrides(expand_solo_recipe(rest)))
            overrides = recording_run_folders(overrides)
            sys.argv = [sys.argv[0], *overrides_first(overrides)]
            with (
                undone_if_start_fails(overrides),
                holding_named_run_folder(overrides),
                holding_interrupts(),
            ):
                _train()
        else:
            COMMAND_FUNCTIONS[command](rest)


COMMAND_FUNCTIONS: dict[str, Callable[[Sequence[str]], None]] = {
    "checkpoints": _checkpoints,
    "check-data": _check_data,
    "demo": _demo,
    "from-solo": _from_solo,
    "inspect": _inspect,
    "eval": _eval,
    "predict": _predict,
    "export": _export,
}
