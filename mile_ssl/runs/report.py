"""Results as a readable table, a JSON file and a PNG figure."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mile_ssl.atomic_files import write_text_atomically, write_with
from mile_ssl.extras import MissingExtraError, extra_imports

log = logging.getLogger(__name__)

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
    """Write ``payload`` as indented strict JSON (:func:`json_text`), atomically."""
    return write_text_atomically(path, json_text(payload) + "\n")


def json_text(payload: object, indent: int | None = 2) -> str:
    """``payload`` as strict JSON: an undefined value (NaN, infinity) is ``null``.

    Python's ``json`` writes ``NaN`` and ``Infinity``, which most JSON parsers refuse
    (a metric is NaN where it is undefined, e.g. ReaL-F1 without ReaL labels). Tensors
    and numpy numbers are written as numbers, other objects (paths) as strings.
    """
    return json.dumps(_finite(payload), indent=indent, allow_nan=False, default=str)


def _finite(value: object) -> object:
    """``value`` with every non-finite number replaced by ``None``, containers walked."""
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:
        value = item()  # a 0-d tensor or numpy number
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def draw_metric_bars(
    axes: Any,
    rows: Mapping[str, Mapping[str, float]],
    columns: Sequence[tuple[str, str]] = TABLE_COLUMNS[:-1],
    title: str = "",
) -> None:
    """Grouped bar chart of percentage metrics on matplotlib ``axes``, a group per metric.

    The legend stands right of the axes, outside them: bars reach any height up to 100 %,
    so no place inside is free of them. Lay the figure out with ``layout="constrained"``
    (or ``bbox_inches="tight"``) to keep room for it.
    """
    width = 0.8 / max(1, len(rows))
    for offset, (name, metrics) in enumerate(rows.items()):
        positions = [index + offset * width for index in range(len(columns))]
        values = [100 * metrics.get(key, float("nan")) for key, _ in columns]
        axes.bar(positions, values, width=width, label=name)
    axes.set_xticks([index + 0.4 - width / 2 for index in range(len(columns))])
    axes.set_xticklabels([title for _, title in columns])
    axes.set_ylabel("%")
    axes.set_ylim(0, 100)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", borderaxespad=0)
    if title:
        axes.set_title(title)


PSEUDO_LABEL_PANELS: tuple[tuple[str, str], ...] = (
    ("pseudo_labels_per_image", "pseudo-labels per image"),
    ("pseudo_empty_fraction", "share of empty sets"),
    ("pseudo_precision", "precision vs true sets"),
    ("pseudo_recall", "recall vs true sets"),
)
"""Statistic prefix and panel title of :func:`plot_pseudo_label_history`."""


def plot_pseudo_label_history(
    path: str | Path, history: Sequence[Mapping[str, float]]
) -> Path | None:
    """Line plots of the per-cycle pseudo-label statistics over training.

    One panel per statistic, one line per image group present (all images, and in
    semi-supervised runs labelled and unlabeled images separately).

    Args:
        path: PNG file to write.
        history: One mapping per cycle with ``step`` and the statistics
            (:attr:`mile_ssl.finetune.MILeModule.pseudo_label_history`).

    Returns:
        ``path``; None, with a warning saying how to install it, where matplotlib (the
        ``demo`` extra) is not installed: training needs no plotting library, and the
        run's ``pseudo_labels.json`` holds the same numbers.
    """
    try:
        with extra_imports("demo", "the pseudo-label plot"):
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
    except MissingExtraError as error:
        log.warning("%s not written: %s", path, error)
        return None
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
