"""The files behind ``data.backend=dali``'s batches: each item's bytes, fields and stand-in.

:class:`DaliItems` reads an item as the torchvision backend's datasets do (its own file,
or a substitute of its class when that cannot be read) and hands DALI the encoded bytes
with the image's size from its header; it also remembers what DALI's decoder taught it
about files: those no decoder reads, and those only PIL reads.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mile_ssl.data.images import (
    DECODE_ERRORS,
    UnreadableImageError,
    describe_decode_error,
    load_rgb,
)
from mile_ssl.data.substitution import SubstitutingImages

log = logging.getLogger(__name__)


def read_encoded(path: str) -> tuple[np.ndarray, int, int]:
    """The bytes of the image file ``path`` and its height and width (from its header).

    Raises:
        UnreadableImageError: If the file is missing, empty or not an image, or if an
            earlier DALI batch found that it cannot be decoded.
    """
    try:
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except DECODE_ERRORS as error:
        raise UnreadableImageError(path, describe_decode_error(path, error)) from error
    return np.frombuffer(data, dtype=np.uint8), height, width


Key = int | tuple[int, bool]
"""A batch sampler's item: an index, or ``(index, labelled)`` in semi-supervised batches."""


def key_index(key: Key) -> int:
    """The item index of a batch sampler's key."""
    return key[0] if isinstance(key, tuple) else key


@dataclass
class Entry:
    """One item of a batch as read: the file served (its own or a substitute) and more.

    ``seed`` is the item's augmentation seed in training, ``None`` in validation.
    """

    path: str
    data: np.ndarray
    height: int
    width: int
    fields: dict[str, Tensor]
    seed: int | None


class DaliItems:
    """Training or validation items: which dataset holds an index, and its fields.

    Remembers what DALI taught it about files: those no decoder reads
    (``undecodable``: substituted from then on) and those only PIL reads
    (``pil_decoded``: decoded by PIL from then on, with the reason DALI gave).

    Args:
        datasets: The datasets in index order (the training set, then appended
            unlabeled images); indices run on from one to the next.
    """

    def __init__(self, datasets: Sequence[SubstitutingImages]) -> None:
        self.datasets = list(datasets)
        self.undecodable: set[str] = set()
        self.pil_decoded: dict[str, str] = {}

    def locate(self, index: int) -> tuple[SubstitutingImages, int]:
        """The dataset holding item ``index`` and the item's position in it."""
        for dataset in self.datasets:
            if index < len(dataset):
                return dataset, index
            index -= len(dataset)
        raise IndexError(f"item {index} is outside the dataset")

    def _reader(self, path: str) -> tuple[str, np.ndarray, int, int]:
        if path in self.undecodable:
            raise UnreadableImageError(path, "cannot be decoded (found by DALI)")
        return (path, *read_encoded(path))

    def read(self, key: Key) -> tuple[str, np.ndarray, int, int, dict[str, Tensor]]:
        """The file served for ``key``, its bytes, height and width, and the item's fields.

        The file is the item's own, or its substitute when that cannot be read.
        A ``(index, labelled)`` key marks the item as in
        :class:`~mile_ssl.data.sampling.FlaggedDataset` (label -1 when unlabeled).
        """
        dataset, position = self.locate(key_index(key))
        (path, data, height, width), source = dataset.read(position, self._reader)
        fields = dataset.fields(position, source)
        if isinstance(key, tuple):
            fields["labelled"] = torch.tensor(key[1])
            if not key[1]:
                fields["label"] = torch.tensor(-1)
        return path, data, height, width, fields

    def refused(self, path: str, reason: str) -> None:
        """Record that DALI cannot decode ``path``.

        PIL decodes it from then on; if PIL cannot either, it is substituted.
        """
        try:
            load_rgb(path)
        except UnreadableImageError:
            self.undecodable.add(path)
            return
        self.pil_decoded[path] = reason
        log.warning(
            "%s: DALI cannot decode it (%s); PIL decodes it instead, into the torchvision "
            "backend's view of it (%d such file(s) so far)",
            path,
            reason,
            len(self.pil_decoded),
        )
