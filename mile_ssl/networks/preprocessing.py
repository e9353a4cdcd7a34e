"""Input preprocessing a backbone expects, carried from the checkpoint to the data pipeline."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Per-channel normalisation applied after the image is scaled to [0, 1].

    Checkpoints disagree on this (torchvision models expect ImageNet mean/std, the
    converted SimCLR-v2 models expect raw [0, 1] input), so adapters report it and the
    data pipeline follows it instead of assuming ImageNet statistics.

    Attributes:
        mean: Per-channel mean subtracted from the [0, 1] image.
        std: Per-channel divisor applied after subtracting the mean.
    """

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise ValueError(f"preprocessing mean {self.mean} and std {self.std} differ in length")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"preprocessing std must be positive, got {self.std}")

    def to_dict(self) -> dict[str, list[float]]:
        """Plain-container form for checkpoints and JSON files."""
        return {key: list(value) for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`."""
        return cls(mean=tuple(data["mean"]), std=tuple(data["std"]))


IDENTITY = Preprocessing(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
