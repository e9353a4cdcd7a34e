"""The embedded demo: SSL-pretrain on digit grids, fine-tune several ways, compare.

Runs offline on a laptop CPU: lightly's SimCLR pretrains a small ResNet on the digit
grids (paper App. A.1), then softmax, sigmoid and MILe fine-tune it with all labels,
which is where MILe's multi-label effect is clearest on this data. Two more rows use
the semi-supervised benchmark's setting (``experiment=digits_semi``, 10 % of the
labels): supervised MILe, and semi-supervised MILe, whose teacher also labels the other
90 % of the images for the student (paper Sec. 4.4).

The figure shows the table's percentages as bars and, below them, what the methods
predict for a few validation grids: each run's predicted label set against the digits
the grid shows, also written to ``examples.json``. A softmax network names one digit per
grid; the multi-label ones name several, which is what MILe recovers from one label.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mile_ssl.atomic_files import write_with
from mile_ssl.commands.pretrain import pretrain_digits_simclr
from mile_ssl.commands.train import run_training
from mile_ssl.config import SUPERVISED_METHODS, DataConfig, compose_train_config
from mile_ssl.data.digits import CLASS_NAMES, GRID_SIDE, DigitGridDataset
from mile_ssl.data.sources import validation_set
from mile_ssl.extras import extra_imports
from mile_ssl.metrics.sets import predicted_sets
from mile_ssl.networks.backbones import BackboneSpec
from mile_ssl.runs.finished_run import read_finished_run
from mile_ssl.runs.report import draw_metric_bars, format_metrics_table, write_json

# The figure is drawn last, after minutes of training: a missing matplotlib stops the
# demo before it starts (lightly and scikit-learn stop it there by themselves).
with extra_imports("demo", "mile-ssl demo"):
    import matplotlib  # noqa: F401

log = logging.getLogger(__name__)

PRETRAIN_STEPS = 300
QUICK_STEPS = 4
SEMI_SUPERVISED_EXPERIMENT = "digits_semi"
EXAMPLE_GRIDS = 4
"""Validation grids whose predicted label sets the figure shows: the first ones."""
EXAMPLES_FILE = "examples.json"


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
    """Run the demo; write ``results.json``, ``examples.json`` and ``results.png``.

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
    checkpoints: dict[str, Path] = {}
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
        finished = run_training(config, output_dir / "runs" / run.directory)
        results[run.name] = finished.metrics
        checkpoints[run.name] = finished.last_checkpoint
    table = format_metrics_table(results)
    print(
        "\nDigit grids, fine-tuned from the SimCLR checkpoint (100 % labels unless marked; "
        f"the 10 % rows use experiment={SEMI_SUPERVISED_EXPERIMENT}):\n" + table
    )
    write_json(output_dir / "results.json", results)
    # Every run validates on the same grids: the digit settings and seed are shared.
    examples, grids = example_predictions(checkpoints, base.data)
    write_json(output_dir / EXAMPLES_FILE, examples)
    figure = demo_figure(results, examples, grids)
    write_with(output_dir / "results.png", lambda file: figure.savefig(file, format="png", dpi=120))
    print(f"\nresults: {output_dir / 'results.json'}, figure: {output_dir / 'results.png'}")
    return results


def example_predictions(
    checkpoints: Mapping[str, Path], data: DataConfig, count: int = EXAMPLE_GRIDS
) -> tuple[list[dict[str, Any]], DigitGridDataset]:
    """Each run's predicted label set for the first ``count`` validation grids.

    Sets are predicted as validation scores them (:func:`predicted_sets` at the run's
    ``method.eval_threshold``), so they are the sets behind the table's ReaL numbers.

    Args:
        checkpoints: Final checkpoint of each run, by row name.
        data: The digit-grid settings every run validated with.
        count: Grids to show.

    Returns:
        One entry per grid (``index``; ``cells``, its digits row by row; ``digits``,
        the set it shows; ``label``, its single label; ``predicted``, each run's set),
        and the validation grids.
    """
    predicted: dict[str, list[list[int]]] = {}
    dataset: DigitGridDataset | None = None
    for name, checkpoint in checkpoints.items():
        run = read_finished_run(checkpoint)
        module = run.build_module().eval()
        found = validation_set(data, run.preprocessing)
        assert isinstance(found, DigitGridDataset), "the demo validates on digit grids"
        dataset = found
        shown = range(min(count, len(dataset)))
        images = torch.stack([dataset[index]["image"] for index in shown])
        with torch.inference_mode():
            logits = module(images).float()
        sets = predicted_sets(logits, module.method.eval_threshold, module.multi_label)
        predicted[name] = [torch.nonzero(row).flatten().tolist() for row in sets]
    if dataset is None:
        raise ValueError("no run to show predictions of")
    grids = dataset.grids
    examples = [
        {
            "index": index,
            "cells": grids.cells[index].view(GRID_SIDE, GRID_SIDE).tolist(),
            "digits": torch.nonzero(grids.label_sets[index]).flatten().tolist(),
            "label": int(grids.labels[index]),
            "predicted": {name: sets[index] for name, sets in predicted.items()},
        }
        for index in range(len(next(iter(predicted.values()))))
    ]
    return examples, dataset


HIT, WRONG, MISSED = (0.20, 0.63, 0.17), (0.89, 0.10, 0.11), (0.80, 0.92, 0.77)
"""Prediction panel colours: predicted and shown, predicted not shown, shown not predicted."""


def demo_figure(
    results: Mapping[str, Mapping[str, float]],
    examples: Sequence[Mapping[str, Any]],
    grids: DigitGridDataset,
) -> Any:
    """The demo's figure: the metric bars over a panel of predicted label sets.

    Under the bars, one column per example grid: the grid itself, then a run-by-digit
    table whose coloured cells are the run's predicted set; digits the grid shows are
    bold and green, predicted or not.

    Args:
        results: Metrics per run (the bars).
        examples: :func:`example_predictions`' entries.
        grids: The validation grids the examples index.

    Returns:
        The matplotlib ``Figure`` (axes: the bars, then per example its grid and table).
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    names = list(results)
    columns = max(1, len(examples))
    # Not through pyplot: nothing is kept in its list of open figures.
    figure = Figure(figsize=(max(10.0, 3.0 * columns), 9.0), layout="constrained")
    layout = figure.add_gridspec(3, columns, height_ratios=(3.2, 2.2, 0.45 * len(names) + 0.6))
    draw_metric_bars(figure.add_subplot(layout[0, :]), results, title="digit grids")
    for column, example in enumerate(examples):
        image = grids.grids.images[example["index"], 0].numpy()
        grid_axes = figure.add_subplot(layout[1, column])
        grid_axes.imshow(image, cmap="gray_r", vmin=0, vmax=255)
        grid_axes.set_title(f"validation grid {example['index']}\nsingle label: {example['label']}")
        grid_axes.set_axis_off()
        table = figure.add_subplot(layout[2, column])
        shown = set(example["digits"])
        digits = range(len(CLASS_NAMES))
        predicted = [set(example["predicted"][name]) for name in names]
        colours = [
            [_cell_colour(digit in row, digit in shown) for digit in digits] for row in predicted
        ]
        table.imshow(colours, aspect="auto")
        table.set_xticks(digits, CLASS_NAMES)
        for digit, tick in enumerate(table.get_xticklabels()):
            if digit in shown:
                tick.set_fontweight("bold")
                tick.set_color(HIT)
        table.set_yticks(range(len(names)), names if column == 0 else [])
        table.set_xticks([x - 0.5 for x in range(1, len(CLASS_NAMES))], minor=True)
        table.set_yticks([y - 0.5 for y in range(1, len(names))], minor=True)
        table.grid(which="minor", color="white", linewidth=1.5)
        table.tick_params(which="minor", length=0)
    figure.legend(
        handles=[
            Patch(color=HIT, label="predicted, in the grid"),
            Patch(color=WRONG, label="predicted, not in the grid"),
            Patch(color=MISSED, label="in the grid, not predicted"),
        ],
        loc="outside lower center",
        ncols=3,
        fontsize="small",
    )
    return figure


def _cell_colour(predicted: bool, shown: bool) -> tuple[float, float, float]:
    if predicted:
        return HIT if shown else WRONG
    return MISSED if shown else (1.0, 1.0, 1.0)
