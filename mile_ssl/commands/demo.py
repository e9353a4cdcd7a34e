"""The embedded demo: SSL-pretrain on digit grids, fine-tune several ways, compare.

Runs offline on a laptop CPU: lightly's SimCLR pretrains a small ResNet on the digit
grids (paper App. A.1), then softmax, sigmoid and MILe fine-tune it with all labels,
which is where MILe's multi-label effect is clearest on this data. Two more rows use
the semi-supervised benchmark's setting (``experiment=digits_semi``, 10 % of the
labels): supervised MILe, and semi-supervised MILe, whose teacher also labels the other
90 % of the images for the student (paper Sec. 4.4).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mile_ssl.commands.pretrain import pretrain_digits_simclr
from mile_ssl.commands.train import run_training
from mile_ssl.config import SUPERVISED_METHODS, compose_train_config
from mile_ssl.networks.backbones import BackboneSpec
from mile_ssl.runs.report import format_metrics_table, plot_metrics, write_json

log = logging.getLogger(__name__)

PRETRAIN_STEPS = 300
QUICK_STEPS = 4
SEMI_SUPERVISED_EXPERIMENT = "digits_semi"


@dataclass(frozen=True)
class DemoRun:
    """One row of the demo table.

    Attributes:
        name: Row name in the table and ``results.json``.
        directory: Run directory under ``runs/``.
        overrides: Hydra overrides on top of the experiment.
        experiment: Experiment config the run starts from.
    """

    name: str
    directory: str
    overrides: tuple[str, ...]
    experiment: str = "digits"


DEMO_RUNS = (
    *(DemoRun(method, method, (f"method={method}",)) for method in SUPERVISED_METHODS),
    DemoRun("mile 10 %", "mile_10pct", ("method=mile",), SEMI_SUPERVISED_EXPERIMENT),
    DemoRun(
        "mile_semi 10 %",
        "mile_semi_10pct",
        ("method=mile_semi",),
        SEMI_SUPERVISED_EXPERIMENT,
    ),
)


def run_demo(output_dir: str | Path, *, quick: bool = False) -> dict[str, dict[str, float]]:
    """Run the demo and write ``results.json`` and ``results.png`` to ``output_dir``.

    Args:
        output_dir: Where checkpoints, runs and results go.
        quick: Run a handful of steps only (a smoke test of the whole pipeline).

    Returns:
        Final validation metrics per method.
    """
    output_dir = Path(output_dir)
    quick_overrides = (
        [
            "trainer.max_steps=4",
            "optim.warmup_steps=1",
            "mile.kt=1",
            "mile.ks=1",
            "data.digits.num_train=512",
            "data.digits.num_val=128",
            "data.batch_size=64",
            "trainer.val_every_n_steps=null",
        ]
        if quick
        else []
    )
    base = compose_train_config(["experiment=digits", "checkpoint=scratch", *quick_overrides])
    spec = BackboneSpec(str(base.backbone.name), dict(base.backbone.kwargs))
    log.info("pretraining %s with SimCLR (lightly) on the digit grids", spec.name)
    checkpoint = pretrain_digits_simclr(
        output_dir / "ssl_checkpoint.pt",
        spec,
        steps=QUICK_STEPS if quick else PRETRAIN_STEPS,
        batch_size=64 if quick else 256,
        seed=base.data.split_seed,
    )
    results: dict[str, dict[str, float]] = {}
    for run in DEMO_RUNS:
        # The quick run's 512 grids hold about 51 labelled ones at 10 %: smaller batches.
        fractional = quick and run.experiment == SEMI_SUPERVISED_EXPERIMENT
        config = compose_train_config(
            [
                f"experiment={run.experiment}",
                f"checkpoint.path={checkpoint}",
                *run.overrides,
                *quick_overrides,
                *(["data.batch_size=16"] if fractional else []),
            ]
        )
        log.info("fine-tuning: %s", run.name)
        results[run.name] = run_training(config, output_dir / "runs" / run.directory).metrics
    table = format_metrics_table(results)
    print(
        "\nDigit grids, fine-tuned from the SimCLR checkpoint (100 % labels unless marked; "
        f"the 10 % rows use experiment={SEMI_SUPERVISED_EXPERIMENT}):\n" + table
    )
    write_json(output_dir / "results.json", results)
    plot_metrics(output_dir / "results.png", results, title="digit grids")
    print(f"\nresults: {output_dir / 'results.json'}, figure: {output_dir / 'results.png'}")
    return results
