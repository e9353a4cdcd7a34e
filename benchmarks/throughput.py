"""Training throughput: MILe vs sigmoid steps vs a hand-written PyTorch loop, as JSON.

All three train the same ResNet-18 (64 px, batch 64, bf16 autocast, channels-last) on
the same synthetic batches in one process. ``mile_over_sigmoid`` shows the cost of the
teacher (its extra forward pass in every student step); ``sigmoid_over_plain`` shows
the overhead of mile_ssl's Lightning module over a minimal loop.

    python benchmarks/throughput.py --steps 40 --warmup 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from mile_ssl.config import MethodConfig, MileConfig, OptimConfig
from mile_ssl.finetune import Classifier, build_module
from mile_ssl.losses import one_hot_bce, sigmoid_head_bias
from mile_ssl.networks.backbones import BackboneSpec, build_backbone

NUM_CLASSES = 100


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=8, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="measurements per mode (median)")
    parser.add_argument("--kt", type=int, default=5)
    parser.add_argument("--ks", type=int, default=5)
    parser.add_argument("--variant", choices=["snapshot", "copy"], default="snapshot")
    return parser.parse_args()


def make_batches(count: int, batch_size: int, image_size: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.randn(batch_size, 3, image_size, image_size, generator=generator),
            "label": torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator),
        }
        for _ in range(count)
    ]


def make_network() -> tuple[torch.nn.Module, int]:
    torch.manual_seed(0)
    return build_backbone(BackboneSpec("torchvision:resnet18"))


class _StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.started = 0.0
        self.finished = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.finished = time.perf_counter()


def time_lightning(
    method: str, batches: list[dict[str, torch.Tensor]], args: argparse.Namespace
) -> float:
    backbone, dim = make_network()
    module = build_module(
        backbone,
        dim,
        NUM_CLASSES,
        method=MethodConfig(method),
        mile=MileConfig(kt=args.kt, ks=args.ks, rho=0.5, variant=args.variant),
        optim=OptimConfig(lr=0.01),
        channels_last=True,
    )
    timer = _StepTimer(args.warmup)
    trainer = L.Trainer(
        max_steps=len(batches),
        accelerator="cpu",
        devices=1,
        precision="bf16-mixed",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, DataLoader(batches, batch_size=None))  # type: ignore[arg-type]
    return args.steps * args.batch_size / (timer.finished - timer.started)


def time_plain(batches: list[dict[str, torch.Tensor]], args: argparse.Namespace) -> float:
    backbone, dim = make_network()
    network = Classifier(backbone, dim, NUM_CLASSES, sigmoid_head_bias(NUM_CLASSES))
    network = network.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        network.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    network.train()
    started = 0.0
    for step, batch in enumerate(batches):
        if step == args.warmup:
            started = time.perf_counter()
        images = batch["image"].contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = one_hot_bce(network(images), batch["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return args.steps * args.batch_size / (time.perf_counter() - started)


def main() -> None:
    args = parse_args()
    batches = make_batches(args.warmup + args.steps, args.batch_size, args.image_size)
    measured: dict[str, list[float]] = {"plain": [], "sigmoid": [], "mile": []}
    for _ in range(args.repeats):  # interleaved, so slow drifts of the machine hit all modes
        measured["plain"].append(time_plain(batches, args))
        measured["sigmoid"].append(time_lightning("sigmoid", batches, args))
        measured["mile"].append(time_lightning("mile", batches, args))
    images_per_second = {mode: statistics.median(values) for mode, values in measured.items()}
    print(
        json.dumps(
            {
                "model": "torchvision:resnet18",
                "image_size": args.image_size,
                "batch_size": args.batch_size,
                "precision": "bf16-mixed",
                "channels_last": True,
                "threads": torch.get_num_threads(),
                "variant": args.variant,
                "kt": args.kt,
                "ks": args.ks,
                "timed_steps": args.steps,
                "images_per_second": {
                    mode: round(value, 1) for mode, value in images_per_second.items()
                },
                "all_measurements": {
                    mode: [round(v, 1) for v in values] for mode, values in measured.items()
                },
                "mile_over_sigmoid": round(
                    images_per_second["mile"] / images_per_second["sigmoid"], 3
                ),
                "sigmoid_over_plain": round(
                    images_per_second["sigmoid"] / images_per_second["plain"], 3
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
