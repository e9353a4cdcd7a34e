"""The Lightning data module: labelled training stream and multi-label validation set."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from mile_ssl.config import DataConfig
from mile_ssl.data.folder import UnlabeledImages, list_unlabeled_images, read_split_file
from mile_ssl.data.sampling import (
    FlaggedDataset,
    SemiSupervisedBatchSampler,
    StepBatchSampler,
    StepDataLoader,
    stratified_fraction,
)
from mile_ssl.data.sources import SOURCES
from mile_ssl.preprocessing import Preprocessing


def data_loader(
    config: DataConfig,
    dataset: Dataset[Any],
    *,
    batch_sampler: Sampler[Any] | None = None,
    sampler: Sampler[int] | None = None,
) -> DataLoader[Any]:
    """A loader with the worker, pinning and prefetch settings of ``config``.

    With a ``batch_sampler`` it is a resumable :class:`StepDataLoader` (training);
    otherwise it serves ``data.eval_batch_size`` (default ``data.batch_size``) images
    per batch in order (evaluation).
    """
    workers = config.num_workers
    loader_class = DataLoader if batch_sampler is None else StepDataLoader
    return loader_class(
        dataset,
        batch_size=(config.eval_batch_size or config.batch_size) if batch_sampler is None else 1,
        sampler=sampler,
        batch_sampler=batch_sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


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
    """

    def __init__(
        self,
        config: DataConfig,
        preprocessing: Preprocessing,
        unlabeled: UnlabeledStream | None = None,
        strong_student_view: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        self.unlabeled = unlabeled
        self.splits = SOURCES[config.name](config, preprocessing, strong_student_view)
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
    def labelled_digest(self) -> str:
        """SHA-256 of the labelled indices: equal digests mean equal label splits."""
        return hashlib.sha256(",".join(map(str, self.train_indices)).encode()).hexdigest()

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
        if self.unlabeled is None:
            if external:
                raise ValueError(
                    "data.unlabeled_root / data.unlabeled_list are set, but this method uses "
                    "no unlabeled images (use method=mile_semi, distill or self_train)"
                )
            return self.splits.train, []
        num_train = len(self.splits.train_labels)
        if external:
            images = UnlabeledImages(
                list_unlabeled_images(config.unlabeled_root, config.unlabeled_list),
                self.splits.image_transform,
                self.num_classes,
                first_index=num_train,
            )
            indices = list(range(num_train, num_train + len(images)))
            return ConcatDataset([self.splits.train, images]), indices
        labelled = set(self.train_indices)
        indices = [index for index in range(num_train) if index not in labelled]
        if not indices:
            raise ValueError(
                "semi-supervised training needs unlabeled images, but every training image "
                "is labelled: set data.fraction below 1 (or a smaller data.split_file), or "
                "data.unlabeled_root"
            )
        return self.splits.train, indices

    def _labelled_indices(self) -> list[int]:
        split_file = self.config.split_file or self.splits.default_split_file
        if split_file is not None:
            if self.splits.train_names is None:
                raise ValueError(
                    f"data.split_file needs a dataset of files; data.name={self.config.name}"
                )
            return read_split_file(split_file, self.splits.train_names, self.config.allow_missing)
        return stratified_fraction(
            self.splits.train_labels, self.config.fraction, self.config.split_seed
        )

    def train_dataloader(self) -> DataLoader[dict[str, torch.Tensor]]:
        """Batches of the current step onwards (see :class:`StepBatchSampler`)."""
        trainer = self.trainer
        start_step = (lambda: trainer.global_step) if trainer is not None else (lambda: 0)
        rank = trainer.global_rank if trainer is not None else 0
        world_size = trainer.world_size if trainer is not None else 1
        sampler = StepBatchSampler(
            self.train_indices,
            self.config.batch_size,
            self.config.split_seed,
            start_step,
            rank,
            world_size,
        )
        if self.unlabeled is None:
            return data_loader(self.config, self.splits.train, batch_sampler=sampler)
        unlabeled = StepBatchSampler(
            self.unlabeled_indices,
            self.config.batch_size * self.unlabeled.ratio,
            self.config.split_seed + UNLABELED_SEED_OFFSET,
            start_step,
            rank,
            world_size,
        )
        semi = SemiSupervisedBatchSampler(sampler, unlabeled, self.unlabeled.uses_unlabeled)
        return data_loader(self.config, FlaggedDataset(self.train_dataset), batch_sampler=semi)

    def val_dataloader(self) -> DataLoader[dict[str, torch.Tensor]]:
        """The validation set in order, sharded across ranks."""
        sampler: Sampler[int] | None = None
        if self.trainer is not None and self.trainer.world_size > 1:
            sampler = DistributedSampler(
                self.splits.val,
                num_replicas=self.trainer.world_size,
                rank=self.trainer.global_rank,
                shuffle=False,
            )
        return data_loader(self.config, self.splits.val, sampler=sampler)
