"""Dataset sources: what ``data.name`` reads, for training and for validation alone.

Each source builds the training set (with the labels the label fraction is drawn from)
and the multi-label validation set. Evaluation builds the validation set alone, so it
never indexes a training folder (which may hold a million images, or be absent on a
machine that only evaluates).

The start-up checks of image folders happen here, before training: class folders
without images (an error unless ``data.allow_empty_classes``), validation class folders
without images (a warning). Every source takes ``known_bad``, the files an earlier run
found unreadable, so that a resumed run indexes its images as the first run did.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from mile_ssl.config import DataConfig
from mile_ssl.data.augment import eval_transform, train_transform
from mile_ssl.data.digits import (
    CLASS_NAMES,
    IMAGE_SIZE,
    DigitGridConfig,
    DigitGridDataset,
    DigitGrids,
    make_digit_grids,
)
from mile_ssl.data.folder import LabeledImageFolder
from mile_ssl.data.imagenet import imagenet_classes, real_label_sets, shipped_split
from mile_ssl.data.images import holds_image
from mile_ssl.data.label_files import read_ground_truth, read_label_sets
from mile_ssl.data.views import WeakStrongViews, strong_digit_transform, strong_image_transform
from mile_ssl.networks.preprocessing import Preprocessing


@dataclass
class Splits:
    """What a dataset source provides for training.

    Attributes:
        train: Training items.
        train_labels: Single label of each training item (for stratified fractions).
        train_names: File name of each training item (for split files), if any.
        val: Validation items with label sets.
        class_names: Name of each class.
        image_transform: Training view(s) of a PIL image, as the training items get
            them (for images from ``data.unlabeled_root`` / ``data.unlabeled_list``).
        default_split_file: Labelled subset to use when ``data.split_file`` is not set.
    """

    train: Dataset[dict[str, torch.Tensor]]
    train_labels: Sequence[int]
    train_names: Sequence[str] | None
    val: Dataset[dict[str, torch.Tensor]]
    class_names: Sequence[str]
    image_transform: Callable[..., Any]
    default_split_file: Path | None = None


def _views(weak: Callable[..., Any], strong: Callable[..., Any] | None) -> Callable[..., Any]:
    """``weak``, or both views when a strong transform is asked for."""
    return weak if strong is None else WeakStrongViews(weak, strong)


def _image_views(
    config: DataConfig, preprocessing: Preprocessing, strong_view: bool
) -> Callable[..., Any]:
    strong = strong_image_transform(config.image_size, preprocessing) if strong_view else None
    return _views(train_transform(config.image_size, preprocessing), strong)


# ------------------------------------------------------------------------------------------
# Embedded digit grids
# ------------------------------------------------------------------------------------------


def _digit_grids(config: DataConfig) -> tuple[DigitGrids, DigitGrids]:
    digits = config.digits
    return make_digit_grids(
        DigitGridConfig(
            num_train=digits.num_train,
            num_val=digits.num_val,
            num_test=digits.num_test,
            center_prob=digits.center_prob,
            seed=config.split_seed,
        )
    )


def _normalize(preprocessing: Preprocessing) -> v2.Normalize:
    return v2.Normalize(list(preprocessing.mean), list(preprocessing.std))


def digit_splits(
    config: DataConfig,
    preprocessing: Preprocessing,
    strong_view: bool,
    known_bad: Collection[str] = (),
) -> Splits:
    """The embedded digit grids (paper App. A.1).

    Images from outside (``data.unlabeled_root``) become grey 24 x 24 grids too. The
    grids are generated, never unreadable: ``known_bad`` is accepted for a uniform
    signature and ignored.
    """
    train, val = _digit_grids(config)
    normalize = _normalize(preprocessing)
    train_views = _views(normalize, strong_digit_transform(preprocessing) if strong_view else None)
    from_pil = v2.Compose(
        [
            v2.Grayscale(num_output_channels=3),
            v2.Resize((IMAGE_SIZE, IMAGE_SIZE), antialias=True),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )
    return Splits(
        train=DigitGridDataset(train, transform=train_views),
        train_labels=train.labels.tolist(),
        train_names=None,
        val=DigitGridDataset(val, transform=normalize),
        class_names=CLASS_NAMES,
        image_transform=v2.Compose([from_pil, train_views]),
    )


def digit_validation(
    config: DataConfig, preprocessing: Preprocessing, class_names: Sequence[str] | None
) -> Dataset[dict[str, torch.Tensor]]:
    """The digit grids' validation set (the training grids are built too: they are cheap)."""
    return DigitGridDataset(_digit_grids(config)[1], transform=_normalize(preprocessing))


# ------------------------------------------------------------------------------------------
# Image folders
# ------------------------------------------------------------------------------------------


def _folder_val(
    config: DataConfig, preprocessing: Preprocessing, classes: Sequence[str]
) -> LabeledImageFolder:
    """The validation folder with the training classes.

    Its class folders without images are a warning (metrics then miss those classes);
    with ``data.allow_empty_classes`` its folders of classes the training set left out
    are ignored rather than an error.
    """
    assert config.root is not None
    label_sets = None
    if config.val_label_sets is not None:
        label_sets = read_label_sets(config.val_label_sets, len(classes))
    return LabeledImageFolder(
        Path(config.root) / config.val_dir,
        eval_transform(config.image_size, preprocessing),
        label_sets=label_sets,
        classes=classes,
        empty_classes="warn",
        extra_classes="ignore" if config.allow_empty_classes else "error",
    )


def folder_splits(
    config: DataConfig,
    preprocessing: Preprocessing,
    strong_view: bool,
    known_bad: Collection[str] = (),
) -> Splits:
    """``root/<train_dir>/<class>/*`` and ``root/<val_dir>/<class>/*``.

    Training class folders without images are an error naming them; with
    ``data.allow_empty_classes`` they are left out of the classes (with a warning).
    """
    assert config.root is not None
    views = _image_views(config, preprocessing, strong_view)
    train = LabeledImageFolder(
        Path(config.root) / config.train_dir,
        views,
        known_bad=known_bad,
        empty_classes="drop" if config.allow_empty_classes else "error",
    )
    train.require_several_classes()
    return Splits(
        train=train,
        train_labels=train.labels,
        train_names=train.file_names,
        val=_folder_val(config, preprocessing, train.classes),
        class_names=train.classes,
        image_transform=views,
    )


def folder_validation(
    config: DataConfig, preprocessing: Preprocessing, class_names: Sequence[str] | None
) -> Dataset[dict[str, torch.Tensor]]:
    """``root/<val_dir>`` with the model's classes (default: the training sub-folders).

    Raises:
        FileNotFoundError: If no class names are given and the training folder, which
            would define them, does not exist.
    """
    assert config.root is not None
    if class_names is None:
        class_names = class_names_without_images(config)
    if class_names is None:
        raise FileNotFoundError(
            f"{Path(config.root) / config.train_dir} does not exist and the checkpoint names "
            "no classes: cannot tell which class each validation folder is"
        )
    return _folder_val(config, preprocessing, class_names)


# ------------------------------------------------------------------------------------------
# ImageNet
# ------------------------------------------------------------------------------------------


def _imagenet_val(config: DataConfig, preprocessing: Preprocessing) -> LabeledImageFolder:
    assert config.root is not None
    classes = imagenet_classes()
    label_sets = (
        read_label_sets(config.val_label_sets, len(classes))
        if config.val_label_sets is not None
        else real_label_sets()
    )
    return LabeledImageFolder(
        Path(config.root) / config.val_dir,
        eval_transform(config.image_size, preprocessing),
        label_sets=label_sets,
        classes=classes,
        empty_classes="warn",
        labels=(
            read_ground_truth(config.val_ground_truth, classes)
            if config.val_ground_truth is not None
            else None
        ),
    )


def imagenet_splits(
    config: DataConfig,
    preprocessing: Preprocessing,
    strong_view: bool,
    known_bad: Collection[str] = (),
) -> Splits:
    """ImageNet in the ImageFolder layout, evaluated with ImageNet-ReaL by file name.

    Class indices are positions in the sorted list of the 1,000 ImageNet-1k wnids (the
    index space of ``real.json``), also when the folder holds only some classes. A
    class folder that exists but holds no image (e.g. an extraction that failed) is an
    error; with ``data.allow_empty_classes`` a warning (the index space stays fixed).
    """
    assert config.root is not None
    classes = imagenet_classes()
    views = _image_views(config, preprocessing, strong_view)
    train = LabeledImageFolder(
        Path(config.root) / config.train_dir,
        views,
        classes=classes,
        known_bad=known_bad,
        empty_classes="warn" if config.allow_empty_classes else "error",
    )
    train.require_several_classes()
    standard = shipped_split(config.fraction) if config.split == "simclr" else None
    return Splits(
        train=train,
        train_labels=train.labels,
        train_names=train.file_names,
        val=_imagenet_val(config, preprocessing),
        class_names=classes,
        image_transform=views,
        default_split_file=standard,
    )


def imagenet_validation(
    config: DataConfig, preprocessing: Preprocessing, class_names: Sequence[str] | None
) -> Dataset[dict[str, torch.Tensor]]:
    """ImageNet's validation folder with ImageNet-ReaL label sets."""
    return _imagenet_val(config, preprocessing)


def network_input_size(config: DataConfig) -> int:
    """Side of the images the network sees: the digit grid's, or ``data.image_size``."""
    return IMAGE_SIZE if config.name == "digits" else config.image_size


def class_names_without_images(config: DataConfig) -> list[str] | None:
    """The dataset's class names, found without indexing its images.

    Fixed for the digit grids and ImageNet; the sub-folders of the training folder for
    image folders (``None`` when that folder does not exist), without those that hold
    no image when ``data.allow_empty_classes`` left them out of training.
    """
    if config.name == "imagenet":
        return list(imagenet_classes())
    if config.name == "digits":
        return list(CLASS_NAMES)
    if config.root is None:
        return None
    train = Path(config.root) / config.train_dir
    if not train.is_dir():
        return None
    names = sorted(entry.name for entry in train.iterdir() if entry.is_dir())
    if config.allow_empty_classes:
        names = [name for name in names if holds_image(train / name)]
    return names


SOURCES = {"digits": digit_splits, "folder": folder_splits, "imagenet": imagenet_splits}
"""Training and validation sets of each ``data.name``."""

VALIDATION_SOURCES = {
    "digits": digit_validation,
    "folder": folder_validation,
    "imagenet": imagenet_validation,
}
"""The validation set alone of each ``data.name``."""


def validation_set(
    config: DataConfig, preprocessing: Preprocessing, class_names: Sequence[str] | None = None
) -> Dataset[dict[str, torch.Tensor]]:
    """The validation set of ``config``, without touching the training images.

    Args:
        config: Data settings.
        preprocessing: Normalisation the model expects.
        class_names: The model's classes (image folders: which index each class
            folder gets); default: the training folder's sub-folders.
    """
    return VALIDATION_SOURCES[config.name](config, preprocessing, class_names)
