"""Image folders (``root/<class>/<image>``) as labelled, optionally multi-label datasets.

The datasets here never stop a run for an image that cannot be decoded: they serve the
next readable image of the same class instead and say so in the item's ``bad_index``
(see :class:`LabeledImageFolder`), so that the training side can count and list them.
Image reading lives in :mod:`mile_ssl.data.images`, the views in
:mod:`mile_ssl.data.augment` and label files in :mod:`mile_ssl.data.label_files`; their
public names are also importable from here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from mile_ssl.data.images import (
    IMAGE_SUFFIXES,
    absolute_path,
    holds_image,
)
from mile_ssl.data.listing import (
    class_samples,
    first_names,
    flat_samples,
    indices_of,
)
from mile_ssl.data.substitution import NO_BAD_INDEX, SubstitutingImages

log = logging.getLogger(__name__)


EmptyClasses = Literal["error", "drop", "warn"]
"""What :class:`LabeledImageFolder` does with class folders that hold no image."""


def require_several_classes(classes: Collection[str], subject: str, fix: str) -> None:
    """Refuse labelled images that are all of one class.

    A classifier fine-tuned on them can only ever predict that class: 100 % top-1 on
    validation images of the same class, and nothing learned.

    Args:
        classes: The class names of the labelled images.
        subject: What holds them, as the message's subject ("training folder X has images").
        fix: What the user should do.

    Raises:
        ValueError: Naming ``subject``, the one class and ``fix``.
    """
    if len(classes) == 1:
        raise ValueError(
            f"{subject} of one class only ({next(iter(classes))}): fine-tuning needs at "
            f"least two; {fix}"
        )


class LabeledImageFolder(SubstitutingImages):
    """An image folder whose items carry the single label and a multi-label set.

    Items are ``{"image", "label", "label_set", "index", "bad_index"}``. An unreadable
    image is replaced by the next readable one of its class, with that image's label set
    (see :class:`SubstitutingImages`); the training side counts ``bad_index`` values and
    maps them to files with :meth:`path_of`.

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
        transform: Callable[..., Any] | None,
        label_sets: Mapping[str, Sequence[int]] | None = None,
        classes: Sequence[str] | None = None,
        labels: Mapping[str, int] | None = None,
        *,
        known_bad: Collection[str] = (),
        empty_classes: EmptyClasses = "error",
        extra_classes: Literal["error", "ignore"] = "error",
    ) -> None:
        super().__init__()
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
        known = {absolute_path(path) for path in known_bad}
        self.flat = labels is not None
        if labels is not None:
            self.samples = flat_samples(self.root, labels)
        else:
            self._check_extra_classes(found, extra_classes)
            self.samples, counts = class_samples(self.root, self.classes, known)
            self._check_empty_classes(counts, empty_classes, can_drop=classes is None)
        if not self.samples:
            raise ValueError(
                f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {self.root}"
            )
        self.transform = transform
        self.label_sets = dict(label_sets or {})
        self.known_bad_indices = indices_of(self.samples, known)
        self._members: dict[int, list[int]] | None = None

    def _check_extra_classes(self, found: Sequence[str], mode: str) -> None:
        known_classes = set(self.classes)
        unknown = [name for name in found if name not in known_classes]
        with_images = [name for name in unknown if holds_image(self.root / name)]
        if not with_images:
            return
        message = (
            f"{self.root} has {len(with_images)} class folder(s) with images that the "
            f"training set lacks: {first_names(with_images)}"
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
                f"{first_names(empty)}; add images, remove the folders, or set "
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
                first_names(empty),
                len(kept),
            )
            return
        log.warning(
            "%s: %d of %d class folders have no images (%s): %s",
            self.root,
            len(empty),
            len(counts),
            suffixes,
            first_names(empty),
        )

    @property
    def labels(self) -> list[int]:
        """Single label of every image, in item order."""
        return [label for _, label in self.samples]

    @property
    def file_names(self) -> list[str]:
        """File name (without folders) of every image, in item order."""
        return [Path(path).name for path, _ in self.samples]

    def require_several_classes(self) -> None:
        """Refuse a training folder whose images are all of one class, naming it."""
        require_several_classes(
            {self.classes[label] for _, label in self.samples},
            f"training folder {self.root} has images",
            f"add a folder of images per class ({self.root}/<class>/<image>)",
        )

    def path_of(self, index: int) -> str:
        """Absolute path of the file of item ``index`` (e.g. a ``bad_index``)."""
        return absolute_path(self.samples[index][0])

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

    def file_of(self, position: int) -> str:
        """The file of item ``position``, as the folder walk wrote it."""
        return self.samples[position][0]

    def substitutes(self, position: int) -> list[int]:
        """Items of the same class, in sample order (indexed at the first bad image)."""
        if self._members is None:
            members: dict[int, list[int]] = {}
            for member, (_, sample_label) in enumerate(self.samples):
                members.setdefault(sample_label, []).append(member)
            self._members = members
        return self._members[self.samples[position][1]]

    def none_readable(self, position: int) -> str:
        """Names the class folder of item ``position``."""
        name = self.classes[self.samples[position][1]]
        folder = f"{self.root} (class {name})" if self.flat else str(self.root / name)
        return f"every image of class folder {folder} is unreadable"

    def fields(self, position: int, source: int) -> dict[str, Tensor]:
        """Label, the label set of the image served, index and ``bad_index``."""
        label = self.samples[position][1]
        label_set = torch.zeros(len(self.classes), dtype=torch.bool)
        label_set[list(self.label_sets.get(Path(self.samples[source][0]).name, [label]))] = True
        return {
            "label": torch.tensor(label),
            "label_set": label_set,
            "index": torch.tensor(position),
            "bad_index": torch.tensor(NO_BAD_INDEX if source == position else position),
        }


class UnlabeledImages(SubstitutingImages):
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
        transform: Callable[..., Any] | None,
        num_classes: int,
        first_index: int = 0,
        known_bad: Collection[str] = (),
    ) -> None:
        super().__init__()
        self.paths = list(paths)
        self.transform = transform
        self.num_classes = num_classes
        self.first_index = first_index
        known = {absolute_path(path) for path in known_bad}
        self.known_bad_indices = indices_of([(str(path), 0) for path in self.paths], known)

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
        return absolute_path(self.paths[index - self.first_index])

    def file_of(self, position: int) -> str:
        """The file of item ``position`` (counted from 0, not from ``first_index``)."""
        return str(self.paths[position])

    def substitutes(self, position: int) -> range:
        """Every unlabeled image."""
        return range(len(self.paths))

    def none_readable(self, position: int) -> str:
        """Names the settings the images come from."""
        return (
            f"none of the {len(self.paths)} unlabeled images (data.unlabeled_root / "
            "data.unlabeled_list) can be read"
        )

    def fields(self, position: int, source: int) -> dict[str, Tensor]:
        """Label -1, an empty label set, the index and ``bad_index``."""
        index = self.first_index + position
        return {
            "label": torch.tensor(-1),
            "label_set": torch.zeros(self.num_classes, dtype=torch.bool),
            "index": torch.tensor(index),
            "bad_index": torch.tensor(NO_BAD_INDEX if source == position else index),
        }
