"""Results as a readable table, a JSON file and a PNG figure."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from mile_ssl.atomic_files import write_text_atomically, write_with

TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("top1", "top-1"),
    ("real_acc", "ReaL-acc"),
    ("real_f1", "ReaL-F1"),
    ("f1@0.25", "F1@0.25"),
    ("f1@0.5", "F1@0.5"),
    ("map", "mAP"),
    ("coverage", "coverage"),
)
"""Metric key and column title; all but coverage are fractions shown as percentages."""


def format_metrics_table(
    rows: Mapping[str, Mapping[str, float]], columns: Sequence[tuple[str, str]] = TABLE_COLUMNS
) -> str:
    """A fixed-width table, one row per run; fractions shown in percent.

    A run whose top-1 is no better than always predicting the most frequent validation
    class (``chance_top1``, within one point) is flagged: it learned nothing, which a
    diverging learning rate often causes without a single NaN.
    """
    name_width = max([len("run"), *(len(name) for name in rows)])
    header = "run".ljust(name_width) + "".join(f"{title:>10}" for _, title in columns)
    lines = [header, "-" * len(header)]
    for name, metrics in rows.items():
        cells = []
        for key, _ in columns:
            value = metrics.get(key)
            if value is None:
                cells.append(f"{'-':>10}")
            elif key == "coverage":
                cells.append(f"{value:>10.2f}")
            else:
                cells.append(f"{100 * value:>10.1f}")
        lines.append(name.ljust(name_width) + "".join(cells) + _chance_flag(metrics))
    return "\n".join(lines)


CHANCE_MARGIN = 0.01


def _chance_flag(metrics: Mapping[str, float]) -> str:
    chance, top1 = metrics.get("chance_top1"), metrics.get("top1")
    if chance is None or top1 is None or top1 > chance + CHANCE_MARGIN:
        return ""
    return f"  <- chance level (most frequent class: {100 * chance:.1f}); check optim.lr"


def write_json(path: str | Path, payload: object) -> Path:
    """Write ``payload`` as indented JSON, atomically, creating parent folders."""
    return write_text_atomically(path, json.dumps(payload, indent=2) + "\n")


def plot_metrics(
    path: str | Path,
    rows: Mapping[str, Mapping[str, float]],
    columns: Sequence[tuple[str, str]] = TABLE_COLUMNS[:-1],
    title: str = "",
) -> Path:
    """Grouped bar chart of percentage metrics, one bar group per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(1.4 * len(columns) + 2, 3.6))
    width = 0.8 / max(1, len(rows))
    for offset, (name, metrics) in enumerate(rows.items()):
        positions = [index + offset * width for index in range(len(columns))]
        values = [100 * metrics.get(key, float("nan")) for key, _ in columns]
        axes.bar(positions, values, width=width, label=name)
    axes.set_xticks([index + 0.4 - width / 2 for index in range(len(columns))])
    axes.set_xticklabels([title for _, title in columns])
    axes.set_ylabel("%")
    axes.set_ylim(0, 100)
    axes.legend(loc="upper left", fontsize="small", ncols=min(4, len(rows)))
    if title:
        axes.set_title(title)
    figure.tight_layout()
    write_with(path, lambda file: figure.savefig(file, format="png", dpi=120))
    plt.close(figure)
    return path


PSEUDO_LABEL_PANELS: tuple[tuple[str, str], ...] = (
    ("pseudo_labels_per_image", "pseudo-labels per image"),
    ("pseudo_empty_fraction", "share of empty sets"),
    ("pseudo_precision", "precision vs true sets"),
    ("pseudo_recall", "recall vs true sets"),
)
"""Statistic prefix and panel title of :func:`plot_pseudo_label_history`."""


def plot_pseudo_label_history(path: str | Path, history: Sequence[Mapping[str, float]]) -> Path:
    """Line plots of the per-cycle pseudo-label statistics over training.

    One panel per statistic, one line per image group present (all images, and in
    semi-supervised runs labelled and unlabeled images separately).

    Args:
        path: PNG file to write.
        history: One mapping per cycle with ``step`` and the statistics
            (:attr:`mile_ssl.finetune.MILeModule.pseudo_label_history`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    steps = [entry["step"] for entry in history]
    figure, axes = plt.subplots(1, len(PSEUDO_LABEL_PANELS), figsize=(14, 3.4))
    for axis, (prefix, title) in zip(axes, PSEUDO_LABEL_PANELS, strict=True):
        for suffix, group in (("", "all"), ("_labelled", "labelled"), ("_unlabeled", "unlabeled")):
            key = prefix + suffix
            if any(key in entry for entry in history):
                values = [entry.get(key, float("nan")) for entry in history]
                axis.plot(steps, values, marker="o", markersize=3, label=group)
        axis.set_title(title, fontsize="medium")
        axis.set_xlabel("step")
        if prefix == "pseudo_labels_per_image":
            axis.set_ylim(bottom=0)
        else:
            axis.set_ylim(0, 1.02)  # shares
        axis.legend(fontsize="small")
    figure.tight_layout()
    write_with(path, lambda file: figure.savefig(file, format="png", dpi=120))
    plt.close(figure)
    return path
