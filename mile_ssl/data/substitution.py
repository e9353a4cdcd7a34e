"""Reading image files with substitution: an unreadable image is replaced, never fatal."""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mile_ssl.data.augment import image_view
from mile_ssl.data.images import UnreadableImageError

log = logging.getLogger(__name__)

BAD_INDEX_KEY = "bad_index"
"""Item key marking a substituted image: the index of the item whose file was unreadable."""

NO_BAD_INDEX = -1
"""``bad_index`` of an item whose own image was read."""

Read = TypeVar("Read")


class SubstitutingImages(Dataset[dict[str, Tensor]]):
    """Image files read with substitution: an unreadable image is replaced, never fatal.

    An item whose image cannot be decoded (see :func:`load_rgb`) gets the next readable
    image among its substitutes (:meth:`substitutes`: its class, in sample order,
    wrapping around), keeps its ``index`` and label, and has ``bad_index`` = its index
    (``-1`` when its own image was read). The choice depends only on which files are
    readable, so every worker, rank, resumed run and input pipeline makes the same one.

    Subclasses list their files and say which items may stand in for which.
    """

    transform: Callable[..., Any] | None
    known_bad_indices: frozenset[int]

    def __init__(self) -> None:
        self._reported: set[int] = set()

    def file_of(self, position: int) -> str:
        """The file of item ``position`` (counted from 0)."""
        raise NotImplementedError

    def substitutes(self, position: int) -> Sequence[int]:
        """Sorted positions that may replace item ``position`` (``position`` among them)."""
        raise NotImplementedError

    def none_readable(self, position: int) -> str:
        """Start of the error message when no substitute of ``position`` is readable."""
        raise NotImplementedError

    def fields(self, position: int, source: int) -> dict[str, Tensor]:
        """The entries besides the image of item ``position`` served from ``source``."""
        raise NotImplementedError

    def read(self, position: int, reader: Callable[[str], Read]) -> tuple[Read, int]:
        """``reader`` of item ``position``'s file, or of its first readable substitute.

        Args:
            position: The requested item.
            reader: Reads a file; raises :class:`UnreadableImageError` when it cannot.

        Returns:
            What ``reader`` returned and the position it was read from.

        Raises:
            ValueError: When no substitute is readable, naming the file and why.
        """
        path = self.file_of(position)
        if position in self.known_bad_indices:
            reason = "listed as unreadable by an earlier run"
        else:
            try:
                return reader(path), position
            except UnreadableImageError as error:
                reason = error.reason
        candidates = self.substitutes(position)
        start = bisect.bisect_left(candidates, position)
        for offset in range(1, len(candidates)):
            candidate = candidates[(start + offset) % len(candidates)]
            if candidate in self.known_bad_indices:
                continue
            try:
                value = reader(self.file_of(candidate))
            except UnreadableImageError:
                continue
            if position not in self._reported:
                self._reported.add(position)
                log.warning(
                    "%s: unreadable (%s); using %s instead", path, reason, self.file_of(candidate)
                )
            return value, candidate
        raise ValueError(
            f"{self.none_readable(position)} ({len(candidates)} files; e.g. {path}: {reason}): "
            "replace or remove them (mile-ssl check-data lists every unreadable file)"
        )

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        position = range(len(self))[index]
        image, source = self.read(position, lambda path: image_view(self.transform, path))
        return {**image, **self.fields(position, source)}

    def __len__(self) -> int:
        raise NotImplementedError


class WithBadIndex(Dataset[dict[str, Any]]):
    """Items of ``dataset`` with ``bad_index`` = -1 added where they lack one.

    Datasets that read no files (the digit grids) never substitute an image; the key
    lets their items collate with :class:`~mile_ssl.data.folder.UnlabeledImages`
    items, and lets the training side read ``batch["bad_index"]`` whatever the dataset.
    """

    def __init__(self, dataset: Dataset[dict[str, Any]]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return _with_bad_index(self.dataset[index])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Batched reads where the dataset has them (the digit grids' fast path)."""
        batched = getattr(self.dataset, "__getitems__", None)
        items = batched(indices) if batched is not None else [self.dataset[i] for i in indices]
        return [_with_bad_index(item) for item in items]


def _with_bad_index(item: dict[str, Any]) -> dict[str, Any]:
    if BAD_INDEX_KEY in item:
        return item
    return {**item, BAD_INDEX_KEY: torch.tensor(NO_BAD_INDEX)}
