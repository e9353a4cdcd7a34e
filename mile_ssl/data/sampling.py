"""Which training images carry labels, and in which order batches visit them.

Both are pure functions of seeds and the step counter, never of process-local random
state, so every DDP rank agrees on the labelled subset and a resumed run sees exactly
the batches it would have seen without interruption.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

_SEED_MASK = (1 << 63) - 1


def item_seed(seed: int, step: int, index: int) -> int:
    """The augmentation seed of item ``index`` at training step ``step``.

    A SplitMix64-style hash, so that neighbouring steps and indices get unrelated
    streams. An index occurs at most once per step and rank (labelled and unlabeled
    indices are disjoint), so every drawn image gets its own seed.
    """
    value = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + index) & _SEED_MASK
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _SEED_MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _SEED_MASK
    return value ^ (value >> 31)


def stratified_fraction(
    labels: Sequence[int] | torch.Tensor, fraction: float, seed: int
) -> list[int]:
    """Indices of a seeded per-class sample of ``fraction`` of the images.

    Each class keeps ``max(1, round(fraction * n_c))`` of its ``n_c`` images, so rare
    classes stay represented at 1 % labels.

    Args:
        labels: Class index of every training image.
        fraction: Share in (0, 1].
        seed: Seed of the choice.

    Returns:
        Sorted indices into ``labels``.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels_tensor = torch.as_tensor(labels, dtype=torch.long)
    if fraction == 1.0:
        return list(range(len(labels_tensor)))
    generator = torch.Generator().manual_seed(seed)
    chosen: list[torch.Tensor] = []
    for label in torch.unique(labels_tensor, sorted=True).tolist():
        members = torch.nonzero(labels_tensor == label).flatten()
        keep = max(1, round(fraction * len(members)))
        order = torch.randperm(len(members), generator=generator)
        chosen.append(members[order[:keep]])
    return sorted(torch.cat(chosen).tolist())


class StepBatchSampler(Sampler[list[int]]):
    """Batches indexed by training step: step ``s`` of rank ``r`` is a fixed batch.

    The index list is shuffled once per pass (seeded by ``seed`` and the pass number);
    pass ``p`` covers steps ``[p * L, (p + 1) * L)`` with ``L = len(self)``. Each step
    takes ``batch_size * world_size`` indices and rank ``r`` gets its slice, so ranks
    never overlap. Iteration starts at ``start_step()``, read when the iterator is
    created: after a restore that is the restored step, and the rest of that pass
    follows, exactly as in an uninterrupted run.

    Args:
        indices: Dataset indices to draw from.
        batch_size: Indices per rank and step.
        seed: Shuffle seed.
        start_step: Returns the first step to yield (e.g. ``lambda: trainer.global_step``).
        rank: This process's rank.
        world_size: Number of processes.
    """

    def __init__(
        self,
        indices: Sequence[int],
        batch_size: int,
        seed: int,
        start_step: Callable[[], int] = lambda: 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        global_batch = batch_size * world_size
        if len(indices) < global_batch:
            raise ValueError(
                f"{len(indices)} training images cannot fill one step of {batch_size} images "
                f"x {world_size} processes; lower data.batch_size"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.indices = torch.as_tensor(list(indices), dtype=torch.long)
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        """Steps per pass over the indices (an incomplete last step is dropped)."""
        return len(self.indices) // (self.batch_size * self.world_size)

    def batch(self, step: int) -> list[int]:
        """This rank's indices at training step ``step``."""
        pass_index, step_in_pass = divmod(step, len(self))
        return self._rank_slice(self._pass_order(pass_index), step_in_pass)

    def _rank_slice(self, order: torch.Tensor, step_in_pass: int) -> list[int]:
        start = (step_in_pass * self.world_size + self.rank) * self.batch_size
        return self.indices[order[start : start + self.batch_size]].tolist()

    def _pass_order(self, pass_index: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + pass_index)
        return torch.randperm(len(self.indices), generator=generator)

    def identity(self) -> dict[str, Any]:
        """What identifies the stream, for checks when resuming."""
        return {
            "seed": self.seed,
            "num_indices": len(self.indices),
            "indices_checksum": int(self.indices.sum()),
        }

    def __iter__(self) -> Iterator[list[int]]:
        """Yield the batches from ``start_step()`` to the end of its pass."""
        pass_index, first = divmod(self.start_step(), len(self))
        order = self._pass_order(pass_index)
        for step_in_pass in range(first, len(self)):
            yield self._rank_slice(order, step_in_pass)


class SemiSupervisedBatchSampler(Sampler[list[tuple[int, bool]]]):
    """Labelled batches, plus unlabeled images in the steps that use them.

    Both streams are :class:`StepBatchSampler` s with their own seeds, indexed by the
    same step, so each advances independently of the other, is sharded across ranks
    and resumes exactly. Items are ``(index, labelled)`` pairs for
    :class:`FlaggedDataset`.

    Args:
        labelled: The labelled stream; its passes define the epochs.
        unlabeled: The unlabeled stream (batch ``unlabeled_ratio`` x the labelled one).
        uses_unlabeled: Whether training step ``step`` takes unlabeled images (only the
            MILe student phase does; the teacher learns from labels alone).
    """

    def __init__(
        self,
        labelled: StepBatchSampler,
        unlabeled: StepBatchSampler,
        uses_unlabeled: Callable[[int], bool],
    ) -> None:
        self.labelled = labelled
        self.unlabeled = unlabeled
        self.uses_unlabeled = uses_unlabeled

    def __len__(self) -> int:
        """Steps per pass over the labelled images."""
        return len(self.labelled)

    def identity(self) -> dict[str, Any]:
        """Identity of both streams."""
        unlabeled = {f"unlabeled_{key}": value for key, value in self.unlabeled.identity().items()}
        return {**self.labelled.identity(), **unlabeled}

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        """Yield ``(index, labelled)`` batches from the labelled stream's start step."""
        step = self.labelled.start_step()
        for labelled_batch in self.labelled:
            batch = [(index, True) for index in labelled_batch]
            if self.uses_unlabeled(step):
                batch += [(index, False) for index in self.unlabeled.batch(step)]
            yield batch
            step += 1


class SeededBatchSampler(Sampler[list[tuple[Any, int]]]):
    """The batches of ``batches``, each key paired with its item's augmentation seed.

    With :class:`SeededItems` every item is augmented from :func:`item_seed` (the
    stream's seed, the step, the item's index) instead of from a free-running random
    state, so a resumed run augments its batches exactly as an uninterrupted one.

    Args:
        batches: The step-indexed stream (keys are indices or ``(index, labelled)``).
    """

    def __init__(self, batches: StepBatchSampler | SemiSupervisedBatchSampler) -> None:
        self.batches = batches
        self.stream = batches if isinstance(batches, StepBatchSampler) else batches.labelled

    def __len__(self) -> int:
        """Steps per pass, as ``batches``."""
        return len(self.batches)

    def identity(self) -> dict[str, Any]:
        """Identity of the stream, as ``batches``."""
        return self.batches.identity()

    def __iter__(self) -> Iterator[list[tuple[Any, int]]]:
        """Yield ``(key, seed)`` batches from the stream's start step."""
        step = self.stream.start_step()
        for batch in self.batches:
            yield [(key, item_seed(self.stream.seed, step, _index_of(key))) for key in batch]
            step += 1


def _index_of(key: int | tuple[int, bool]) -> int:
    return key[0] if isinstance(key, tuple) else key


class SeededItems(Dataset[dict[str, Any]]):
    """Items of ``dataset`` read with torch's random state seeded by their own seed.

    Keys are ``(key of dataset, seed)`` pairs from :class:`SeededBatchSampler`. The
    caller's random state is left as it was.
    """

    def __init__(self, dataset: Dataset[dict[str, Any]]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[Any, int]) -> dict[str, Any]:
        inner, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[inner]


class FlaggedDataset(Dataset[dict[str, Any]]):
    """Items of ``dataset`` marked labelled or not; unlabeled items carry label -1.

    The -1 makes any accidental use of an unlabeled image's label as ground truth fail
    (``one_hot`` and ``cross_entropy`` reject it) instead of silently leaking labels.
    """

    def __init__(self, dataset: Dataset[dict[str, Any]]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, bool]) -> dict[str, Any]:
        index, labelled = key
        item = dict(self.dataset[index])
        item["labelled"] = torch.tensor(labelled)
        if not labelled:
            item["label"] = torch.tensor(-1)
        return item


def check_same_stream(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to continue a run on a different labelled subset or shuffle seed.

    Raises:
        ValueError: Naming the first identity key (see ``identity()``) that differs.
    """
    for key, value in saved.items():
        if current.get(key) != value:
            raise ValueError(
                f"cannot resume: the checkpoint's training stream has {key}={value}, this "
                f"run has {current.get(key)} (check data.fraction, data.split_file and "
                "data.split_seed)"
            )


class StepDataLoader(DataLoader[Any]):
    """A loader over a :class:`StepBatchSampler`, resumable through Lightning.

    Its position needs no saving (the sampler starts at the restored step); what is
    saved is the identity of the stream, so that resuming with another labelled
    subset or seed fails instead of silently training on different data.
    """

    batch_sampler: StepBatchSampler | SemiSupervisedBatchSampler | SeededBatchSampler

    def state_dict(self) -> dict[str, Any]:
        """Identity of the training stream."""
        return self.batch_sampler.identity()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Refuse to continue a run on a different labelled subset or shuffle seed."""
        check_same_stream(state_dict, self.state_dict())
