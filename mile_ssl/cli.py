"""``mile-ssl``: the command line. Parsing only; the work happens in the modules it calls.

``mile-ssl train [hydra overrides]`` fine-tunes (``-m`` sweeps work as in any Hydra
app); ``mile-ssl demo`` runs the embedded digit-grid demo end to end.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from mile_ssl.config import register_configs, to_train_config

log = logging.getLogger("mile_ssl")

COMMANDS = ("train", "demo")

USAGE = """usage: mile-ssl COMMAND [ARGS]

commands:
  train [OVERRIDES]   fine-tune with Hydra overrides, e.g.
                      mile-ssl train checkpoint.path=ssl.pt method=mile data.fraction=0.1
                      mile-ssl train --help shows the config groups
  demo [--out DIR]    pretrain on the digit grids with lightly, fine-tune softmax,
                      sigmoid and MILe, print the comparison table
"""


@hydra.main(config_path="pkg://mile_ssl.configs", config_name="config", version_base="1.3")
def _train(config: DictConfig) -> None:
    from mile_ssl.report import format_metrics_table
    from mile_ssl.train import run_training

    try:
        train_config = to_train_config(config)
    except ValueError as error:
        log.error("invalid configuration: %s", error)
        raise SystemExit(2) from error
    # Hydra already logs to the console and the run's log file; Lightning's own console
    # handler would print every Lightning message twice.
    logging.getLogger("lightning.pytorch").handlers.clear()
    output_dir = HydraConfig.get().runtime.output_dir
    result = run_training(train_config, output_dir)
    _print_on_rank_zero(format_metrics_table({train_config.method.name: result.metrics}))
    _print_on_rank_zero(f"run directory: {result.output_dir}")


@rank_zero_only
def _print_on_rank_zero(text: str) -> None:
    print(text)


def _demo(argv: Sequence[str]) -> None:
    from mile_ssl.demo import run_demo

    parser = argparse.ArgumentParser(prog="mile-ssl demo", description=_demo.__doc__)
    parser.add_argument("--out", default="demo_output", help="output directory")
    parser.add_argument("--quick", action="store_true", help="a few steps only (smoke test)")
    args = parser.parse_args(argv)
    run_demo(args.out, quick=args.quick)


def main(argv: Sequence[str] | None = None) -> None:
    """Dispatch ``mile-ssl COMMAND``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = args[0], args[1:]
    if command not in COMMANDS and "LOCAL_RANK" in os.environ:
        # Lightning's DDP launcher restarts this program for ranks > 0 with
        # sys.argv[1:] of the "train" call, which no longer holds the command word.
        command, rest = "train", args
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if command == "train":
        register_configs()
        sys.argv = [sys.argv[0], *rest]
        _train()
    elif command == "demo":
        _demo(rest)
    else:
        print(f"mile-ssl: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
