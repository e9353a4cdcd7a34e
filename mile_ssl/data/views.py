"""Weak and strong views of one image (Noisy Student style).

With ``data.strong_student_view=true`` the network that produces targets (the MILe
teacher, the fixed teacher of ``distill`` / ``self_train``) sees the usual, weakly
augmented training view, and the student learns from a strongly augmented view of the
same image. Items then carry ``image`` (weak) and ``image_strong``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms import v2

from mile_ssl.networks.preprocessing import Preprocessing

STRONG_VIEW_KEY = "image_strong"


class WeakStrongViews:
    """Apply a weak and a strong transform to the same input.

    Args:
        weak: The usual training transform; its output labels the image.
        strong: The heavier transform the student trains on.
    """

    def __init__(self, weak: Callable[..., Tensor], strong: Callable[..., Tensor]) -> None:
        self.weak = weak
        self.strong = strong

    def __call__(self, image: Any) -> dict[str, Tensor]:
        """``{"image": weak(image), "image_strong": strong(image)}``."""
        return {"image": self.weak(image), STRONG_VIEW_KEY: self.strong(image)}


def image_fields(transform: Callable[..., Any] | None, image: Any) -> dict[str, Tensor]:
    """The image entries of a dataset item: one view, or both of :class:`WeakStrongViews`."""
    if transform is None:
        return {"image": image}
    views = transform(image)
    return views if isinstance(views, dict) else {"image": views}


def strong_image_transform(image_size: int, preprocessing: Preprocessing) -> Callable[..., Tensor]:
    """RandAugment (2 operations, magnitude 9) on top of the crop and flip, for PIL images."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandAugment(num_ops=2, magnitude=9),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(preprocessing.mean), list(preprocessing.std)),
        ]
    )


def strong_digit_transform(preprocessing: Preprocessing) -> Callable[[Tensor], Tensor]:
    """Small shifts, rotations, scalings and erased patches of a float digit grid.

    Mild enough to keep every digit of the grid recognisable (a shift of at most 2 of
    the 8 pixels of a cell, an erased patch of at most 11 of a cell's 64 pixels), so
    the grid's label set stays true for the strong view.
    """
    return v2.Compose(
        [
            v2.RandomAffine(degrees=10, translate=(0.08, 0.08), scale=(0.9, 1.1)),
            v2.RandomErasing(p=0.5, scale=(0.005, 0.02), value=0.0),
            v2.Normalize(list(preprocessing.mean), list(preprocessing.std)),
        ]
    )
