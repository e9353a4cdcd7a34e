r"""Pictures of the digit benchmark's sweeps: kt x ks heatmaps and metrics against rho.

A sweep is a ``digits.py`` report (or one merged by ``digits_summary.py``) whose MILe rows
differ in one or two settings. Each cell and point is the test split's mean over seeds;
the setting chosen on validation (``selected``) is marked. Also prints the numbers as
Markdown, one table per label fraction:

    python benchmarks/digits_plots.py heatmap REPORT.json --rows mile.kt --columns mile.ks \\
        --out kt_ks.png
    python benchmarks/digits_plots.py sweep REPORT.json --key mile.rho --out rho.png
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HEATMAP_METRICS = (("f1@0.25", "test F1@0.25"), ("map", "test mAP"))
"""The paper's Fig. 4 colours cells by ReaL-F1; mAP shows what a lower threshold costs.

Each F1 cell also shows the coverage (labels predicted per image): F1 rewards predicting
many labels on the digit grids, so a high F1 with a high coverage is a collapse, not a win.
"""
SWEEP_METRICS = (("top1", "top-1"), ("f1@0.25", "F1@0.25"), ("map", "mAP"))


def setting_value(setting: Sequence[str], key: str) -> float:
    """The value of ``key`` in a row's setting (``["mile.kt=10", ...]``).

    Raises:
        KeyError: If the setting does not set ``key``.
    """
    for item in setting:
        name, _, value = item.partition("=")
        if name == key:
            return float(value)
    raise KeyError(f"{key} is not among the swept settings {list(setting)}")


def _entries(report: dict[str, Any], fraction: float) -> list[dict[str, Any]]:
    return [e for e in report["summary"] if e["fraction"] == fraction and e["setting"]]


def _selection(report: dict[str, Any], fraction: float) -> dict[str, Any]:
    """The validation choice at ``fraction`` (its setting and every setting's score)."""
    for choice in report["selected"]:
        if choice["fraction"] == fraction:
            return choice
    return {"setting": None, "validation_scores": {}}


def fractions(report: dict[str, Any]) -> list[float]:
    """The label fractions of a report's swept entries, smallest first."""
    return sorted({entry["fraction"] for entry in report["summary"] if entry["setting"]})


def grid(
    report: dict[str, Any], fraction: float, rows: str, columns: str
) -> tuple[list[float], list[float], list[list[dict[str, Any] | None]]]:
    """Row values, column values and each cell's summary entry (None: not run)."""
    entries = _entries(report, fraction)
    row_values = sorted({setting_value(e["setting"], rows) for e in entries})
    column_values = sorted({setting_value(e["setting"], columns) for e in entries})
    cells: list[list[dict[str, Any] | None]] = [[None] * len(column_values) for _ in row_values]
    for entry in entries:
        i = row_values.index(setting_value(entry["setting"], rows))
        j = column_values.index(setting_value(entry["setting"], columns))
        cells[i][j] = entry
    return row_values, column_values, cells


def heatmap_table(report: dict[str, Any], rows: str, columns: str) -> str:
    """Markdown: per fraction, a rows x columns table of test F1@0.25 / mAP / seeds."""
    blocks = []
    for fraction in fractions(report):
        row_values, column_values, cells = grid(report, fraction, rows, columns)
        chosen = _selection(report, fraction)["setting"]
        lines = [
            f"{100 * fraction:g} % labels: test F1@0.25 / mAP / coverage (runs); **bold**: "
            "chosen on validation",
            "",
            f"| {rows} \\ {columns} | " + " | ".join(f"{v:g}" for v in column_values) + " |",
            "|---|" + "---|" * len(column_values),
        ]
        for value, line in zip(row_values, cells, strict=True):
            texts = []
            for entry in line:
                if entry is None:
                    texts.append("")
                    continue
                test = entry["test"]
                text = (
                    f"{test['f1@0.25']:.1f} / {test['map']:.1f} / {test['coverage']:.2f} "
                    f"({entry['runs']})"
                )
                texts.append(f"**{text}**" if entry["setting"] == chosen else text)
            lines.append(f"| {value:g} | " + " | ".join(texts) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def sweep_table(report: dict[str, Any], key: str) -> str:
    """Markdown: per fraction and value of ``key``, the test means and the validation score."""
    lines = [
        f"| labels | {key} | runs | top-1 | ReaL-acc | F1@0.25 | mAP | coverage "
        "| validation score |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for fraction in fractions(report):
        selection = _selection(report, fraction)
        chosen, scores = selection["setting"], selection["validation_scores"]
        entries = sorted(_entries(report, fraction), key=lambda e: setting_value(e["setting"], key))
        for entry in entries:
            test = entry["test"]
            value = f"{setting_value(entry['setting'], key):g}"
            if entry["setting"] == chosen:
                value = f"**{value}**"
            cells = [
                f"{test[name]:.1f} ± {test[name + '_std']:.1f}"
                for name in ("top1", "real_acc", "f1@0.25", "map")
            ]
            score = scores.get(",".join(entry["setting"]), float("nan"))
            lines.append(
                f"| {100 * fraction:g} % | {value} | {entry['runs']} | "
                + " | ".join(cells)
                + f" | {test['coverage']:.2f} | {score:.1f} |"
            )
    return "\n".join(lines)


def plot_heatmaps(report: dict[str, Any], rows: str, columns: str, path: Path) -> None:
    """One heatmap per fraction and metric of :data:`HEATMAP_METRICS`, saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = fractions(report)
    figure, axes = plt.subplots(
        len(shown),
        len(HEATMAP_METRICS),
        figsize=(4.2 * len(HEATMAP_METRICS), 3.6 * len(shown)),
        squeeze=False,
    )
    for i, fraction in enumerate(shown):
        chosen = _selection(report, fraction)["setting"]
        row_values, column_values, cells = grid(report, fraction, rows, columns)
        for j, (metric, title) in enumerate(HEATMAP_METRICS):
            values = [
                [float("nan") if entry is None else entry["test"][metric] for entry in line]
                for line in cells
            ]
            ax = axes[i][j]
            image = ax.imshow(values, cmap="viridis", origin="lower")
            figure.colorbar(image, ax=ax, shrink=0.8)
            ax.set_xticks(range(len(column_values)), [f"{v:g}" for v in column_values])
            ax.set_yticks(range(len(row_values)), [f"{v:g}" for v in row_values])
            ax.set_xlabel(columns)
            ax.set_ylabel(rows)
            ax.set_title(f"{title}, {100 * fraction:g} % labels")
            for r, line in enumerate(cells):
                for c, entry in enumerate(line):
                    if entry is None:  # not run
                        continue
                    text = f"{entry['test'][metric]:.1f}"
                    if metric == "f1@0.25":
                        text += f"\n{entry['test']['coverage']:.1f} labels"
                    ax.text(c, r, text, ha="center", va="center", color="white", fontsize=9)
            if chosen is not None:
                r = row_values.index(setting_value(chosen, rows))
                c = column_values.index(setting_value(chosen, columns))
                ax.add_patch(
                    plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", lw=2)
                )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_sweep(report: dict[str, Any], key: str, path: Path) -> None:
    """Test metrics (mean +- std over seeds) and coverage against ``key``, a panel per fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = fractions(report)
    figure, axes = plt.subplots(1, len(shown), figsize=(5.2 * len(shown), 3.8), squeeze=False)
    for ax, fraction in zip(axes[0], shown, strict=True):
        entries = sorted(_entries(report, fraction), key=lambda e: setting_value(e["setting"], key))
        xs = [setting_value(e["setting"], key) for e in entries]
        for metric, label in SWEEP_METRICS:
            ax.errorbar(
                xs,
                [e["test"][metric] for e in entries],
                yerr=[e["test"][metric + "_std"] for e in entries],
                marker="o",
                capsize=3,
                label=label,
            )
        ax.set_xlabel(key)
        ax.set_ylabel("test, %")
        ax.set_title(f"{100 * fraction:g} % labels")
        chosen = _selection(report, fraction)["setting"]
        if chosen is not None:
            ax.axvline(setting_value(chosen, key), color="grey", ls=":", label="chosen on val.")
        coverage = ax.twinx()
        counts = [e["test"]["coverage"] for e in entries]
        coverage.plot(xs, counts, "k--", marker="x")
        # From one label per image up: noise of 0.01 labels must not look like a trend.
        coverage.set_ylim(0.95, max(1.5, max(counts) + 0.05))
        coverage.set_ylabel("coverage (labels per image, dashed)")
        ax.legend(loc="center right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> None:
    """``heatmap`` or ``sweep`` of a report: a PNG and the numbers as Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    heat = commands.add_parser("heatmap", help="two swept settings as a grid")
    heat.add_argument("report", type=Path)
    heat.add_argument("--rows", default="mile.kt")
    heat.add_argument("--columns", default="mile.ks")
    heat.add_argument("--out", type=Path, required=True, help="the PNG to write")
    sweep = commands.add_parser("sweep", help="metrics against one swept setting")
    sweep.add_argument("report", type=Path)
    sweep.add_argument("--key", default="mile.rho")
    sweep.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    try:
        report = json.loads(args.report.read_text())
    except (OSError, json.JSONDecodeError) as error:
        parser.exit(2, f"error: cannot read the report {args.report}: {error}\n")
    if not fractions(report):
        message = f"{args.report} has no rows of a swept setting (digits.py --select)"
        parser.exit(2, f"error: {message}\n")
    try:
        if args.command == "heatmap":
            plot_heatmaps(report, args.rows, args.columns, args.out)
            print(heatmap_table(report, args.rows, args.columns))
        else:
            plot_sweep(report, args.key, args.out)
            print(sweep_table(report, args.key))
    except KeyError as error:
        parser.exit(2, f"error: {args.report}: {error.args[0]}\n")


if __name__ == "__main__":
    main()
