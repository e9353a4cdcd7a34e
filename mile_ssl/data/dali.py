"""``data.backend=dali``: JPEG decoding and augmentation by NVIDIA DALI.

Python decides everything that makes a run reproducible and DALI does the pixel work:
the step-indexed batch samplers (:mod:`mile_ssl.data.sampling`) pick the items, the
datasets read each file's bytes (substituting unreadable images exactly as the
torchvision backend does), and each item's crop window and flip are drawn from its own
seed (:func:`~mile_ssl.data.sampling.item_seed`) with the torchvision backend's
:func:`~mile_ssl.data.augment.crop_window`. DALI decodes the window (``mixed``, on the
GPU, where CUDA is present; on the CPU otherwise), resizes it and normalises it with the
backbone's preprocessing. Label fractions, split lists, rank sharding, the unlabeled
stream and exact resume therefore behave as with the torchvision backend, and both
backends cut the same windows.

A file DALI fails to decode is decoded once more with PIL to tell which file of the
batch it was; unreadable ones are then substituted like any other, and the batch runs
again on a fresh pipeline (DALI's is unusable after an error).
"""

from __future__ import annotations

import io
import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mile_ssl.data.augment import crop_window, item_rng
from mile_ssl.data.dali_pipeline import EVAL, DaliPipelines, eval_geometry
from mile_ssl.data.images import (
    DECODE_ERRORS,
    UnreadableImageError,
    describe_decode_error,
    load_rgb,
)
from mile_ssl.data.sampling import (
    SemiSupervisedBatchSampler,
    StepBatchSampler,
    check_same_stream,
    item_seed,
)
from mile_ssl.data.substitution import SubstitutingImages

_QUEUE_BATCHES = 2
"""Batches prepared ahead of the training step by the loader's thread."""


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


class DaliItems:
    """Training or validation items: which dataset holds an index, and its fields.

    Args:
        datasets: The datasets in index order (the training set, then appended
            unlabeled images); indices run on from one to the next.
    """

    def __init__(self, datasets: Sequence[SubstitutingImages]) -> None:
        self.datasets = list(datasets)
        self.undecodable: set[str] = set()

    def locate(self, index: int) -> tuple[SubstitutingImages, int]:
        """The dataset holding item ``index`` and the item's position in it."""
        for dataset in self.datasets:
            if index < len(dataset):
                return dataset, index
            index -= len(dataset)
        raise IndexError(f"item {index} is outside the dataset")

    def _reader(self, path: str) -> tuple[np.ndarray, int, int]:
        if path in self.undecodable:
            raise UnreadableImageError(path, "cannot be decoded (found by DALI)")
        return read_encoded(path)

    def read(self, key: int | tuple[int, bool]) -> tuple[np.ndarray, int, int, dict[str, Tensor]]:
        """The encoded image (or its substitute), its height and width, and the item's fields.

        A ``(index, labelled)`` key marks the item as in
        :class:`~mile_ssl.data.sampling.FlaggedDataset` (label -1 when unlabeled).
        """
        index = key[0] if isinstance(key, tuple) else key
        dataset, position = self.locate(index)
        (data, height, width), source = dataset.read(position, self._reader)
        fields = dataset.fields(position, source)
        if isinstance(key, tuple):
            fields["labelled"] = torch.tensor(key[1])
            if not key[1]:
                fields["label"] = torch.tensor(-1)
        return data, height, width, fields

    def find_undecodable(self, keys: Sequence[int | tuple[int, bool]]) -> list[str]:
        """Files of ``keys`` (as read) that PIL cannot decode either; remembered."""
        found = []
        for key in keys:
            index = key[0] if isinstance(key, tuple) else key
            dataset, position = self.locate(index)
            _, source = dataset.read(position, self._reader)
            path = dataset.file_of(source)
            try:
                load_rgb(path)
            except UnreadableImageError:
                found.append(path)
        self.undecodable.update(found)
        return found


Key = int | tuple[int, bool]


class DaliLoader:
    """Batches decoded by DALI, in the order and layout of the torchvision loaders.

    Training: the batches of a step-indexed sampler, each item cropped and flipped
    from its own seed; resumable as :class:`~mile_ssl.data.sampling.StepDataLoader`
    (its state is the stream's identity). Validation: ``batches`` of item indices,
    resized and centre-cropped. A thread prepares the next batches while the model
    trains on the current one.

    Args:
        items: The dataset(s) the keys index.
        pipelines: Builds the DALI pipeline.
        batches: Yields each step's keys; a step sampler for training.
        training: Training (random windows) or validation view.
    """

    def __init__(
        self,
        items: DaliItems,
        pipelines: DaliPipelines,
        batches: StepBatchSampler | SemiSupervisedBatchSampler | Sequence[list[int]],
        training: bool,
    ) -> None:
        self.items = items
        self.pipelines = pipelines
        self.batches = batches
        self.training = training
        self._pipeline: Any = None
        self._stop: threading.Event | None = None
        self._worker: threading.Thread | None = None

    def __len__(self) -> int:
        """Batches per pass."""
        return len(self.batches)

    def state_dict(self) -> dict[str, Any]:
        """Identity of the training stream (see :class:`~mile_ssl.data.sampling.StepDataLoader`)."""
        identity: Callable[[], dict[str, Any]] | None = getattr(self.batches, "identity", None)
        return identity() if identity is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Refuse to continue a run on a different labelled subset or shuffle seed."""
        check_same_stream(state_dict, self.state_dict())

    def _stream(self) -> tuple[int, int]:
        """The seed and first step of the training stream."""
        batches = self.batches
        stream = batches.labelled if isinstance(batches, SemiSupervisedBatchSampler) else batches
        assert isinstance(stream, StepBatchSampler)
        return stream.seed, stream.start_step()

    def run(self, keys: Sequence[Key], seed: int, step: int) -> dict[str, Tensor]:
        """The batch of ``keys`` at training step ``step`` (any step in validation)."""
        for _ in range(len(keys) + 1):
            feed = self._feed(keys, seed, step)
            if self._pipeline is None:
                self._pipeline = self.pipelines.build(self.training)
            for name, values in feed.items():
                if name != "fields":
                    self._pipeline.feed_input(name, values)
            try:
                (images,) = self._pipeline.run()
            except RuntimeError as error:
                self._pipeline = None
                if not self.items.find_undecodable(keys):
                    raise ValueError(
                        "DALI cannot decode a batch whose files PIL reads: "
                        f"{[self._path(key) for key in keys]}: {error}"
                    ) from error
                continue
            fields: list[dict[str, Tensor]] = feed["fields"]
            stacked = {key: torch.stack([item[key] for item in fields]) for key in fields[0]}
            return {"image": self.pipelines.to_torch(images), **stacked}
        raise AssertionError("unreachable: every retry marks at least one file")

    def _path(self, key: Key) -> str:
        dataset, position = self.items.locate(key[0] if isinstance(key, tuple) else key)
        return dataset.file_of(position)

    def _feed(self, keys: Sequence[Key], seed: int, step: int) -> dict[str, Any]:
        encoded, anchors, shapes, flips, fields = [], [], [], [], []
        geometry: list[list[np.ndarray]] = [[] for _ in EVAL]
        for key in keys:
            data, height, width, item = self.items.read(key)
            encoded.append(data)
            fields.append(item)
            if not self.training:
                values = eval_geometry(height, width, self.pipelines.image_size)
                for column, value in zip(geometry, values, strict=True):
                    column.append(np.array(value, dtype=np.float32))
            else:
                index = key[0] if isinstance(key, tuple) else key
                generator = torch.Generator().manual_seed(item_seed(seed, step, index))
                window = crop_window(height, width, item_rng(generator))
                anchors.append(np.array([window.left, window.top], dtype=np.float32))
                shapes.append(np.array([window.width, window.height], dtype=np.float32))
                flips.append(np.array(int(window.flip), dtype=np.int32))
        feed: dict[str, Any] = {"encoded": encoded, "fields": fields}
        if self.training:
            return feed | {"anchor": anchors, "shape": shapes, "flip": flips}
        return feed | dict(zip(EVAL, geometry, strict=True))

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        """The batches of one pass (training: from the start step to the pass's end)."""
        self.close()
        seed, step = self._stream() if self.training else (0, 0)
        batches: Iterator[Sequence[Key]] = iter(self.batches)
        ready: queue.Queue[Any] = queue.Queue(_QUEUE_BATCHES)
        stop = threading.Event()

        def hand_over(item: Any) -> bool:
            """Queue ``item`` unless the pass was abandoned; whether it was queued."""
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for offset, keys in enumerate(batches):
                    if not hand_over(self.run(keys, seed, step + offset)):
                        return
                hand_over(StopIteration())
            except BaseException as error:  # handed to the consumer, which raises it
                hand_over(error)

        self._stop, self._worker = stop, threading.Thread(target=produce, daemon=True)
        self._worker.start()
        try:
            while True:
                batch = ready.get()
                if isinstance(batch, StopIteration):
                    return
                if isinstance(batch, BaseException):
                    raise batch
                yield batch
        finally:
            self.close()

    def close(self) -> None:
        """Stop the thread of an unfinished pass."""
        if self._stop is not None and self._worker is not None:
            self._stop.set()
            self._worker.join()
        self._stop = self._worker = None


def validation_batches(
    num_items: int, batch_size: int, indices: Iterable[int] | None = None
) -> list[list[int]]:
    """``indices`` (default: every item in order) cut into batches of ``batch_size``."""
    order = list(range(num_items) if indices is None else indices)
    count = math.ceil(len(order) / batch_size)
    return [order[number * batch_size : (number + 1) * batch_size] for number in range(count)]
