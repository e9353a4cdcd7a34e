"""Means over seeds and the validation-chosen setting of the digit benchmark's rows.

As a script, merges reports of ``digits.py`` runs made apart (one process per seed, side
by side) into one, and prints its test table:

    python benchmarks/digits_summary.py seed0.json seed1.json seed2.json --out all.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
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


TABLE_COLUMNS = ("top1", "real_acc", "f1@0.25", "map", "coverage")
"""The test metrics of :func:`markdown_table`: what the paper's tables report."""


def report(
    rows: list[dict[str, Any]], *, command: Any, overrides: Any, torch_threads: Any
) -> dict[str, Any]:
    """A ``digits.py`` report: how it was made, its rows, their summary and selection.

    ``torch_threads`` is recorded because results depend on it: reduction order changes
    with the thread count, and MILe's thresholded targets turn such rounding differences
    into different runs.
    """
    summary = summarise(rows)
    return {
        "command": command,
        "overrides": overrides,
        "torch_threads": torch_threads,
        "rows": rows,
        "summary": summary,
        "selected": select(summary),
    }


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from several ``digits.py`` reports (e.g. one process per seed).

    Rows are concatenated in the order given; the summary and the selection are computed
    again from all of them, as one ``digits.py`` call over every seed would.
    """
    return report(
        [row for part in parts for row in part["rows"]],
        command=[part["command"] for part in parts],
        overrides=parts[0]["overrides"],
        torch_threads=sorted({part["torch_threads"] for part in parts}),
    )


def markdown_table(summary: list[dict[str, Any]]) -> str:
    """The test split's mean +- std per summary entry, one Markdown row each."""
    header = ["init", "fraction", "method", "runs", *TABLE_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in summary:
        test = entry["test"]
        cells = [
            f"{test[key]:.2f}"
            if key == "coverage"
            else f"{test[key]:.1f} ± {test[key + '_std']:.1f}"
            for key in TABLE_COLUMNS
        ]
        head = [entry["init"], f"{100 * entry['fraction']:g} %", entry["method"], entry["runs"]]
        lines.append("| " + " | ".join(str(cell) for cell in [*head, *cells]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python benchmarks/digits_summary.py PART.json... [--out FILE]``: merge, print a table."""
    parser = argparse.ArgumentParser(description="Merge digits.py reports; print the test table.")
    parser.add_argument("parts", nargs="+", type=Path, help="digits.py JSON reports")
    parser.add_argument("--out", type=Path, help="write the merged report here")
    args = parser.parse_args(argv)
    merged = merge([json.loads(path.read_text()) for path in args.parts])
    if args.out is not None:
        args.out.write_text(json.dumps(merged, indent=2) + "\n")
    print(markdown_table(merged["summary"]))


if __name__ == "__main__":
    main()
