"""The ImageNet protocol files shipped with mile_ssl (see ``imagenet/README.md``).

The 1 % / 10 % label splits are the lists used by SimCLR, SwAV, BYOL and the MILe paper,
and ``real.json`` holds the ImageNet-ReaL labels of the validation set. Published
numbers are only comparable when exactly these files are used, so they are shipped
and checked by hash instead of being re-sampled.
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib import resources
from pathlib import Path

SPLIT_FILES = {0.01: "1percent.txt", 0.1: "10percent.txt"}
SHA256 = {
    "1percent.txt": "71e82a48ba78252683ae334c4d019ebd5c6e855b9599c1389fbe83eb9549cf17",
    "10percent.txt": "6d09de11e7bdaf5b1f3b1f249b6183695f97310cdd20f0c03e7235b6b9392091",
    "real.json": "d83e9bff374c631aae8439eb064c7019acc56e1b3bc3f56b8380c2a710b0220b",
}
NUM_VAL_IMAGES = 50_000


def shipped_file(name: str) -> Path:
    """Path of a shipped protocol file."""
    path = Path(str(resources.files("mile_ssl.data") / "imagenet" / name))
    if not path.is_file():
        raise FileNotFoundError(f"shipped ImageNet file {name} is missing from {path.parent}")
    return path


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shipped_split(fraction: float) -> Path | None:
    """The standard split list for 1 % or 10 % of the labels, ``None`` for other fractions."""
    name = SPLIT_FILES.get(fraction)
    return shipped_file(name) if name else None


@functools.cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k wnids in sorted order: the index space of ``real.json``.

    Taken from the 10 % list, which holds images of every class.
    """
    lines = shipped_file("10percent.txt").read_text().split()
    classes = tuple(sorted({line.split("_", 1)[0] for line in lines}))
    if len(classes) != 1000:
        raise ValueError(f"expected 1000 classes in the 10 % list, found {len(classes)}")
    return classes


def real_label_sets() -> dict[str, list[int]]:
    """ImageNet-ReaL labels by validation file name (``ILSVRC2012_val_00000001.JPEG``).

    Matching by file name, not position, lets any ordering or subset of the validation
    images be evaluated. Empty lists stay empty: those images are excluded from every
    ReaL metric.
    """
    labels = json.loads(shipped_file("real.json").read_text())
    if len(labels) != NUM_VAL_IMAGES:
        raise ValueError(f"real.json holds {len(labels)} entries, expected {NUM_VAL_IMAGES}")
    return {f"ILSVRC2012_val_{index + 1:08d}.JPEG": entry for index, entry in enumerate(labels)}
