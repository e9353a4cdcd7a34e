"""Training and evaluation views of image files, with augmentation drawn per item.

The training view is the standard fine-tuning augmentation (random-resized crop to
``image_size``, horizontal flip, normalisation with the backbone's
:class:`~mile_ssl.networks.preprocessing.Preprocessing`). Its random choices come from one seed
per item (:func:`~mile_ssl.data.sampling.item_seed`: the stream's seed, the training
step and the item's index), so a resumed run crops and flips exactly as an
uninterrupted one, and the DALI pipeline (:mod:`mile_ssl.data.dali`) cuts the same
windows as this one.

JPEG files are decoded by ``torchvision.io.decode_jpeg`` and cropped and resized as
uint8 tensors, which measured faster than PIL (with or without ``Image.draft``) on
ImageNet-sized JPEGs (``benchmarks/README.md``); other formats, JPEGs it rejects, and
torchvision releases without it (it is deprecated from 0.29 in favour of TorchCodec) go
through :func:`~mile_ssl.data.images.load_rgb`, which names the file when it fails.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional

from mile_ssl.data.images import load_rgb
from mile_ssl.data.views import image_fields
from mile_ssl.networks.preprocessing import Preprocessing

CROP_SCALE = (0.08, 1.0)
"""Share of the image area a random-resized crop keeps (torchvision's default)."""

CROP_RATIO = (3 / 4, 4 / 3)
"""Aspect ratios (width / height) of a random-resized crop (torchvision's default)."""

EVAL_RESIZE = 256 / 224
"""Evaluation resizes the shorter side to ``image_size`` times this, then centre-crops."""

_JPEG_START = b"\xff\xd8"

try:
    from torchvision.io import ImageReadMode, decode_jpeg

    _FAST_JPEG = True
except ImportError:  # pragma: no cover - torchvision without image decoding
    _FAST_JPEG = False


@dataclass(frozen=True)
class CropWindow:
    """A random-resized crop in pixels of the original image, and whether to flip it."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


def crop_window(height: int, width: int, rng: random.Random) -> CropWindow:
    """The window of torchvision's ``RandomResizedCrop`` (10 tries, then centre) and a flip.

    Args:
        height: Image height in pixels.
        width: Image width in pixels.
        rng: The item's random stream (see :func:`item_rng`).
    """
    area = height * width
    log_low, log_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        aspect = math.exp(rng.uniform(log_low, log_high))
        crop_width = round(math.sqrt(target * aspect))
        crop_height = round(math.sqrt(target / aspect))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = rng.randint(0, height - crop_height)
            left = rng.randint(0, width - crop_width)
            return CropWindow(top, left, crop_height, crop_width, rng.random() < 0.5)
    crop_width, crop_height = width, height
    if width / height < CROP_RATIO[0]:
        crop_height = round(width / CROP_RATIO[0])
    elif width / height > CROP_RATIO[1]:
        crop_width = round(height * CROP_RATIO[1])
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    return CropWindow(top, left, crop_height, crop_width, rng.random() < 0.5)


def item_rng(generator: torch.Generator | None = None) -> random.Random:
    """A random stream for one item, drawn from ``generator`` (default: torch's global one).

    In training the loader seeds torch with
    :func:`~mile_ssl.data.sampling.item_seed` before each item, so the
    stream is a function of the item; the DALI loader passes a generator so seeded.
    """
    return random.Random(int(torch.randint(0, 2**62, (), generator=generator)))


class TrainView:
    """Random-resized crop, flip and normalisation of an image or image file.

    Args:
        image_size: Side of the square crop.
        preprocessing: Normalisation the backbone expects.
    """

    def __init__(self, image_size: int, preprocessing: Preprocessing) -> None:
        self.image_size = image_size
        self.mean = torch.tensor(preprocessing.mean).view(-1, 1, 1) * 255
        self.std = torch.tensor(preprocessing.std).view(-1, 1, 1) * 255

    def __call__(self, image: Image.Image | Tensor) -> Tensor:
        """The view of a PIL image or a ``3 x H x W`` uint8 tensor."""
        pixels = image if isinstance(image, Tensor) else _to_tensor(image)
        return self.apply(pixels, crop_window(pixels.shape[-2], pixels.shape[-1], item_rng()))

    def apply(self, pixels: Tensor, window: CropWindow) -> Tensor:
        """The view of the ``3 x H x W`` uint8 tensor ``pixels`` through ``window``."""
        crop = pixels[
            :,
            window.top : window.top + window.height,
            window.left : window.left + window.width,
        ]
        resized = functional.resize(crop, [self.image_size, self.image_size], antialias=True)
        if window.flip:
            resized = resized.flip(-1)
        return (resized.float() - self.mean) / self.std

    def from_file(self, path: str | Path) -> Tensor:
        """The view of the image file ``path``.

        Raises:
            UnreadableImageError: Naming the file and why it cannot be decoded.
        """
        return self(decode_rgb(path))


def decode_rgb(path: str | Path) -> Tensor:
    """The image file ``path`` as a ``3 x H x W`` uint8 RGB tensor.

    Raises:
        UnreadableImageError: Naming the file and why it cannot be decoded.
    """
    try:
        data = Path(path).read_bytes()
    except OSError:
        data = b""
    if _FAST_JPEG and data.startswith(_JPEG_START):
        try:
            encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            return decode_jpeg(encoded, mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # PIL says why, or reads the variants libjpeg's fast path refuses
    return _to_tensor(load_rgb(path))


def _to_tensor(image: Image.Image) -> Tensor:
    return torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)


def image_view(transform: Callable[..., Any] | None, path: str | Path) -> dict[str, Tensor]:
    """The image entries of the dataset item of the file ``path``.

    As :func:`~mile_ssl.data.views.image_fields` makes them, decoding as fast as
    ``transform`` allows.

    Raises:
        UnreadableImageError: Naming the file and why it cannot be decoded.
    """
    if isinstance(transform, TrainView):
        return {"image": transform.from_file(path)}
    return image_fields(transform, load_rgb(path))


def train_transform(image_size: int, preprocessing: Preprocessing) -> TrainView:
    """Random-resized crop and flip, the standard fine-tuning augmentation."""
    return TrainView(image_size, preprocessing)


def eval_resize(image_size: int) -> int:
    """Shorter side of an evaluated image before its centre crop of ``image_size``."""
    return round(image_size * EVAL_RESIZE)


def eval_transform(image_size: int, preprocessing: Preprocessing) -> Callable[..., Tensor]:
    """Resize to ``image_size * 256 / 224`` and centre-crop, the standard evaluation view."""
    return v2.Compose(
        [
            v2.Resize(eval_resize(image_size), antialias=True),
            v2.CenterCrop(image_size),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(preprocessing.mean), list(preprocessing.std)),
        ]
    )
