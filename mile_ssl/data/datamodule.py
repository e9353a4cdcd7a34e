"""The Lightning data module: labelled training stream and multi-label validation set."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch.utils.data import ConcatDataset, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from mile_ssl.config import DataConfig
from mile_ssl.data.dali import DaliLoader
from mile_ssl.data.dali_pipeline import import_dali
from mile_ssl.data.folder import LabeledImageFolder, UnlabeledImages, require_several_classes
from mile_ssl.data.label_files import read_split_file
from mile_ssl.data.listing import list_unlabeled_images
from mile_ssl.data.loaders import (
    choose_num_workers,
    dali_loader,
    data_loader,
    local_devices,
    log_num_workers,
    validation_loader,
)
from mile_ssl.data.sampling import (
    FlaggedDataset,
    SeededBatchSampler,
    SeededItems,
    SemiSupervisedBatchSampler,
    StepBatchSampler,
    stratified_fraction,
)
from mile_ssl.data.sources import SOURCES
from mile_ssl.data.substitution import BAD_INDEX_KEY, SubstitutingImages, WithBadIndex
from mile_ssl.networks.preprocessing import Preprocessing

log = logging.getLogger(__name__)


UNLABELED_SEED_OFFSET = 7919
"""The unlabeled stream's shuffle seed is ``data.split_seed`` plus this."""


@dataclass(frozen=True)
class UnlabeledStream:
    """How the semi-supervised mode draws unlabeled images.

    Attributes:
        ratio: Unlabeled images per labelled image in the steps that use them.
        uses_unlabeled: Whether a training step takes unlabeled images.
    """

    ratio: int
    uses_unlabeled: Callable[[int], bool]


class MILeDataModule(L.LightningDataModule):
    """Serves the labelled fraction of the training set and the full validation set.

    The labelled subset depends on ``data.split_seed`` only, so it is the same on every
    rank. Training batches come from :class:`StepBatchSampler`, indexed by the step
    count, which is what makes resuming exact; validation is sharded across ranks
    without shuffling and the module removes the sampler's padding before metrics.

    Args:
        config: Data settings.
        preprocessing: Normalisation the backbone expects (from its checkpoint).
        unlabeled: Semi-supervised mode: a second, unlabeled stream, drawn from
            ``data.unlabeled_root`` / ``data.unlabeled_list`` when set, else from the
            training images outside the labelled subset.
        strong_student_view: Training items also carry ``image_strong``, a strongly
            augmented view for the student (:mod:`mile_ssl.data.views`).
        known_bad_images: Files an earlier run of this training set found unreadable
            (its ``bad_images.txt``). They are always substituted, and those deleted
            since keep their index, so that a resume sees the same data after the user
            removes them.

    Every training item carries ``bad_index``: ``-1``, or its own ``index`` when its
    image could not be read and another image of its class was served instead (see
    :class:`~mile_ssl.data.folder.LabeledImageFolder`); :meth:`image_path` names the
    file of such an index.
    """

    def __init__(
        self,
        config: DataConfig,
        preprocessing: Preprocessing,
        unlabeled: UnlabeledStream | None = None,
        strong_student_view: bool = False,
        known_bad_images: Collection[str] = (),
    ) -> None:
        super().__init__()
        if config.backend == "dali":
            check_dali_settings(strong_student_view)
        self.config = config
        self.preprocessing = preprocessing
        self.unlabeled = unlabeled
        self.known_bad_images = tuple(known_bad_images)
        self._workers_logged = False
        self.splits = SOURCES[config.name](
            config, preprocessing, strong_student_view, known_bad=self.known_bad_images
        )
        self.unlabeled_images: UnlabeledImages | None = None
        self.train_indices = self._labelled_indices()
        self.train_dataset, self.unlabeled_indices = self._add_unlabeled()

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.splits.class_names)

    @property
    def class_names(self) -> Sequence[str]:
        """Name of each class."""
        return self.splits.class_names

    @property
    def num_train_items(self) -> int:
        """Items of the training dataset: the training set plus appended unlabeled images."""
        return len(self.train_dataset)  # type: ignore[arg-type]

    def image_path(self, index: int) -> str | None:
        """Absolute path of the file of training item ``index`` (e.g. a ``bad_index``).

        Covers the training set and the unlabeled images appended to it in
        semi-supervised mode; ``None`` for items that are no file (digit grids).

        Raises:
            IndexError: If ``index`` is not an item of the training dataset.
        """
        if not 0 <= index < self.num_train_items:
            raise IndexError(f"training item {index} outside [0, {self.num_train_items})")
        train = self.splits.train
        if index < len(self.splits.train_labels):
            return train.path_of(index) if isinstance(train, LabeledImageFolder) else None
        assert self.unlabeled_images is not None
        return self.unlabeled_images.path_of(index)

    @property
    def labelled_digest(self) -> str:
        """SHA-256 of the labelled indices: equal digests mean equal label splits."""
        return hashlib.sha256(",".join(map(str, self.train_indices)).encode()).hexdigest()

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the training data, stored in checkpoints to check resumes.

        Class names in order, images per class, a SHA-256 of the labelled files' names
        (indices for datasets without files) and the training crop size: two datasets of
        the same shape but other classes or files differ here, where the labelled indices
        alone (:attr:`labelled_digest`) agree.
        """
        labels = torch.as_tensor(self.splits.train_labels, dtype=torch.long)
        counts = torch.bincount(labels, minlength=self.num_classes).tolist()
        names = self.splits.train_names
        labelled = [
            names[index] if names is not None else str(index) for index in self.train_indices
        ]
        return {
            "class_names": list(self.class_names),
            "images_per_class": counts,
            "labelled_files_sha256": hashlib.sha256("\n".join(labelled).encode()).hexdigest(),
            "image_size": self.config.image_size,
        }

    def setup(self, stage: str) -> None:
        """Check that every rank selected the same labelled images."""
        if self.trainer is None or self.trainer.world_size == 1:
            return
        reference = self.trainer.strategy.broadcast(self.labelled_digest, src=0)
        if reference != self.labelled_digest:
            raise RuntimeError(
                f"rank {self.trainer.global_rank} selected a different labelled subset than "
                "rank 0; the dataset differs between processes (check data.root on every node)"
            )

    def _add_unlabeled(self) -> tuple[Dataset[dict[str, torch.Tensor]], list[int]]:
        """The training dataset and the indices of its unlabeled stream (none without one).

        External unlabeled images are appended after the training images.
        """
        config = self.config
        external = config.unlabeled_root is not None or config.unlabeled_list is not None
        train = self.splits.train
        if not isinstance(train, LabeledImageFolder):
            train = WithBadIndex(train)
        if self.unlabeled is None:
            if external:
                raise ValueError(
                    "data.unlabeled_root / data.unlabeled_list are set, but this method uses "
                    "no unlabeled images (use method=mile_semi, distill or self_train)"
                )
            return train, []
        num_train = len(self.splits.train_labels)
        if external:
            known_bad = self.known_bad_images
            self.unlabeled_images = UnlabeledImages(
                list_unlabeled_images(config.unlabeled_root, config.unlabeled_list, known_bad),
                self.splits.image_transform,
                self.num_classes,
                first_index=num_train,
                known_bad=known_bad,
            )
            indices = list(range(num_train, num_train + len(self.unlabeled_images)))
            return ConcatDataset([train, self.unlabeled_images]), indices
        labelled = set(self.train_indices)
        indices = [index for index in range(num_train) if index not in labelled]
        if not indices:
            raise ValueError(
                "semi-supervised training needs unlabeled images, but every training image "
                "is labelled: set data.fraction below 1 (or a smaller data.split_file), or "
                "data.unlabeled_root"
            )
        return train, indices

    def _labelled_indices(self) -> list[int]:
        split_file = self.config.split_file or self.splits.default_split_file
        if split_file is not None:
            if self.splits.train_names is None:
                raise ValueError(
                    f"data.split_file needs a dataset of files; data.name={self.config.name}"
                )
            indices = read_split_file(
                split_file, self.splits.train_names, self.config.allow_missing
            )
            require_several_classes(
                {self.splits.class_names[self.splits.train_labels[i]] for i in indices},
                f"data.split_file {split_file} labels images",
                "list images of several classes",
            )
            return indices
        warn_about_minimum_labels(self.splits.train_labels, self.config.fraction)
        return stratified_fraction(
            self.splits.train_labels, self.config.fraction, self.config.split_seed
        )

    def train_dataloader(self) -> Iterable[dict[str, torch.Tensor]]:
        """Batches of the current step onwards (see :class:`StepBatchSampler`).

        With image files each item is augmented from its own seed (see
        :class:`~mile_ssl.data.sampling.SeededBatchSampler`), so resuming is exact.
        """
        trainer = self.trainer
        start_step = (lambda: trainer.global_step) if trainer is not None else (lambda: 0)
        rank = trainer.global_rank if trainer is not None else 0
        world_size = trainer.world_size if trainer is not None else 1
        config = self.config
        labelled = StepBatchSampler(
            self.train_indices, config.batch_size, config.split_seed, start_step, rank, world_size
        )
        batches: StepBatchSampler | SemiSupervisedBatchSampler = labelled
        dataset = self.train_dataset
        if self.unlabeled is not None:
            unlabeled = StepBatchSampler(
                self.unlabeled_indices,
                config.batch_size * self.unlabeled.ratio,
                config.split_seed + UNLABELED_SEED_OFFSET,
                start_step,
                rank,
                world_size,
            )
            batches = SemiSupervisedBatchSampler(labelled, unlabeled, self.unlabeled.uses_unlabeled)
            dataset = FlaggedDataset(dataset)
        if config.backend == "dali":
            extra = [self.unlabeled_images] if self.unlabeled_images is not None else []
            ratio = self.unlabeled.ratio if self.unlabeled is not None else 0
            return self._dali_loader(
                [self.splits.train, *extra], batches, config.batch_size * (1 + ratio)
            )
        workers = self._num_workers()
        if not isinstance(self.splits.train, SubstitutingImages):
            return data_loader(config, dataset, batch_sampler=batches, workers=workers)
        seeded = SeededBatchSampler(batches)
        return data_loader(config, SeededItems(dataset), batch_sampler=seeded, workers=workers)

    def val_dataloader(self) -> Iterable[dict[str, torch.Tensor]]:
        """The validation set in order, sharded across ranks."""
        sampler: Sampler[int] | None = None
        if self.trainer is not None and self.trainer.world_size > 1:
            sampler = DistributedSampler(
                self.splits.val,
                num_replicas=self.trainer.world_size,
                rank=self.trainer.global_rank,
                shuffle=False,
            )
        return validation_loader(
            self.config,
            self.splits.val,
            self.preprocessing,
            sampler=sampler,
            workers=self._num_workers(),
            device=self._device(),
        )

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        """Move a batch to ``device``, all but its ``bad_index`` marks.

        The marks are bookkeeping read on the host after every training step
        (:class:`~mile_ssl.runs.bad_images.BadImageMonitor`); read from an accelerator, they
        would make every step wait for it.
        """
        if not isinstance(batch, dict) or BAD_INDEX_KEY not in batch:
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        rest = {key: value for key, value in batch.items() if key != BAD_INDEX_KEY}
        moved = super().transfer_batch_to_device(rest, device, dataloader_idx)
        return {**moved, BAD_INDEX_KEY: batch[BAD_INDEX_KEY]}

    def _devices_on_node(self) -> int:
        return self.trainer.num_devices if self.trainer is not None else local_devices()

    def _num_workers(self) -> int:
        """``data.num_workers`` or the machine's choice, said once."""
        devices = self._devices_on_node()
        workers = choose_num_workers(self.config, devices)
        if not self._workers_logged:
            log_num_workers(self.config, workers, devices)
            self._workers_logged = True
        return workers

    def _device(self) -> torch.device | None:
        """The device this process trains on, if a trainer says."""
        return self.trainer.strategy.root_device if self.trainer is not None else None

    def _dali_loader(
        self,
        datasets: Sequence[Dataset[Any]],
        batches: StepBatchSampler | SemiSupervisedBatchSampler,
        max_batch: int,
    ) -> DaliLoader:
        """A DALI training loader of ``datasets`` (image files) on this process's GPU, if any."""
        return dali_loader(
            self.config,
            self.preprocessing,
            datasets,
            batches,
            max_batch,
            workers=self._num_workers(),
            device=self._device(),
        )


def check_dali_settings(strong_student_view: bool) -> None:
    """Refuse what the DALI backend cannot do, before any image is indexed.

    Raises:
        DaliUnavailableError: If DALI cannot be imported, saying how to install it.
        ValueError: For the strong student view, naming the key.
    """
    import_dali()
    if strong_student_view:
        raise ValueError(
            "data.strong_student_view=true: data.backend=dali has no strong (RandAugment) "
            "view; set data.backend=torchvision or data.strong_student_view=false"
        )


def warn_about_minimum_labels(labels: Sequence[int], fraction: float) -> int:
    """Warn when ``fraction`` is below one image for some classes.

    :func:`~mile_ssl.data.sampling.stratified_fraction` gives each class at least one
    labelled image, so for such classes the fraction is not the one asked for (and at
    ``data.fraction=0.0001`` the labelled set is one image per class, far more than the
    fraction). The warning says how many classes and images that concerns.

    Returns:
        The number of classes raised to the one-image minimum.
    """
    if fraction >= 1.0:
        return 0
    counts = Counter(labels)
    raised = [count for count in counts.values() if round(fraction * count) < 1]
    if raised:
        labelled = sum(max(1, round(fraction * count)) for count in counts.values())
        log.warning(
            "data.fraction=%g is less than one image for %d of %d classes; each of them gets "
            "the 1-image minimum, so %d of %d training images (%.3g%%) are labelled",
            fraction,
            len(raised),
            len(counts),
            labelled,
            len(labels),
            100 * labelled / len(labels),
        )
    return len(raised)
