"""The DALI pipelines of ``data.backend=dali``, and DALI itself, an optional dependency.

Training: decode only the item's crop window (given in pixels from Python), resize it to
``image_size``, flip as told, normalise. Validation: decode, resize and centre-crop with
the geometry torchvision's evaluation view computes (:func:`eval_geometry`). Both run
on the GPU (``mixed`` decoding) where a CUDA device is given, on the CPU otherwise.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mile_ssl.data.augment import eval_resize
from mile_ssl.extras import MissingExtraError, extra_imports, import_extra
from mile_ssl.networks.preprocessing import Preprocessing

DaliUnavailableError = MissingExtraError
"""``data.backend=dali`` was chosen where NVIDIA DALI cannot be imported."""


def import_dali() -> ModuleType:
    """The ``nvidia.dali`` package.

    Raises:
        DaliUnavailableError: Saying how to install it.
    """
    return import_extra(
        "nvidia.dali", "dali", "data.backend=dali", otherwise="set data.backend=torchvision"
    )


EVAL = ("resize_x", "resize_y", "crop_pos_x", "crop_pos_y")
"""Per-image inputs of the validation pipeline (see :func:`eval_geometry`)."""


def eval_geometry(height: int, width: int, image_size: int) -> tuple[float, float, float, float]:
    """Resized width and height, and centre-crop position, as torchvision computes them.

    The shorter side becomes :func:`~mile_ssl.data.augment.eval_resize` (the longer one
    scaled and truncated), then the ``image_size`` crop starts at the rounded centre;
    positions are given as DALI's shares of the free space.
    """
    short = eval_resize(image_size)
    if width <= height:
        new_width, new_height = short, int(short * height / width)
    else:
        new_width, new_height = int(short * width / height), short
    top = round((new_height - image_size) / 2)
    left = round((new_width - image_size) / 2)
    spare_y, spare_x = new_height - image_size, new_width - image_size
    return (
        float(new_width),
        float(new_height),
        left / spare_x if spare_x > 0 else 0.5,
        top / spare_y if spare_y > 0 else 0.5,
    )


class DaliPipelines:
    """Builds the training and validation pipelines of one configuration.

    Args:
        image_size: Side of the square images.
        preprocessing: Normalisation the backbone expects.
        max_batch: The most images of one batch.
        threads: DALI worker threads.
        device_id: CUDA device to decode on, ``None`` for the CPU.
    """

    def __init__(
        self,
        image_size: int,
        preprocessing: Preprocessing,
        max_batch: int,
        threads: int,
        device_id: int | None,
    ) -> None:
        self.dali = import_dali()
        self.image_size = image_size
        self.preprocessing = preprocessing
        self.mean = [255 * value for value in preprocessing.mean]
        self.std = [255 * value for value in preprocessing.std]
        self.max_batch = max_batch
        self.threads = max(1, threads)
        self.device_id = device_id

    def build(self, training: bool) -> Any:
        """A new pipeline: training (window decode, resize, flip) or validation."""
        fn, types = self.dali.fn, self.dali.types
        decoder = "mixed" if self.device_id is not None else "cpu"
        size = self.image_size

        @self.dali.pipeline_def(
            batch_size=self.max_batch,
            num_threads=self.threads,
            device_id=self.device_id,
            exec_async=False,
            exec_pipelined=False,
        )
        def pipeline() -> Any:
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            if not training:
                resized = [
                    fn.external_source(name=name, dtype=types.FLOAT, ndim=0) for name in EVAL
                ]
                images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB)
                images = fn.resize(images, resize_x=resized[0], resize_y=resized[1], antialias=True)
                return fn.crop_mirror_normalize(
                    images,
                    crop=(size, size),
                    crop_pos_x=resized[2],
                    crop_pos_y=resized[3],
                    mean=self.mean,
                    std=self.std,
                    output_layout="CHW",
                )
            anchor = fn.external_source(name="anchor", dtype=types.FLOAT, ndim=1)
            shape = fn.external_source(name="shape", dtype=types.FLOAT, ndim=1)
            flip = fn.external_source(name="flip", dtype=types.INT32, ndim=0)
            images = fn.decoders.image_slice(
                encoded,
                anchor,
                shape,
                device=decoder,
                output_type=types.RGB,
                axis_names="WH",
                normalized_anchor=False,
                normalized_shape=False,
            )
            images = fn.resize(images, size=[size, size], antialias=True)
            return fn.crop_mirror_normalize(
                images, mirror=flip, mean=self.mean, std=self.std, output_layout="CHW"
            )

        built = pipeline()
        built.build()
        return built

    @property
    def device(self) -> torch.device:
        """Where the pipelines' batches are: the CUDA device decoded on, or the CPU."""
        if self.device_id is None:
            return torch.device("cpu")
        return torch.device("cuda", self.device_id)

    def to_torch(self, output: Any) -> Tensor:
        """A DALI batch of equal-shaped images as a float tensor on its device."""
        dense = output.as_tensor()
        if self.device_id is None:
            return torch.from_numpy(np.array(dense))
        with extra_imports("dali", "data.backend=dali"):
            from nvidia.dali.plugin.pytorch import feed_ndarray

        tensor = torch.empty(dense.shape(), dtype=torch.float32, device=f"cuda:{self.device_id}")
        feed_ndarray(dense, tensor, cuda_stream=torch.cuda.current_stream(self.device_id))
        return tensor
