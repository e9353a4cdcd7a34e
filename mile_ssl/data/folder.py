"""Image folders (``root/<class>/<image>``) as labelled, optionally multi-label datasets."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import default_loader
from torchvision.transforms import v2

from mile_ssl.data.views import image_fields
from mile_ssl.preprocessing import Preprocessing

log = logging.getLogger(__name__)


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
"""File endings (any case) taken as images when folders are searched."""


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Image files named in ``inputs``: files as given, folders searched recursively.

    Folder contents are sorted so that results come in a stable order; a file reached
    twice is listed once.

    Raises:
        FileNotFoundError: Naming an input that does not exist.
        ValueError: Naming a folder without images, or if no input was given.
    """
    found: dict[Path, None] = {}
    for entry in inputs:
        path = Path(entry)
        if path.is_dir():
            images = sorted(
                child
                for child in path.rglob("*")
                if child.is_file()
                and child.suffix.lower() in IMAGE_SUFFIXES
                and not child.name.startswith(".")
            )
            if not images:
                raise ValueError(
                    f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {path}"
                )
            found.update(dict.fromkeys(images))
        elif path.is_file():
            found[path] = None
        else:
            raise FileNotFoundError(f"image or folder not found: {path}")
    if not found:
        raise ValueError("no images given: pass image files or folders")
    return list(found)


def train_transform(image_size: int, preprocessing: Preprocessing) -> Callable[..., Tensor]:
    """Random-resized crop and flip, the standard fine-tuning augmentation."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(preprocessing.mean), list(preprocessing.std)),
        ]
    )


def eval_transform(image_size: int, preprocessing: Preprocessing) -> Callable[..., Tensor]:
    """Resize to ``image_size / 0.875`` and centre-crop, the standard evaluation view."""
    return v2.Compose(
        [
            v2.Resize(round(image_size / 0.875), antialias=True),
            v2.CenterCrop(image_size),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(preprocessing.mean), list(preprocessing.std)),
        ]
    )


class LabeledImageFolder(Dataset[dict[str, Tensor]]):
    """An image folder whose items carry the single label and a multi-label set.

    Args:
        root: Folder with one sub-folder per class (sorted names give class indices).
        transform: Maps a PIL image to a tensor (or to both views of
            :class:`~mile_ssl.data.views.WeakStrongViews`).
        label_sets: File name -> class indices; files not listed get ``{label}``.
        classes: Class folder names to use (e.g. the training split's), default: the
            sub-folders of ``root``.
        labels: File name -> class index for a flat folder (no class sub-folders);
            ``None`` reads the class from each image's sub-folder.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[..., Any],
        label_sets: Mapping[str, Sequence[int]] | None = None,
        classes: Sequence[str] | None = None,
        labels: Mapping[str, int] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        found = sorted(entry.name for entry in self.root.iterdir() if entry.is_dir())
        self.classes = list(classes) if classes is not None else found
        if labels is None and not self.classes:
            raise ValueError(
                f"image folder {self.root} has no class sub-folders: expected "
                f"{self.root}/<class>/<image> (one folder per class)"
            )
        if labels is not None:
            self.samples = _flat_samples(self.root, labels)
        else:
            unknown = sorted(set(found) - set(self.classes))
            if unknown:
                raise ValueError(
                    f"{self.root} has class folders the training set lacks: {unknown[:5]}"
                )
            class_to_idx = {name: index for index, name in enumerate(self.classes)}
            self.samples = ImageFolder.make_dataset(
                str(self.root), class_to_idx, extensions=tuple(IMAGE_SUFFIXES), allow_empty=True
            )
        if not self.samples:
            raise ValueError(
                f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {self.root}"
            )
        self.transform = transform
        self.label_sets = dict(label_sets or {})

    @property
    def labels(self) -> list[int]:
        """Single label of every image, in item order."""
        return [label for _, label in self.samples]

    @property
    def file_names(self) -> list[str]:
        """File name (without folders) of every image, in item order."""
        return [Path(path).name for path, _ in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        path, label = self.samples[index]
        label_set = torch.zeros(len(self.classes), dtype=torch.bool)
        label_set[list(self.label_sets.get(Path(path).name, [label]))] = True
        return {
            **image_fields(self.transform, default_loader(path)),
            "label": torch.tensor(label),
            "label_set": label_set,
            "index": torch.tensor(index),
        }


class UnlabeledImages(Dataset[dict[str, Tensor]]):
    """Images without labels for the semi-supervised student (``data.unlabeled_*``).

    Items carry label -1 and an empty label set, so nothing can mistake them for
    labelled images and pseudo-label quality is not measured on them.

    Args:
        paths: Image files.
        transform: Maps a PIL image to the training view(s).
        num_classes: Width of the (empty) label set.
        first_index: ``index`` of the first item (keeps indices unique when these
            images are appended to a training set).
    """

    def __init__(
        self,
        paths: Sequence[Path],
        transform: Callable[..., Any],
        num_classes: int,
        first_index: int = 0,
    ) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.num_classes = num_classes
        self.first_index = first_index

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {
            **image_fields(self.transform, default_loader(str(self.paths[index]))),
            "label": torch.tensor(-1),
            "label_set": torch.zeros(self.num_classes, dtype=torch.bool),
            "index": torch.tensor(self.first_index + index),
        }


def list_unlabeled_images(root: str | Path | None, file_list: str | Path | None) -> list[Path]:
    """Image files of ``data.unlabeled_root`` and/or ``data.unlabeled_list``.

    ``root`` alone: every image below it, at any depth, sorted. ``file_list`` (one path
    per line): the listed images; relative paths resolve against ``root`` if given,
    else against the list's folder.

    Raises:
        FileNotFoundError: Naming the missing folder, or the list and its first
            missing images.
        ValueError: If no image is found.
    """
    if root is not None and not Path(root).is_dir():
        raise FileNotFoundError(f"data.unlabeled_root: folder {root} does not exist")
    if file_list is None:
        assert root is not None
        try:
            return collect_images([root])
        except ValueError as error:
            raise ValueError(f"data.unlabeled_root: {error}") from error
    base = Path(root) if root is not None else Path(file_list).parent
    lines = Path(file_list).read_text().splitlines()
    paths = [base / line.strip() for line in lines if line.strip()]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"data.unlabeled_list={file_list}: {len(missing)} of {len(paths)} listed "
            f"images do not exist, e.g. {missing[:3]}"
        )
    if not paths:
        raise ValueError(f"data.unlabeled_list={file_list}: lists no images")
    return paths


def _flat_samples(root: Path, labels: Mapping[str, int]) -> list[tuple[str, int]]:
    """``(path, label)`` of the images directly in ``root`` that ``labels`` names."""
    images = sorted(path for path in root.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    unlabelled = [path.name for path in images if path.name not in labels]
    if unlabelled:
        raise ValueError(
            f"{len(unlabelled)} images in {root} have no ground-truth label, e.g. {unlabelled[:5]}"
        )
    return [(str(path), labels[path.name]) for path in images]


def read_ground_truth(path: str | Path, classes: Sequence[str]) -> dict[str, int]:
    """Class index of each image of a flat validation folder.

    Two formats: lines ``<file name> <wnid or class index>`` (whitespace-separated), or
    the CSV ``ImageId,PredictionString`` of ImageNet's ``LOC_val_solution.csv`` (the
    first token of ``PredictionString`` is the wnid; ``.JPEG`` is appended to ``ImageId``).

    Raises:
        ValueError: Naming the file and line of an unknown class or malformed entry.
    """
    path = Path(path)
    index = {name: position for position, name in enumerate(classes)}
    lines = path.read_text().splitlines()
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


def read_label_sets(path: str | Path, num_classes: int) -> dict[str, list[int]]:
    """Read a JSON object mapping file names to lists of class indices.

    Raises:
        ValueError: Naming the file and the first entry that is not a list of class
            indices in ``[0, num_classes)``.
    """
    path = Path(path)
    with path.open() as handle:
        data = json.load(handle)
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
    path: str | Path, available: Sequence[str], allow_missing: bool = False
) -> list[int]:
    """Positions in ``available`` of the file names listed in ``path`` (one per line).

    Raises:
        ValueError: If listed files are missing, naming how many and the first few: a
            partial dataset copy must not silently change the labelled subset. With
            ``allow_missing`` this is a logged warning instead.
    """
    path = Path(path)
    wanted = [line.strip() for line in path.read_text().splitlines() if line.strip()]
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
