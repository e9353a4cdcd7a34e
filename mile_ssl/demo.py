"""The embedded demo: SSL-pretrain on digit grids, fine-tune three ways, compare.

Runs offline on a laptop CPU: lightly's SimCLR pretrains a small ResNet on the digit
grids (paper App. A.1), then softmax, sigmoid and MILe fine-tune it with all labels,
which is where MILe's multi-label effect is clearest on this data.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mile_ssl.backbones import BackboneSpec
from mile_ssl.config import SUPERVISED_METHODS, compose_train_config
from mile_ssl.pretrain import pretrain_digits_simclr
from mile_ssl.report import format_metrics_table, plot_metrics, write_json
from mile_ssl.train import run_training

log = logging.getLogger(__name__)

PRETRAIN_STEPS = 300
QUICK_STEPS = 4


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
    for method in SUPERVISED_METHODS:
        config = compose_train_config(
            [
                "experiment=digits",
                f"method={method}",
                f"checkpoint.path={checkpoint}",
                *quick_overrides,
            ]
        )
        log.info("fine-tuning with %s", method)
        results[method] = run_training(config, output_dir / "runs" / method).metrics
    table = format_metrics_table(results)
    print("\nDigit grids, 100 % labels, fine-tuned from the SimCLR checkpoint:\n" + table)
    write_json(output_dir / "results.json", results)
    plot_metrics(output_dir / "results.png", results, title="digit grids, 100 % labels")
    print(f"\nresults: {output_dir / 'results.json'}, figure: {output_dir / 'results.png'}")
    return results
