"""A synthetic ImageNet-like JPEG tree for the input-pipeline benchmarks, written once.

``train/<wnid>/<wnid>_<i>.JPEG`` and ``val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG``: real
ImageNet wnids and validation names, so the same tree serves ``data=folder`` and
``data=imagenet`` runs. Every file is 500 x 375 (ImageNet's most common size) at quality
90, smooth colour fields under luminance grain: about 90 KB, as ImageNet's files, so
decoding costs what it costs on the real data.

    python benchmarks/synthetic_imagenet.py --cache DIR --train-per-class 190 --val-per-class 10
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mile_ssl.data.imagenet import imagenet_classes

CLASSES = 10
JPEG_SIZE = (500, 375)  # width, height
JPEG_QUALITY = 90


def synthetic_photo(rng: np.random.Generator, label: int) -> Image.Image:
    """Coarse random colours (tinted by the class) upsampled, plus grain."""
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    coarse[..., label % 3] = coarse[..., label % 3] // 2 + 128
    smooth = np.asarray(Image.fromarray(coarse).resize(JPEG_SIZE, Image.Resampling.BICUBIC))
    grain = rng.integers(-24, 25, (JPEG_SIZE[1], JPEG_SIZE[0], 1), dtype=np.int16)
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))


def write_tree(root: Path, train_per_class: int, val_per_class: int) -> None:
    """Write the tree's ``train/`` and ``val/`` folders into ``root`` (same seed, same files)."""
    rng = np.random.default_rng(0)
    val_names = (f"ILSVRC2012_val_{index:08d}.JPEG" for index in range(1, 1_000_000))
    for label, wnid in enumerate(imagenet_classes()[:CLASSES]):
        files = [root / "train" / wnid / f"{wnid}_{i}.JPEG" for i in range(train_per_class)]
        files += [root / "val" / wnid / next(val_names) for _ in range(val_per_class)]
        for path in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            synthetic_photo(rng, label).save(path, quality=JPEG_QUALITY)


def synthetic_tree(
    cache: Path, train_per_class: int, val_per_class: int
) -> tuple[Path, dict[str, Any]]:
    """The tree of this size under ``cache``, written on first use.

    It is written into a temporary folder renamed at the end, so an interrupted write
    is never mistaken for a tree.

    Returns:
        Its root and a description (``written_seconds`` is ``None`` when reused).
    """
    name = f"jpeg_{CLASSES}x{train_per_class}+{val_per_class}_q{JPEG_QUALITY}"
    root = cache / name
    info = {
        "root": str(root),
        "classes": CLASSES,
        "train_images": CLASSES * train_per_class,
        "val_images": CLASSES * val_per_class,
        "jpeg_width_height": list(JPEG_SIZE),
        "jpeg_quality": JPEG_QUALITY,
    }
    if root.is_dir():
        return root, {**info, "written_seconds": None}
    started = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{name}.partial-", dir=cache))
    write_tree(partial, train_per_class, val_per_class)
    try:
        partial.rename(root)
    except OSError:  # another process finished the same tree first
        shutil.rmtree(partial, ignore_errors=True)
    return root, {**info, "written_seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True, help="folder to write the tree in")
    parser.add_argument("--train-per-class", type=int, default=190)
    parser.add_argument("--val-per-class", type=int, default=10)
    args = parser.parse_args()
    print(synthetic_tree(args.cache, args.train_per_class, args.val_per_class)[0])


if __name__ == "__main__":
    main()
