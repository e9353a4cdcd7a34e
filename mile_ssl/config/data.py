"""Config group ``data``: where images come from, which labels are used, how they load."""

from __future__ import annotations

from dataclasses import dataclass, field

from mile_ssl.config.checks import require, require_choice

DATASETS = ("digits", "folder", "imagenet")
SPLITS = ("simclr", "stratified")
BACKENDS = ("torchvision", "dali")


@dataclass
class DigitsConfig:
    """Size and label noise of the embedded digit-grid dataset (paper App. A.1).

    Attributes:
        num_train: Training grids.
        num_val: Validation grids: the split settings are chosen on.
        num_test: Held-out test grids, built from digit images that neither training
            nor validation grids use: the split results are reported on.
        center_prob: Probability that the training label is the centre digit.
    """

    num_train: int = 10_000
    num_val: int = 2_000
    num_test: int = 2_000
    center_prob: float = 0.6


@dataclass
class DataConfig:
    """Where images come from, which labels are used, and what each step is fed.

    Attributes:
        name: ``digits`` (embedded multi-label digit grids), ``folder``
            (``root/<train_dir>/<class>/*.jpg`` and ``root/<val_dir>/<class>/*.jpg``) or
            ``imagenet`` (a folder in the ImageFolder layout, evaluated with ImageNet-ReaL
            and the standard label splits).
        root: Dataset root for ``folder``.
        train_dir: Training sub-folder of ``root``.
        val_dir: Validation sub-folder of ``root``.
        fraction: Share of training labels used, sampled per class with ``split_seed``.
        split_file: Text file listing the training file names to use (one per line);
            replaces ``fraction``.
        split_seed: Seed of the label-fraction sampler; the same on every rank.
        split: ImageNet only: ``simclr`` uses the shipped standard lists for fractions
            0.01 and 0.1 (SimCLR's ``imagenet_subsets``, which SimCLR, SwAV and BYOL
            report on; the MILe reference code never reads them and samples its own
            per-class fraction with seed 42); ``stratified`` samples like any other
            dataset.
        allow_missing: Train on the listed files that exist when some of a split list
            are missing (otherwise that is an error: it changes the protocol).
        val_label_sets: JSON file mapping validation file names to lists of class
            indices (multi-label evaluation, e.g. ImageNet-ReaL).
        val_ground_truth: For a flat validation folder (images directly in
            ``val_dir``): a file of ``<file name> <wnid or class index>`` lines, or
            ImageNet's ``LOC_val_solution.csv``.
        batch_size: Images per device and step.
        eval_batch_size: Images per device in evaluation (default: ``batch_size``).
        num_workers: Loader worker processes per device; ``null`` sets them from the
            machine (its CPU cores shared among the devices of this node).
        backend: Input pipeline of ``folder`` and ``imagenet`` images: ``torchvision``
            (PIL/torchvision decoding in loader workers) or ``dali`` (NVIDIA DALI:
            decoding on the GPU where CUDA is present, on the CPU otherwise; needs the
            ``dali`` extra).
        image_size: Training crop size of ``folder`` images.
        strong_student_view: Noisy Student style: the network that produces targets
            (the MILe teacher, the fixed teacher of ``distill`` and ``self_train``) sees
            the usual (weak) training view and the student learns from a strongly
            augmented view of the same image (RandAugment for image folders; shifts,
            rotations and erasing for digit grids). ``softmax`` and ``sigmoid`` train on
            the strong view, which makes them the baselines with the same augmentation.
        unlabeled_ratio: Unlabeled images per labelled image in the batches that take
            unlabeled images (semi-supervised MILe's student steps, every step of
            ``distill`` and ``self_train``); 7, as in FixMatch.
        unlabeled_root: Semi-supervised mode: a folder whose images (at any depth,
            folder names ignored) are the unlabeled stream, instead of the training
            images outside the label fraction.
        unlabeled_list: Semi-supervised mode: a file listing the unlabeled images, one
            path per line, relative to ``unlabeled_root`` if set, else to the list's
            folder.
        allow_empty_classes: Leave class folders without images out of the classes
            (otherwise they are an error naming them).
        max_bad_fraction: Share of training images that may fail to decode (each is
            replaced by a readable image of its class and listed in the run's
            ``bad_images.txt``) before the run stops.
        digits: Digit-grid settings.
    """

    name: str = "digits"
    root: str | None = None
    train_dir: str = "train"
    val_dir: str = "val"
    fraction: float = 1.0
    split_file: str | None = None
    split_seed: int = 0
    split: str = "simclr"
    allow_missing: bool = False
    val_label_sets: str | None = None
    val_ground_truth: str | None = None
    batch_size: int = 128
    eval_batch_size: int | None = None
    num_workers: int | None = None
    backend: str = "torchvision"
    image_size: int = 224
    strong_student_view: bool = False
    unlabeled_ratio: int = 7
    unlabeled_root: str | None = None
    unlabeled_list: str | None = None
    allow_empty_classes: bool = False
    max_bad_fraction: float = 0.001
    digits: DigitsConfig = field(default_factory=DigitsConfig)

    def __post_init__(self) -> None:
        require_choice("data.name", self.name, DATASETS)
        require(0.0 < self.fraction <= 1.0, "data.fraction", "in (0, 1]", self.fraction)
        require(self.batch_size >= 1, "data.batch_size", ">= 1", self.batch_size)
        require(
            self.num_workers is None or self.num_workers >= 0,
            "data.num_workers",
            ">= 0 or null",
            self.num_workers,
        )
        require_choice("data.backend", self.backend, BACKENDS)
        if self.backend == "dali":
            require(
                self.name in ("folder", "imagenet"),
                "data.backend",
                "torchvision for data=digits (dali reads image files)",
                self.backend,
            )
        require(self.image_size >= 8, "data.image_size", ">= 8 pixels", self.image_size)
        require(
            self.eval_batch_size is None or self.eval_batch_size >= 1,
            "data.eval_batch_size",
            ">= 1 or null",
            self.eval_batch_size,
        )
        require(self.unlabeled_ratio >= 1, "data.unlabeled_ratio", ">= 1", self.unlabeled_ratio)
        require(
            0.0 <= self.max_bad_fraction < 1.0,
            "data.max_bad_fraction",
            "in [0, 1)",
            self.max_bad_fraction,
        )
        require_choice("data.split", self.split, SPLITS)
        if self.name in ("folder", "imagenet"):
            require(self.root is not None, "data.root", f"set for data={self.name}", self.root)
