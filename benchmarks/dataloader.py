"""Input-pipeline throughput: images/s of the training loader alone, as JSON.

Decoding and augmentation (random-resized crop, flip, normalisation) run exactly as in
training (``MILeDataModule.train_dataloader`` for ``data=folder`` or
``data=imagenet``, with either ``--backend``); no network runs. Compare the result with
the training throughput (``benchmarks/throughput.py``): when the loader is slower, more
``--workers`` (or faster storage / decoding) speed training up, a faster GPU does not.

    python benchmarks/dataloader.py --root /data/imagenet --data imagenet \
        --workers 8 --batch-size 128 --image-size 224 --batches 50 --backend dali

``--synthetic N`` first writes N ImageNet-like JPEGs (``synthetic_imagenet.py``: 500 x
375, quality 90, in 10 classes) to ``--root`` when it has no ``train/`` yet. The first
``--warmup`` batches (worker start-up, file-system caches) are not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from synthetic_imagenet import CLASSES, write_tree

from mile_ssl.config import compose_train_config
from mile_ssl.data.datamodule import MILeDataModule
from mile_ssl.data.loaders import choose_num_workers, local_devices, usable_cpu_count
from mile_ssl.networks.preprocessing import Preprocessing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="dataset root with train/ and val/")
    parser.add_argument("--data", choices=("folder", "imagenet"), default="folder")
    parser.add_argument(
        "--workers", type=int, default=None, help="loader workers (default: from the machine)"
    )
    parser.add_argument("--backend", choices=("torchvision", "dali"), default="torchvision")
    parser.add_argument(
        "--synthetic", type=int, default=0, help="write this many JPEGs to --root first"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224, help="training crop size")
    parser.add_argument("--batches", type=int, default=50, help="timed batches")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    parser.add_argument(
        "--fraction", type=float, default=1.0, help="label fraction (which images are read)"
    )
    args = parser.parse_args(argv)
    for name in ("workers", "warmup", "synthetic"):
        if (getattr(args, name) or 0) < 0:
            parser.error(f"--{name} must be >= 0")
    for name in ("batch_size", "image_size", "batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def endless(loader: Iterable[Any]) -> Iterator[Any]:
    """Batches of repeated passes over the labelled images (small folders end quickly)."""
    while True:
        yield from loader


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.synthetic and not (Path(args.root) / "train").exists():
        write_tree(Path(args.root), -(-args.synthetic // CLASSES), 2)
    workers = "null" if args.workers is None else args.workers
    config = compose_train_config(
        [
            "checkpoint=scratch",
            f"data={args.data}",
            f"data.root={args.root}",
            f"data.num_workers={workers}",
            f"data.backend={args.backend}",
            f"data.batch_size={args.batch_size}",
            f"data.image_size={args.image_size}",
            f"data.fraction={args.fraction}",
        ]
    )
    datamodule = MILeDataModule(config.data, Preprocessing())
    started = time.perf_counter()
    batches = endless(datamodule.train_dataloader())
    for _ in range(args.warmup):
        next(batches)
    timed_from = time.perf_counter()
    images = 0
    for _ in range(args.batches):
        images += len(next(batches)["image"])
    seconds = time.perf_counter() - timed_from
    print(
        json.dumps(
            {
                "images_per_second": images / seconds,
                "images": images,
                "batches": args.batches,
                "seconds": seconds,
                "warmup_batches": args.warmup,
                "startup_seconds": timed_from - started,
                "workers": choose_num_workers(config.data, local_devices()),
                "backend": args.backend,
                "batch_size": args.batch_size,
                "image_size": args.image_size,
                "data": args.data,
                "labelled_images": len(datamodule.train_indices),
                "cpu_count": os.cpu_count(),
                "cpus_available": usable_cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
