"""Label and split files: ground truth of flat folders, label sets, split lists."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)


def read_named_file(path: str | Path, key: str) -> str:
    """The text of the file config key ``key`` names.

    Raises:
        ValueError: Naming the key, the file and why it cannot be read (the bare
            ``OSError`` names neither the key nor, for some errors, the file).
    """
    try:
        return Path(path).read_text()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ValueError(
            f"config key '{key}' names {path}, which cannot be read: {reason}"
        ) from None
    except UnicodeDecodeError:
        raise ValueError(f"config key '{key}' names {path}, which is not a text file") from None


def read_ground_truth(
    path: str | Path, classes: Sequence[str], key: str = "data.val_ground_truth"
) -> dict[str, int]:
    """Class index of each image of a flat validation folder.

    Two formats: lines ``<file name> <wnid or class index>`` (whitespace-separated), or
    the CSV ``ImageId,PredictionString`` of ImageNet's ``LOC_val_solution.csv`` (the
    first token of ``PredictionString`` is the wnid; ``.JPEG`` is appended to ``ImageId``).

    Raises:
        ValueError: Naming the file and line of an unknown class or malformed entry, or
            the config key ``key`` and the file if it cannot be read.
    """
    path = Path(path)
    index = {name: position for position, name in enumerate(classes)}
    lines = read_named_file(path, key).splitlines()
    csv_format = bool(lines) and lines[0].replace(" ", "").startswith("ImageId,")
    labels: dict[str, int] = {}
    for number, line in enumerate(lines[1:] if csv_format else lines, start=2 if csv_format else 1):
        if not line.strip():
            continue
        if csv_format:
            image_id, _, prediction = line.partition(",")
            name, label = f"{image_id.strip()}.JPEG", prediction.split()[0] if prediction else ""
        else:
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{path}:{number}: expected '<file name> <class>', got {line!r}")
            name, label = parts
        if label in index:
            labels[name] = index[label]
        elif label.isdigit() and int(label) < len(classes):
            labels[name] = int(label)
        else:
            raise ValueError(f"{path}:{number}: unknown class {label!r}")
    return labels


def read_label_sets(
    path: str | Path, num_classes: int, key: str = "data.val_label_sets"
) -> dict[str, list[int]]:
    """Read a JSON object mapping file names to lists of class indices.

    Raises:
        ValueError: Naming the file and the first entry that is not a list of class
            indices in ``[0, num_classes)``; naming the config key ``key`` and the file
            if it cannot be read or is not JSON.
    """
    path = Path(path)
    try:
        data = json.loads(read_named_file(path, key))
    except json.JSONDecodeError as error:
        raise ValueError(f"config key '{key}' names {path}, which is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of file name -> class indices")
    for name, indices in data.items():
        if not isinstance(indices, list) or not all(
            isinstance(index, int) and 0 <= index < num_classes for index in indices
        ):
            raise ValueError(
                f"{path}: entry {name!r} must be a list of class indices in "
                f"[0, {num_classes}), got {indices!r}"
            )
    return data


def read_split_file(
    path: str | Path,
    available: Sequence[str],
    allow_missing: bool = False,
    key: str = "data.split_file",
) -> list[int]:
    """Positions in ``available`` of the file names listed in ``path`` (one per line).

    Raises:
        ValueError: If listed files are missing, naming how many and the first few: a
            partial dataset copy must not silently change the labelled subset. With
            ``allow_missing`` this is a logged warning instead. Also naming the config
            key ``key`` and the file if it cannot be read.
    """
    path = Path(path)
    wanted = [line.strip() for line in read_named_file(path, key).splitlines() if line.strip()]
    position = {name: index for index, name in enumerate(available)}
    missing = [name for name in wanted if name not in position]
    if missing:
        message = (
            f"{len(missing)} of {len(wanted)} files listed in {path} are not in the training "
            f"folder, e.g. {missing[:5]}"
        )
        if not allow_missing:
            raise ValueError(message + " (set data.allow_missing=true to train on the rest)")
        log.warning("%s; training on the %d that exist", message, len(wanted) - len(missing))
    return sorted(position[name] for name in wanted if name in position)
