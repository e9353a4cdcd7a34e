"""Image folders (``root/<class>/<image>``) as labelled, optionally multi-label datasets.

Every image of the package is decoded by :func:`load_rgb`. The datasets here never stop
a run for an image that cannot be decoded: they serve the next readable image of the
same class instead and say so in the item's ``bad_index`` (see
:class:`LabeledImageFolder`), so that the training side can count and list them.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import struct
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from mile_ssl.data.views import image_fields
from mile_ssl.preprocessing import Preprocessing

log = logging.getLogger(__name__)


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
"""File endings (any case) taken as images when folders are searched."""

DECODE_ERRORS: tuple[type[Exception], ...] = (
    OSError,  # includes UnidentifiedImageError, truncated data, missing files
    SyntaxError,  # some PIL plugins reject malformed headers with it
    ValueError,
    EOFError,
    IndexError,
    struct.error,
    Image.DecompressionBombError,
)
"""What PIL raises for a file that is not a decodable image (empty, truncated, not an
image, corrupt, or a decompression bomb). Anything else is a bug and propagates."""

_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
"""Single-channel modes that hold 16-bit samples (``I`` is what 16-bit data becomes
after some conversions; values are taken as 0..65535)."""

NO_BAD_INDEX = -1
"""``bad_index`` of an item whose own image was read."""


class UnreadableImageError(ValueError):
    """An image file that cannot be decoded.

    A ``ValueError`` so that, if it reaches the command line, it is reported as a user
    error naming the file.

    Attributes:
        path: The file.
        reason: Why it cannot be read, in words (e.g. ``empty file (0 bytes)``).
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: cannot be read as an image ({reason})")
        self.path = str(path)
        self.reason = reason


def describe_decode_error(path: str | Path, error: BaseException) -> str:
    """Why ``path`` could not be decoded, in words a user can act on."""
    if isinstance(error, FileNotFoundError):
        return "file does not exist"
    try:
        size = os.path.getsize(path)
    except OSError:
        size = None
    if size == 0:
        return "empty file (0 bytes)"
    if isinstance(error, UnidentifiedImageError):
        return "not an image file PIL can read"
    if isinstance(error, Image.DecompressionBombError):
        return f"too many pixels (PIL's decompression-bomb limit): {error}"
    message = str(error) or type(error).__name__
    if "truncated" in message.lower():
        return f"truncated file: {message}"
    return f"{type(error).__name__}: {message}"


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB, with 16-bit samples scaled down instead of clipped.

    PIL opens 16-bit greyscale files (PNG, TIFF) in mode ``I;16`` / ``I``, and its
    ``convert("RGB")`` clips those values at 255, which turns almost every pixel white.
    Here they are divided by 256 (``value >> 8``) first. 16-bit RGB(A) and grey+alpha
    files are already reduced to 8 bits by PIL when opened.
    """
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64)
        eight_bit = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(eight_bit).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode the image file ``path`` as 8-bit RGB; the project's only image loader.

    Everything that reads image files (training, validation, unlabeled images,
    ``predict``) goes through here, so every code path decodes alike (16-bit files
    included, see :func:`to_rgb`) and fails alike.

    Raises:
        UnreadableImageError: Naming the file and why, if it is missing, empty,
            truncated, not an image or otherwise not decodable.
    """
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except DECODE_ERRORS as error:
        raise UnreadableImageError(path, describe_decode_error(path, error)) from error


_SUFFIX_TUPLE = tuple(sorted(IMAGE_SUFFIXES))


def is_image_file(name: str | Path) -> bool:
    """Whether ``name`` ends in one of :data:`IMAGE_SUFFIXES` (any case).

    The test torchvision's ``ImageFolder`` applies, which decided the sample order of
    earlier runs; keeping it keeps their indices valid for a resume.
    """
    return str(name).lower().endswith(_SUFFIX_TUPLE)


def _absolute(path: str | Path) -> str:
    """The normalised absolute form of ``path``, for comparing paths of two runs."""
    return os.path.normpath(os.path.abspath(os.path.expanduser(str(path))))


def _first(names: Sequence[str], count: int = 5) -> str:
    """The first ``count`` of ``names`` for a message, and how many more there are."""
    shown = ", ".join(names[:count])
    return shown if len(names) <= count else f"{shown} and {len(names) - count} more"


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


def holds_image(folder: str | Path) -> bool:
    """Whether ``folder`` holds an image file at any depth (stops at the first)."""
    for _, _, names in os.walk(folder, followlinks=True):
        if any(is_image_file(name) for name in names):
            return True
    return False


def _missing_under(folder: str | Path, known_bad: Collection[str]) -> list[str]:
    """Image paths of ``known_bad`` below ``folder`` that no longer exist.

    ``known_bad`` holds absolute paths; the result is written from ``folder`` as given,
    the form a walk of ``folder`` produces, so it sorts among the walked files.
    """
    base = _absolute(folder)
    prefix = base.rstrip(os.sep) + os.sep
    return [
        os.path.join(str(folder), os.path.relpath(path, base))
        for path in known_bad
        if path.startswith(prefix) and is_image_file(path) and not os.path.exists(path)
    ]


def _class_samples(
    root: Path, classes: Sequence[str], known_bad: Collection[str]
) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """``(path, label)`` of every image below ``root/<class>``, and images per class folder.

    The order and path strings are those of torchvision's ``ImageFolder`` (class names
    sorted, then each class folder walked in sorted order), which earlier runs used, so
    their item indices stay valid. Files of ``known_bad`` that were deleted since are
    listed at the position they had, so deleting unreadable files shifts no index.

    Returns:
        The samples, and the number of images of each class whose folder exists.
    """
    directory = os.path.expanduser(str(root))
    samples: list[tuple[str, int]] = []
    counts: dict[str, int] = {}
    for label, name in sorted(enumerate(classes), key=lambda entry: entry[1]):
        folder = os.path.join(directory, name)
        if not os.path.isdir(folder):
            continue
        entries = {
            (walked, file_name)
            for walked, _, file_names in os.walk(folder, followlinks=True)
            for file_name in file_names
            if is_image_file(os.path.join(walked, file_name))
        }
        entries.update(os.path.split(path) for path in _missing_under(folder, known_bad))
        counts[name] = len(entries)
        samples += [
            (os.path.join(walked, file_name), label) for walked, file_name in sorted(entries)
        ]
    return samples, counts


EmptyClasses = Literal["error", "drop", "warn"]
"""What :class:`LabeledImageFolder` does with class folders that hold no image."""


class LabeledImageFolder(Dataset[dict[str, Tensor]]):
    """An image folder whose items carry the single label and a multi-label set.

    Items are ``{"image", "label", "label_set", "index", "bad_index"}``. An image that
    cannot be decoded (see :func:`load_rgb`) never stops the run: the item gets the next
    readable image of the same class in sample order (wrapping around) and its label
    set, keeps the requested ``index`` and label, and has ``bad_index`` = the requested
    index (``-1`` when the image was read). The choice depends only on which files are
    readable, so every worker, rank and resumed run makes the same one. The
    training side counts ``bad_index`` values and maps them to files with
    :meth:`path_of`.

    Args:
        root: Folder with one sub-folder per class (sorted names give class indices).
        transform: Maps a PIL image to a tensor (or to both views of
            :class:`~mile_ssl.data.views.WeakStrongViews`).
        label_sets: File name -> class indices; files not listed get ``{label}``.
        classes: Class folder names to use (e.g. the training split's), default: the
            sub-folders of ``root``.
        labels: File name -> class index for a flat folder (no class sub-folders);
            ``None`` reads the class from each image's sub-folder.
        known_bad: Files an earlier run found unreadable (``bad_images.txt``). They
            are always substituted, and those deleted since keep their place in the
            sample order, so that a run resumes on the same data after its bad files
            are removed.
        empty_classes: Class folders without images: ``error`` (a ``ValueError``
            listing them), ``drop`` (left out of the classes, with a warning; only when
            ``classes`` is not given, as a given class list fixes the indices) or
            ``warn``.
        extra_classes: Class folders with images that ``classes`` lacks: ``error`` or
            ``ignore`` (with a warning). Such folders without images are always ignored.

    Raises:
        FileNotFoundError: If ``root`` does not exist.
        ValueError: If there are no class folders or no images, or for class folders
            as ``empty_classes`` / ``extra_classes`` say, each naming the folders.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[..., Any],
        label_sets: Mapping[str, Sequence[int]] | None = None,
        classes: Sequence[str] | None = None,
        labels: Mapping[str, int] | None = None,
        *,
        known_bad: Collection[str] = (),
        empty_classes: EmptyClasses = "error",
        extra_classes: Literal["error", "ignore"] = "error",
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
        known = {_absolute(path) for path in known_bad}
        self.flat = labels is not None
        if labels is not None:
            self.samples = _flat_samples(self.root, labels)
        else:
            self._check_extra_classes(found, extra_classes)
            self.samples, counts = _class_samples(self.root, self.classes, known)
            self._check_empty_classes(counts, empty_classes, can_drop=classes is None)
        if not self.samples:
            raise ValueError(
                f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {self.root}"
            )
        self.transform = transform
        self.label_sets = dict(label_sets or {})
        self.known_bad_indices = _indices_of(self.samples, known)
        self._members: dict[int, list[int]] | None = None
        self._reported: set[int] = set()

    def _check_extra_classes(self, found: Sequence[str], mode: str) -> None:
        known_classes = set(self.classes)
        unknown = [name for name in found if name not in known_classes]
        with_images = [name for name in unknown if holds_image(self.root / name)]
        if not with_images:
            return
        message = (
            f"{self.root} has {len(with_images)} class folder(s) with images that the "
            f"training set lacks: {_first(with_images)}"
        )
        if mode == "error":
            raise ValueError(message)
        log.warning("%s; their images are left out (data.allow_empty_classes=true)", message)

    def _check_empty_classes(self, counts: Mapping[str, int], mode: str, can_drop: bool) -> None:
        empty = [name for name in self.classes if counts.get(name) == 0]
        if not empty:
            return
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        if mode == "error":
            raise ValueError(
                f"{self.root}: {len(empty)} class folder(s) have no images ({suffixes}): "
                f"{_first(empty)}; add images, remove the folders, or set "
                "data.allow_empty_classes=true to leave them out of the classes"
            )
        if mode == "drop" and can_drop:
            left_out = set(empty)
            kept = [name for name in self.classes if name not in left_out]
            old_label = {name: label for label, name in enumerate(self.classes)}
            new_label = {old_label[name]: label for label, name in enumerate(kept)}
            self.samples = [(path, new_label[label]) for path, label in self.samples]
            self.classes = kept
            log.warning(
                "%s: left out %d class folder(s) without images (data.allow_empty_classes="
                "true): %s; %d classes remain",
                self.root,
                len(empty),
                _first(empty),
                len(kept),
            )
            return
        log.warning(
            "%s: %d of %d class folders have no images (%s): %s",
            self.root,
            len(empty),
            len(counts),
            suffixes,
            _first(empty),
        )

    @property
    def labels(self) -> list[int]:
        """Single label of every image, in item order."""
        return [label for _, label in self.samples]

    @property
    def file_names(self) -> list[str]:
        """File name (without folders) of every image, in item order."""
        return [Path(path).name for path, _ in self.samples]

    def path_of(self, index: int) -> str:
        """Absolute path of the file of item ``index`` (e.g. a ``bad_index``)."""
        return _absolute(self.samples[index][0])

    def __len__(self) -> int:
        return len(self.samples)

    def _class_members(self, label: int) -> list[int]:
        """Item indices of class ``label`` in sample order (built at the first bad image)."""
        if self._members is None:
            members: dict[int, list[int]] = {}
            for position, (_, sample_label) in enumerate(self.samples):
                members.setdefault(sample_label, []).append(position)
            self._members = members
        return self._members[label]

    def _class_folder(self, label: int) -> str:
        name = self.classes[label]
        return f"{self.root} (class {name})" if self.flat else str(self.root / name)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        index = range(len(self.samples))[index]
        path, label = self.samples[index]
        image, source = _read_or_substitute(
            index,
            path,
            lambda: self._class_members(label),
            self.known_bad_indices,
            lambda position: self.samples[position][0],
            self._reported,
            f"every image of class folder {self._class_folder(label)} is unreadable",
        )
        source_name = Path(self.samples[source][0]).name
        label_set = torch.zeros(len(self.classes), dtype=torch.bool)
        label_set[list(self.label_sets.get(source_name, [label]))] = True
        return {
            **image_fields(self.transform, image),
            "label": torch.tensor(label),
            "label_set": label_set,
            "index": torch.tensor(index),
            "bad_index": torch.tensor(NO_BAD_INDEX if source == index else index),
        }


class UnlabeledImages(Dataset[dict[str, Tensor]]):
    """Images without labels for the semi-supervised student (``data.unlabeled_*``).

    Items carry label -1 and an empty label set, so nothing can mistake them for
    labelled images and pseudo-label quality is not measured on them. An unreadable
    image is replaced by the next readable one (wrapping around) and reported in
    ``bad_index``, as in :class:`LabeledImageFolder`.

    Args:
        paths: Image files.
        transform: Maps a PIL image to the training view(s).
        num_classes: Width of the (empty) label set.
        first_index: ``index`` of the first item (keeps indices unique when these
            images are appended to a training set).
        known_bad: Files an earlier run found unreadable: always substituted.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        transform: Callable[..., Any],
        num_classes: int,
        first_index: int = 0,
        known_bad: Collection[str] = (),
    ) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.num_classes = num_classes
        self.first_index = first_index
        known = {_absolute(path) for path in known_bad}
        self.known_bad_indices = _indices_of([(str(path), 0) for path in self.paths], known)
        self._reported: set[int] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def path_of(self, index: int) -> str:
        """Absolute path of the item whose ``index`` (and ``bad_index``) is ``index``.

        Item indices start at ``first_index``, as in the training set they extend.
        """
        if not self.first_index <= index < self.first_index + len(self.paths):
            raise IndexError(
                f"index {index} outside [{self.first_index}, {self.first_index + len(self.paths)})"
            )
        return _absolute(self.paths[index - self.first_index])

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        index = range(len(self.paths))[index]
        image, source = _read_or_substitute(
            index,
            str(self.paths[index]),
            lambda: range(len(self.paths)),
            self.known_bad_indices,
            lambda position: str(self.paths[position]),
            self._reported,
            f"none of the {len(self.paths)} unlabeled images (data.unlabeled_root / "
            "data.unlabeled_list) can be read",
        )
        item_index = self.first_index + index
        return {
            **image_fields(self.transform, image),
            "label": torch.tensor(-1),
            "label_set": torch.zeros(self.num_classes, dtype=torch.bool),
            "index": torch.tensor(item_index),
            "bad_index": torch.tensor(NO_BAD_INDEX if source == index else item_index),
        }


def _indices_of(samples: Sequence[tuple[str, int]], known: Collection[str]) -> frozenset[int]:
    """Positions of ``samples`` whose file is one of the absolute paths ``known``."""
    if not known:
        return frozenset()
    names = {os.path.basename(path) for path in known}
    return frozenset(
        position
        for position, (path, _) in enumerate(samples)
        if os.path.basename(path) in names and _absolute(path) in known
    )


def _read_or_substitute(
    index: int,
    path: str,
    members: Callable[[], Sequence[int]],
    known_bad: Collection[int],
    path_at: Callable[[int], str],
    reported: set[int],
    none_readable: str,
) -> tuple[Image.Image, int]:
    """The image of item ``index``, or of the next readable item among ``members``.

    Args:
        index: The requested item.
        path: Its file.
        members: Sorted item indices it may be replaced with (its class), ``index``
            among them; called only when needed.
        known_bad: Items never read (files an earlier run found unreadable).
        path_at: File of an item.
        reported: Items already logged as unreadable by this process (updated).
        none_readable: Start of the error message when no member can be read.

    Returns:
        The image and the index of the item it belongs to (``index`` when read).

    Raises:
        ValueError: ``none_readable``, with the requested file and why it failed.
    """
    if index in known_bad:
        reason = "listed as unreadable by an earlier run"
    else:
        try:
            return load_rgb(path), index
        except UnreadableImageError as error:
            reason = error.reason
    candidates = members()
    start = _position(candidates, index)
    for offset in range(1, len(candidates)):
        candidate = candidates[(start + offset) % len(candidates)]
        if candidate in known_bad:
            continue
        try:
            image = load_rgb(path_at(candidate))
        except UnreadableImageError:
            continue
        if index not in reported:
            reported.add(index)
            log.warning("%s: unreadable (%s); using %s instead", path, reason, path_at(candidate))
        return image, candidate
    raise ValueError(
        f"{none_readable} ({len(candidates)} files; e.g. {path}: {reason}): replace or "
        "remove them (mile-ssl check-data lists every unreadable file)"
    )


def _position(sorted_indices: Sequence[int], index: int) -> int:
    """Where ``index`` is in ``sorted_indices`` (which holds it)."""
    return bisect.bisect_left(sorted_indices, index)


def list_unlabeled_images(
    root: str | Path | None, file_list: str | Path | None, known_bad: Collection[str] = ()
) -> list[Path]:
    """Image files of ``data.unlabeled_root`` and/or ``data.unlabeled_list``.

    ``root`` alone: every image below it, at any depth, sorted. ``file_list`` (one path
    per line): the listed images; relative paths resolve against ``root`` if given,
    else against the list's folder. Files of ``known_bad`` (unreadable in an earlier
    run) that were deleted since stay in the list at their place, so the indices of the
    others do not shift on resume.

    Raises:
        FileNotFoundError: Naming the missing folder, or the list and its first
            missing images.
        ValueError: If no image is found.
    """
    known = {_absolute(path) for path in known_bad}
    if root is not None and not Path(root).is_dir():
        raise FileNotFoundError(f"data.unlabeled_root: folder {root} does not exist")
    if file_list is None:
        assert root is not None
        deleted = [
            Path(path)
            for path in _missing_under(root, known)
            if not Path(path).name.startswith(".")
        ]
        try:
            images = collect_images([root])
        except ValueError as error:
            if not deleted:
                raise ValueError(f"data.unlabeled_root: {error}") from error
            images = []
        return sorted({*images, *deleted}) if deleted else images
    base = Path(root) if root is not None else Path(file_list).parent
    lines = Path(file_list).read_text().splitlines()
    paths = [base / line.strip() for line in lines if line.strip()]
    missing = [str(path) for path in paths if not path.is_file() and _absolute(path) not in known]
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
