"""Means over seeds and the validation-chosen setting of the digit benchmark's rows."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

# fmt: off
METRIC_KEYS = (
    "f1@0.25", "f1@0.5", "precision@0.25", "recall@0.25", "top1", "real_acc", "real_f1",
    "coverage", "map",
)
# fmt: on
SPLITS = ("val", "test")
SELECTION_KEYS = ("top1", "map")
"""Validation metrics whose mean picks a setting: single-label and label-set ranking."""


def _mean_std(rows: list[dict[str, Any]], split: str) -> dict[str, float]:
    entry: dict[str, float] = {}
    for key in METRIC_KEYS:
        values = [row[split][key] for row in rows if not math.isnan(row[split][key])]
        entry[key] = round(statistics.fmean(values), 2) if values else float("nan")
        entry[f"{key}_std"] = round(statistics.pstdev(values), 2) if len(values) > 1 else 0.0
    return entry


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and population std over seeds of every (init, fraction, method, setting)."""
    groups: dict[tuple[str, float, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["init"], row["fraction"], row["method"])].append(row)
    summary = []
    for (init, fraction, method), members in groups.items():
        entry: dict[str, Any] = {
            "init": init,
            "fraction": fraction,
            "method": method,
            "base_method": members[0]["base_method"],
            "setting": members[0]["setting"],
            "runs": len(members),
            "seeds": [member["seed"] for member in members],
        }
        entry.update({split: _mean_std(members, split) for split in SPLITS})
        entry["seconds"] = round(statistics.fmean(member["seconds"] for member in members), 1)
        summary.append(entry)
    return summary


def select(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (init, fraction, method): the setting with the best mean validation score."""
    groups: dict[tuple[str, float, str], list[dict[str, Any]]] = defaultdict(list)
    for entry in summary:
        if entry["setting"]:
            groups[(entry["init"], entry["fraction"], entry["base_method"])].append(entry)
    chosen = []
    for (init, fraction, method), entries in groups.items():
        scores = {
            ",".join(entry["setting"]): round(
                statistics.fmean(entry["val"][key] for key in SELECTION_KEYS), 2
            )
            for entry in entries
        }
        best = max(entries, key=lambda entry: scores[",".join(entry["setting"])])
        chosen.append(
            {
                "init": init,
                "fraction": fraction,
                "method": method,
                "metric": "mean of validation " + " and ".join(SELECTION_KEYS),
                "validation_scores": scores,
                "setting": best["setting"],
                "runs": best["runs"],
                "val": best["val"],
                "test": best["test"],
            }
        )
    return chosen
