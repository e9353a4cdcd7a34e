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

When DALI fails on a batch, the files it refuses are found by running halves of the
batch (on fresh pipelines: DALI's is unusable after an error). Those PIL cannot read
either are substituted like any other unreadable image; those PIL reads (GIF, PNG and
JPEG variants DALI's decoder lacks) are decoded by PIL from then on and given the
torchvision backend's view of the item's window and flip, each named once in a
warning. The batch then runs again.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mile_ssl.data.augment import TrainView, crop_window, decode_rgb, eval_transform, item_rng
from mile_ssl.data.dali_items import DaliItems, Entry, Key, key_index
from mile_ssl.data.dali_pipeline import EVAL, DaliPipelines, eval_geometry
from mile_ssl.data.images import UnreadableImageError, load_rgb
from mile_ssl.data.sampling import (
    SemiSupervisedBatchSampler,
    StepBatchSampler,
    check_same_stream,
    item_seed,
)

_QUEUE_BATCHES = 2
"""Batches prepared ahead of the training step by the loader's thread."""


class DaliLoader:
    """Batches decoded by DALI, in the order and layout of the torchvision loaders.

    Training: the batches of a step-indexed sampler, each item cropped and flipped
    from its own seed; resumable as :class:`~mile_ssl.data.sampling.StepDataLoader`
    (its state is the stream's identity). Validation: ``batches`` of item indices,
    resized and centre-cropped. A thread prepares the next batches while the model
    trains on the current one.

    Files DALI's decoder refuses but PIL reads (GIF, some PNG and JPEG variants) are
    decoded by PIL and given the torchvision backend's view of the same window and
    flip (:attr:`DaliItems.pil_decoded` lists them, each named once in a warning).

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
        self._train_view = TrainView(pipelines.image_size, pipelines.preprocessing)
        self._eval_view = eval_transform(pipelines.image_size, pipelines.preprocessing)

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
        """The batch of ``keys`` at training step ``step`` (any step in validation).

        When DALI refuses the batch, the files it refuses are found (by halving the
        batch), and the batch is read again: with those PIL reads decoded by PIL, the
        others substituted. Each retry learns at least one file, so this ends.
        """
        while True:
            entries = [self._entry(key, seed, step) for key in keys]
            by_pil = self._pil_views(entries)
            if by_pil is None:
                continue  # a file PIL read before no longer decodes: now substituted
            by_dali = [entry for row, entry in enumerate(entries) if row not in by_pil]
            try:
                decoded = self._decode(by_dali) if by_dali else None
            except RuntimeError as error:
                self._pipeline = None
                if not self._learn_refused(by_dali, error):
                    raise ValueError(
                        "DALI cannot decode a batch whose files it decodes one by one: "
                        f"{[entry.path for entry in by_dali]}: {error}"
                    ) from error
                continue
            images = self._merge(len(entries), decoded, by_pil)
            stacked = {
                name: torch.stack([entry.fields[name] for entry in entries])
                for name in entries[0].fields
            }
            return {"image": images, **stacked}

    def _entry(self, key: Key, seed: int, step: int) -> Entry:
        path, data, height, width, fields = self.items.read(key)
        item = item_seed(seed, step, key_index(key)) if self.training else None
        return Entry(path, data, height, width, fields, item)

    def _pil_views(self, entries: Sequence[Entry]) -> dict[int, Tensor] | None:
        """The views of the rows whose files PIL decodes, by row.

        ``None`` if one of them failed after all: the file is then marked undecodable.
        """
        views = {}
        for row, entry in enumerate(entries):
            if entry.path not in self.items.pil_decoded:
                continue
            try:
                views[row] = self._pil_view(entry)
            except UnreadableImageError:
                del self.items.pil_decoded[entry.path]
                self.items.undecodable.add(entry.path)
                return None
        return views

    def _pil_view(self, entry: Entry) -> Tensor:
        """What the torchvision backend makes of the entry's file (same window and flip)."""
        if entry.seed is None:
            view: Tensor = self._eval_view(load_rgb(entry.path))
            return view
        pixels = decode_rgb(entry.path)
        generator = torch.Generator().manual_seed(entry.seed)
        window = crop_window(pixels.shape[-2], pixels.shape[-1], item_rng(generator))
        return self._train_view.apply(pixels, window)

    def _merge(self, rows: int, decoded: Tensor | None, by_pil: dict[int, Tensor]) -> Tensor:
        """DALI's images and PIL's, each in its row."""
        if not by_pil:
            assert decoded is not None
            return decoded
        size = self.pipelines.image_size
        device = decoded.device if decoded is not None else self.pipelines.device
        images = torch.empty((rows, 3, size, size), dtype=torch.float32, device=device)
        dali_rows = [row for row in range(rows) if row not in by_pil]
        if decoded is not None:
            images[dali_rows] = decoded
        for row, view in by_pil.items():
            images[row] = view.to(device)
        return images

    def _decode(self, entries: Sequence[Entry]) -> Tensor:
        """DALI's images of ``entries``.

        Raises:
            RuntimeError: If DALI fails on the batch (the pipeline is then unusable).
        """
        if self._pipeline is None:
            self._pipeline = self.pipelines.build(self.training)
        for name, values in self._feed(entries).items():
            self._pipeline.feed_input(name, values)
        (images,) = self._pipeline.run()
        return self.pipelines.to_torch(images)

    def _refused(self, entries: Sequence[Entry], error: str) -> list[tuple[Entry, str]]:
        """The entries DALI refuses, with its words, found by halving ``entries``.

        ``entries`` were refused together, with ``error``.
        """
        if len(entries) == 1:
            return [(entries[0], error)]
        found: list[tuple[Entry, str]] = []
        half = len(entries) // 2
        for part in (entries[:half], entries[half:]):
            try:
                self._decode(part)
            except RuntimeError as failure:
                self._pipeline = None
                found += self._refused(part, str(failure))
        return found

    def _learn_refused(self, entries: Sequence[Entry], error: RuntimeError) -> bool:
        """Find and record the files DALI refuses among ``entries``; whether it refused any.

        ``entries`` were refused together, with ``error``. None refused alone means
        the batch as a whole failed.
        """
        found = {entry.path: message for entry, message in self._refused(entries, str(error))}
        for path, message in found.items():
            self.items.refused(path, _decoder_message(message))
        return bool(found)

    def _feed(self, entries: Sequence[Entry]) -> dict[str, list[np.ndarray]]:
        """The pipeline's inputs for ``entries``: bytes, and windows or geometry."""
        feed: dict[str, list[np.ndarray]] = {"encoded": [entry.data for entry in entries]}
        if not self.training:
            columns = zip(
                *(eval_geometry(e.height, e.width, self.pipelines.image_size) for e in entries),
                strict=True,
            )
            for name, column in zip(EVAL, columns, strict=True):
                feed[name] = [np.array(value, dtype=np.float32) for value in column]
            return feed
        anchors, shapes, flips = [], [], []
        for entry in entries:
            assert entry.seed is not None
            generator = torch.Generator().manual_seed(entry.seed)
            window = crop_window(entry.height, entry.width, item_rng(generator))
            anchors.append(np.array([window.left, window.top], dtype=np.float32))
            shapes.append(np.array([window.width, window.height], dtype=np.float32))
            flips.append(np.array(int(window.flip), dtype=np.int32))
        return feed | {"anchor": anchors, "shape": shapes, "flip": flips}

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


def _decoder_message(error: str) -> str:
    """What a DALI error says went wrong, shortened.

    The line after ``encountered:`` (DALI's operator trace comes before it), else the
    first line.
    """
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    if "encountered:" in lines[:-1]:
        lines = lines[lines.index("encountered:") + 1 :]
    return (lines[0] if lines else "no reason given")[:200]
