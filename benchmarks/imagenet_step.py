"""The ImageNet training step a user pays for: JPEG decoding, augmentation, ResNet-50, as JSON.

On a synthetic JPEG tree (``synthetic_imagenet.py``, written once into ``--cache``):
the network step alone on device tensors (eager and ``torch.compile``d), and for each
input backend the training loader alone and sigmoid and MILe training through
``run_training``, the entry point of ``mile-ssl train``. A backend that cannot run here
is reported with ``available: false`` and the reason. Peaks: the main process's RSS
(reset per measurement on Linux) and CUDA's largest allocation. On CUDA the timed steps
run under ``torch.cuda.set_sync_debug_mode("warn")``; ``syncs_per_step`` counts the
warnings. The keys are described in benchmarks/README.md.

    python benchmarks/imagenet_step.py --device cuda
    python benchmarks/imagenet_step.py --device cpu     # ResNet-50, a few steps
    python benchmarks/imagenet_step.py --quick          # ResNet-18, 64 px, no compile
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import resource
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from synthetic_imagenet import CLASSES, synthetic_tree
from torch.utils.data import DataLoader

from mile_ssl.commands.train import run_training
from mile_ssl.config import BACKENDS, compose_train_config
from mile_ssl.data.dali import DaliLoader
from mile_ssl.data.datamodule import MILeDataModule
from mile_ssl.data.loaders import usable_cpu_count
from mile_ssl.finetune import Classifier
from mile_ssl.losses import one_hot_bce, sigmoid_head_bias
from mile_ssl.networks.backbones import BackboneSpec, build_backbone
from mile_ssl.networks.preprocessing import Preprocessing
from mile_ssl.runs.trainer import resolve_precision

AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
STARTED = time.perf_counter()


@dataclass(frozen=True)
class Sizes:
    """What one run measures, printed under ``sizes``.

    ``phase_steps`` is MILe's ``kt`` = ``ks``: warm-up and timed steps are whole cycles,
    half teacher and half student steps as in the recipes. Loader batches are timed in
    rounds of one batch per worker.
    """

    backbone: str
    image_size: int
    batch_size: int
    warmup_steps: int
    timed_steps: int
    phase_steps: int
    pipeline_rounds: int
    train_per_class: int
    val_per_class: int
    compile: bool


@dataclass(frozen=True)
class Bench:
    """One run's sizes and machine settings, shared by every measurement."""

    sizes: Sizes
    device: torch.device
    precision: str  # Lightning's name, resolved from ``auto`` as training resolves it
    workers: int


SIZES = {
    "quick": Sizes("resnet18", 64, 8, 2, 2, 1, 2, 5, 1, compile=False),
    "cpu": Sizes("resnet50", 224, 16, 4, 16, 4, 15, 190, 10, compile=True),
    "cuda": Sizes("resnet50", 224, 128, 10, 20, 5, 4, 190, 10, compile=True),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="ResNet-18, 64 px, a tiny tree")
    parser.add_argument("--workers", type=int, help="loader workers (default: the CPUs)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mile_ssl"
    parser.add_argument("--cache", type=Path, default=cache / "benchmarks", help="JPEG trees")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be >= 1 (the per-worker rate needs worker processes)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    return args


def progress(message: str) -> None:
    """Where the run is, on stderr (stdout holds the JSON alone)."""
    print(f"[imagenet_step {time.perf_counter() - STARTED:6.1f} s] {message}", file=sys.stderr)


def reset_peaks(device: torch.device) -> None:
    """Start new peak counters (elsewhere than Linux the RSS peak is the process's)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with contextlib.suppress(OSError):  # "5" resets this process's VmHWM
        Path("/proc/self/clear_refs").write_text("5")


def read_peaks(device: torch.device) -> dict[str, float]:
    """Peak RSS of this process and, on CUDA, the peak allocation, in MiB."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with contextlib.suppress(OSError):
        status = Path("/proc/self/status").read_text().split("VmHWM:")[1]
        kib = int(status.split()[0])
    peaks = {"peak_rss_mib": round(kib / 1024, 1)}
    if device.type == "cuda":
        peaks["peak_cuda_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peaks


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def counting_syncs(device: torch.device) -> Iterator[list[warnings.WarningMessage]]:
    """On CUDA, record a warning for every call that synchronises host and device."""
    if device.type != "cuda":
        yield []
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield caught
        finally:
            torch.cuda.set_sync_debug_mode("default")


def syncs_per_step(
    caught: list[warnings.WarningMessage], steps: int, device: torch.device
) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    count = sum("synchroniz" in str(warning.message) for warning in caught)
    return {"syncs_per_step": round(count / steps, 2)}


def measure_model_step(bench: Bench, compiled: bool) -> dict[str, Any]:
    """SGD steps of the network alone on one batch already on the device: the ceiling."""
    sizes, device = bench.sizes, bench.device
    torch.manual_seed(0)
    spec = compose_train_config(["checkpoint=scratch", f"backbone={sizes.backbone}"]).backbone
    backbone, dim = build_backbone(BackboneSpec(spec.name or "", dict(spec.kwargs)))
    network = Classifier(backbone, dim, CLASSES, sigmoid_head_bias(CLASSES))
    network = network.to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(
        network.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    forward = torch.compile(network) if compiled else network
    shape = (sizes.batch_size, 3, sizes.image_size, sizes.image_size)
    images = torch.randn(shape, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, CLASSES, (sizes.batch_size,), device=device)
    dtype = AUTOCAST.get(bench.precision)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = one_hot_bce(forward(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    reset_peaks(device)
    started = time.perf_counter()
    step()
    synchronize(device)
    first_step = time.perf_counter() - started
    for _ in range(sizes.warmup_steps - 1):
        step()
    synchronize(device)
    started = time.perf_counter()
    with counting_syncs(device) as caught:
        for _ in range(sizes.timed_steps):
            step()
    synchronize(device)
    seconds = time.perf_counter() - started
    return {
        "images_per_second": round(sizes.timed_steps * sizes.batch_size / seconds, 1),
        **({"compile_seconds": round(first_step, 1)} if compiled else {}),
        **read_peaks(device),
        **syncs_per_step(caught, sizes.timed_steps, device),
    }


class BackendUnavailableError(Exception):
    """The input backend cannot run here; the message says why."""


def measure_pipeline(bench: Bench, backend: str, overrides: list[str]) -> dict[str, Any]:
    """The training loader alone; the first round (one batch per worker) is not timed.

    Raises:
        BackendUnavailableError: If the loader fails to build or to serve a first batch
            (e.g. DALI is not installed).
        TypeError: If the loader is not ``backend``'s own (the datamodule ignored the
            setting), so that one backend is never timed under the other's name.
    """
    try:
        config = compose_train_config(overrides)
        loader = MILeDataModule(config.data, Preprocessing()).train_dataloader()
        batches = itertools.chain.from_iterable(itertools.repeat(loader))  # endless passes
        next(batches)
    except Exception as error:  # whatever stops the backend is its reason to report
        raise BackendUnavailableError(f"{type(error).__name__}: {error}") from error
    expected = DaliLoader if backend == "dali" else DataLoader
    if not isinstance(loader, expected):
        raise TypeError(
            f"data.backend={backend} built a {type(loader).__name__}, not a {expected.__name__}"
        )
    for _ in range(bench.workers - 1):
        next(batches)
    synchronize(bench.device)
    started = time.perf_counter()
    timed_batches = bench.sizes.pipeline_rounds * bench.workers
    images = sum(len(next(batches)["image"]) for _ in range(timed_batches))
    synchronize(bench.device)
    rate = images / (time.perf_counter() - started)
    if hasattr(loader, "close"):  # DALI's loader holds pipelines and threads
        loader.close()
    return {
        "images_per_second": round(rate, 1),
        "images_per_second_per_worker": round(rate / bench.workers, 1),
        "workers": bench.workers,
    }


class TrainingWindow(L.Callback):
    """Times training steps ``warmup + 1 .. warmup + timed``, loading included.

    The window opens at the end of step ``warmup`` and closes at the end of the last
    step, so each timed step fetches its batch inside it; on CUDA it also counts the
    synchronising calls inside it.
    """

    def __init__(self, warmup: int, timed: int, device: torch.device) -> None:
        self.warmup, self.timed, self.device = warmup, timed, device
        self.steps_done = 0
        self.started = 0.0
        self.seconds = float("nan")
        self.caught: list[warnings.WarningMessage] = []
        self._syncs = contextlib.ExitStack()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        """Open or close the window."""
        self.steps_done += 1
        if self.steps_done == self.warmup:
            synchronize(self.device)
            self.caught = self._syncs.enter_context(counting_syncs(self.device))
            self.started = time.perf_counter()
        elif self.steps_done == self.warmup + self.timed:
            self._syncs.close()
            synchronize(self.device)
            self.seconds = time.perf_counter() - self.started

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Leave sync debugging off however training ended."""
        self._syncs.close()


def measure_training(bench: Bench, overrides: list[str]) -> dict[str, Any]:
    """Steps of ``mile-ssl train`` with these overrides, in this process."""
    sizes = bench.sizes
    window = TrainingWindow(sizes.warmup_steps, sizes.timed_steps, bench.device)
    config = compose_train_config(overrides)
    reset_peaks(bench.device)
    with tempfile.TemporaryDirectory(prefix="imagenet_step_run_") as output_dir:
        run_training(config, output_dir, callbacks=[window])
    return {
        "images_per_second": round(sizes.timed_steps * sizes.batch_size / window.seconds, 1),
        **read_peaks(bench.device),
        **syncs_per_step(window.caught, sizes.timed_steps, bench.device),
    }


def training_overrides(bench: Bench, root: Path, backend: str) -> list[str]:
    sizes = bench.sizes
    return [
        *("data=folder", f"data.root={root}", f"data.backend={backend}"),
        f"data.num_workers={bench.workers}",
        f"data.batch_size={sizes.batch_size}",
        f"data.image_size={sizes.image_size}",
        *("checkpoint=scratch", f"backbone={sizes.backbone}", "optim.warmup_steps=0"),
        f"trainer.max_steps={sizes.warmup_steps + sizes.timed_steps}",
        f"trainer.accelerator={'gpu' if bench.device.type == 'cuda' else 'cpu'}",
        f"trainer.precision={bench.precision}",
        *("trainer.devices=1", "trainer.progress_bar=false"),
    ]


def measure_backend(
    bench: Bench, root: Path, backend: str, model_step: dict[str, Any]
) -> dict[str, Any]:
    overrides = training_overrides(bench, root, backend)
    try:
        pipeline = measure_pipeline(bench, backend, overrides)
    except BackendUnavailableError as reason:
        progress(f"{backend}: unavailable: {reason}")
        return {"available": False, "reason": str(reason)}
    progress(f"{backend}: pipeline {pipeline['images_per_second']} images/s")
    cycle = [f"mile.kt={bench.sizes.phase_steps}", f"mile.ks={bench.sizes.phase_steps}"]
    training = {}
    for method, extra in (("sigmoid", []), ("mile", cycle)):
        training[method] = measure_training(bench, [*overrides, f"method={method}", *extra])
        progress(f"{backend}: {method} training {training[method]['images_per_second']} images/s")
    sigmoid = training["sigmoid"]["images_per_second"]
    return {
        "available": True,
        "pipeline": pipeline,
        "training": training,
        "mile_over_sigmoid": round(training["mile"]["images_per_second"] / sigmoid, 3),
        "sigmoid_over_model_step": round(sigmoid / model_step["eager"]["images_per_second"], 3),
        "cpu_cores_per_device": {
            mode: float(
                f"{step['images_per_second'] / pipeline['images_per_second_per_worker']:.3g}"
            )
            for mode, step in model_step.items()
            if "images_per_second" in step
        },
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    models = [line.split(":")[1].strip() for line in cpuinfo.splitlines() if "model name" in line]
    return models[0] if models else platform.machine()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    bench = Bench(
        sizes=SIZES["quick" if args.quick else args.device],
        device=device,
        precision=resolve_precision("auto", "gpu" if device.type == "cuda" else "cpu"),
        workers=args.workers or usable_cpu_count(),
    )
    with contextlib.redirect_stdout(sys.stderr):  # stdout holds the JSON alone
        root, tree = synthetic_tree(
            args.cache, bench.sizes.train_per_class, bench.sizes.val_per_class
        )
        progress(f"tree {root} ({tree['train_images']} + {tree['val_images']} JPEGs)")
        model_step: dict[str, Any] = {"compiled": {"skipped": "--quick: compiling takes longer"}}
        for mode in ("eager", "compiled") if bench.sizes.compile else ("eager",):
            try:
                model_step[mode] = measure_model_step(bench, compiled=mode == "compiled")
            except Exception as error:  # e.g. no compiler for torch.compile on this machine
                if mode == "eager":
                    raise
                model_step[mode] = {"failed": f"{type(error).__name__}: {error}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
            progress(f"model step, {mode}: {model_step[mode]}")
        backends = {name: measure_backend(bench, root, name, model_step) for name in args.backends}
    report = {
        "device": args.device,
        "device_name": device_name(device),
        "quick": args.quick,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": usable_cpu_count(),
        "precision": bench.precision,
        "channels_last": True,
        "sizes": {**asdict(bench.sizes), "workers": bench.workers},
        "tree": tree,
        "model_step": model_step,
        "backends": backends,
        "seconds": round(time.perf_counter() - STARTED, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
