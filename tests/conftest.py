"""Shared fixtures: tiny, fast configurations of the real pipeline."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import importlib.util
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning as L
import pytest
import torch

from mile_ssl.config import TrainConfig, compose_train_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RAM_DISK = Path("/dev/shm")
RAM_DISK_MIN_AVAILABLE = 16 * 2**30
"""Memory the machine must have available to give the tests' folders a RAM disk.

The suite's processes peaked at 12 GiB together on two workers before they returned their
freed heap (:func:`_freed_memory_goes_back`), 9 GiB after, and files on the RAM disk take
memory too: with less, the folders stay on the disk.
"""


def pytest_configure(config: pytest.Config) -> None:
    """One thread per test process, and the tests' folders on the RAM disk.

    pytest-xdist runs one test per core already: OpenMP threads of two tests competing
    for the same cores made the fine-tuning tests a third slower. ``OMP_NUM_THREADS``
    reaches the workers, which import torch after this, and every process a test starts
    (DDP ranks, the installed script); an explicit ``OMP_NUM_THREADS`` is left alone.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)  # this process imported torch before reading it
    _temporary_folders_in_memory(config)
    _adopt_orphans()


PR_SET_CHILD_SUBREAPER = 36
"""Linux ``prctl`` option: orphaned descendants are re-parented to this process."""


def _libc() -> ctypes.CDLL:
    """The C library, for the Linux calls Python does not wrap (``prctl``, ``malloc_trim``)."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _adopt_orphans() -> None:
    """Become the parent of the processes whose own parent dies (Linux only).

    A DDP rank whose launcher died, or a run started by a worker that crashed, would
    otherwise be adopted by init and outlive the suite; adopted, they are this process's
    descendants, which :func:`_no_process_outlives_its_test` and
    :func:`pytest_sessionfinish` kill.
    """
    with contextlib.suppress(OSError, AttributeError):
        _libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Kill what is left under the main pytest process once every worker has finished.

    Covers what the per-test clean-up cannot: the processes of a worker that died.
    """
    if not hasattr(session.config, "workerinput"):
        _kill_descendants()


def _temporary_folders_in_memory(config: pytest.Config) -> None:
    """Put the tests' temporary folders on the RAM disk, where the machine has one.

    Tests write many checkpoints, hundreds of megabytes each for the ResNet-50s and
    ViT-Bs of the upstream layouts; on this machine's disk writing them took a third of
    some tests' time. ``TMPDIR`` moves pytest's ``tmp_path`` folders and every temporary
    file of the subprocesses tests start (pytest-xdist's workers inherit it). An explicit
    ``--basetemp`` or ``TMPDIR`` is left alone.
    """
    if config.option.basetemp or "TMPDIR" in os.environ or not RAM_DISK.is_dir():
        return
    # The RAM disk's own free space says nothing here: it is sized at the whole memory.
    available = _proc_bytes("/proc/meminfo", "MemAvailable")
    if os.access(RAM_DISK, os.W_OK) and available > RAM_DISK_MIN_AVAILABLE:
        os.environ["TMPDIR"] = str(RAM_DISK)
        tempfile.tempdir = None  # read TMPDIR again


def _descendants(pid: int) -> list[int]:
    """The processes started by ``pid``, their children included (Linux's ``/proc``)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, stack = [], list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, []))
    return found


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test() -> Iterator[None]:
    """Kill what a test started and left running, whether it passed or failed.

    Tests start 100,000-step runs and stop them with signals; a failed assertion before the
    stop would leave such a run writing checkpoints and holding a core for the rest of the
    suite, and a DDP rank whose partner died would wait in its collective for half an
    hour. pytest-xdist's own processes are the worker's parents, never its children;
    multiprocessing's resource tracker, started once per worker, is spared.
    """
    yield
    _kill_descendants()


def _kill_descendants() -> None:
    """SIGKILL every descendant of this process but multiprocessing's resource tracker.

    Killed children are reaped (adopted orphans have no ``Popen`` that would); the others
    are their parents' to reap.
    """
    for pid in _descendants(os.getpid()):
        with contextlib.suppress(OSError):
            if b"from multiprocessing." in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue  # the process's own resource tracker lives as long as it does
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)  # ChildProcessError (an OSError) for a grandchild


def _proc_bytes(path: str, field: str) -> int:
    """A ``kB`` field of a ``/proc`` file (``MemAvailable``, ``VmRSS``) in bytes, 0 if absent."""
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    return 0


WORKER_MEMORY_TO_TRIM = 1536 * 2**20
"""Resident bytes above which a test process hands its freed heap back after a test."""


@pytest.fixture(autouse=True)
def _freed_memory_goes_back() -> Iterator[None]:
    """Return the heap a test freed to the system once the process has grown large.

    Tests that train ResNet-50s and ViT-Bs in-process free their tensors, but glibc keeps
    the freed heap: each worker would stay at 4-5 GiB for the rest of the suite (2.6 GiB
    falls to 0.9 GiB with a collection and ``malloc_trim``). Small processes skip the
    collection, which would cost more than the tests themselves.
    """
    yield
    if _proc_bytes("/proc/self/status", "VmRSS") > WORKER_MEMORY_TO_TRIM:
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):
            _libc().malloc_trim(0)


MILE_SSL = str(Path(sys.executable).with_name("mile-ssl"))
"""The installed console script, run as a user runs it."""

TINY_NETWORK = [
    "checkpoint=scratch",
    "backbone=tiny_resnet",
    "backbone.kwargs.widths=[8,16]",
    "trainer.progress_bar=false",
    "trainer.precision=32-true",
    "trainer.accelerator=cpu",
]
"""An 8/16-channel ResNet from random weights, trained in fp32 on the CPU."""

TINY_OVERRIDES = [
    *TINY_NETWORK,
    "data.digits.num_train=256",
    "data.digits.num_val=64",
    "data.batch_size=32",
    "trainer.log_every_n_steps=1",
    "optim.warmup_steps=1",
]
"""A digit-grid run that takes a second: 256 grids, batch 32, an 8/16-channel ResNet."""


def folder_run_overrides(root: Path) -> list[str]:
    """A two-step MILe run (one cycle of kt = ks = 1) on the image folder ``root``."""
    return [
        "data=folder",
        f"data.root={root}",
        "data.image_size=32",
        "data.batch_size=4",
        "data.num_workers=0",
        "trainer.max_steps=2",
        "mile.kt=1",
        "mile.ks=1",
    ]


def one_step_trainer(tmp_path: Path, **kwargs: Any) -> L.Trainer:
    """A bare Lightning trainer of one CPU step: no logger, checkpoint, bar or validation."""
    return L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        **kwargs,
    )


@pytest.fixture(scope="module")
def module_tmp_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder shared by one module's tests and removed when the module ends.

    Module fixtures write full-size ResNet-50 checkpoints; kept until the session ends, as
    ``tmp_path_factory`` folders are, they add up to gigabytes of disk.
    """
    path = tmp_path_factory.mktemp("module")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tiny_config() -> Callable[..., TrainConfig]:
    """Compose the shipped configs with the tiny overrides plus the test's own."""

    def compose(*overrides: str) -> TrainConfig:
        return compose_train_config([*TINY_OVERRIDES, *overrides])

    return compose


@pytest.fixture
def tiny_overrides() -> list[str]:
    """The tiny overrides as command-line arguments."""
    return list(TINY_OVERRIDES)


@contextlib.contextmanager
def mounted_tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """A real small file system at ``mount`` (``options``: e.g. ``size=64k`` or
    ``size=64k,ro``); the test is skipped where this machine does not permit the mount."""
    mount.mkdir(parents=True, exist_ok=True)
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (36, 40)) -> Path:
    """Write a real JPEG of seeded random pixels, ``size`` = (height, width)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = torch.rand(*size, 3, generator=torch.Generator().manual_seed(seed)) * 255
    Image.fromarray(pixels.to(torch.uint8).numpy()).save(path)
    return path


def write_image_folder(root: Path, classes: int = 2, per_class: int = 8, size: int = 40) -> Path:
    """Write real JPEG files ``root/<class>/<class>_<i>.JPEG`` with class-dependent colour."""
    from PIL import Image

    generator = torch.Generator().manual_seed(len(str(root)))
    for label in range(classes):
        folder = root / f"n{label:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = torch.rand(size, size, 3, generator=generator) * 96
            pixels[..., label % 3] += 128
            Image.fromarray(pixels.to(torch.uint8).numpy()).save(
                folder / f"n{label:08d}_{index}.JPEG", quality=90
            )
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A tiny ImageNet-style tree: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``."""
    write_image_folder(tmp_path / "images" / "train", per_class=8)
    write_image_folder(tmp_path / "images" / "val", per_class=3)
    return tmp_path / "images"


def run_cli(
    args: Sequence[str], cwd: Path, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``mile-ssl ARGS`` in ``cwd`` offline, with ``env`` added to the environment."""
    environment = {key: value for key, value in os.environ.items() if key != "MILE_SSL_DEBUG"}
    environment |= {"HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(
        [MILE_SSL, *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli_in_process(
    args: Sequence[str], cwd: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``mile-ssl ARGS`` as :func:`run_cli` does, but in this process.

    The installed script's only work before ``mile_ssl.cli.main`` is importing torch,
    Lightning and Hydra, which a new interpreter pays for every time; here they are
    already imported. Everything a command sees of its process is as in a new one: the
    working directory, the environment, ``sys.argv``, no Hydra instance, and logging as
    configured at start-up, writing into the captured stdout and stderr. An exception
    leaving ``main`` is printed with its traceback and gives status 1, and ``SystemExit``
    gives its status, as the interpreter does. All of it, and the signal handlers that
    training takes over, is put back afterwards. Python warnings are left to pytest.

    Commands that need a process of their own (several ranks, signals, the script's own
    start-up) use :func:`run_cli`.
    """
    from mile_ssl import cli

    stdout, stderr = io.StringIO(), io.StringIO()
    saved_environ, saved_argv, saved_cwd = dict(os.environ), sys.argv, Path.cwd()
    os.environ.pop("MILE_SSL_DEBUG", None)
    os.environ.update({"HF_HUB_OFFLINE": "1", **env})
    sys.argv = [MILE_SSL, *args]
    returncode = 0
    try:
        os.chdir(cwd)
        with (
            _fresh_hydra(),
            _signal_handlers_kept(),
            _fresh_logging(stdout, stderr),
            contextlib.redirect_stdout(stdout),
            contextlib.redirect_stderr(stderr),
        ):
            try:
                cli.main(list(args))
            except SystemExit as stop:
                returncode = _exit_status(stop.code)
            except Exception:
                traceback.print_exc()
                returncode = 1
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_environ)
    return subprocess.CompletedProcess(
        [MILE_SSL, *args], returncode, stdout.getvalue(), stderr.getvalue()
    )


def _exit_status(code: object) -> int:
    """The exit status of ``SystemExit(code)``; a message is printed to stderr, as Python does."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


@contextlib.contextmanager
def _fresh_hydra() -> Iterator[None]:
    """No Hydra instance or job config before the command, none left after it."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    def clear() -> None:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None

    clear()
    try:
        yield
    finally:
        clear()


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """The handlers of the signals training takes over, as they were before the command."""
    names = ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")
    saved = {signum: signal.getsignal(signum) for signum in (getattr(signal, n) for n in names)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            if handler is not None:
                signal.signal(signum, handler)


@contextlib.contextmanager
def _fresh_logging(stdout: io.StringIO, stderr: io.StringIO) -> Iterator[None]:
    """Logging as a new ``mile-ssl`` process starts with, writing into stdout/stderr.

    The root logger starts without handlers at level WARNING (``main`` configures it;
    Hydra replaces its handlers for a ``train`` job); pytest's capture handlers are taken
    off every logger; stream handlers that write to the process's stdout or stderr (such
    as Lightning's console handler) write into the captured streams. Afterwards every
    logger is as before, and the handlers the command added (Hydra's job log file) are
    closed.
    """
    manager = logging.Logger.manager
    loggers = {"": logging.getLogger(), **manager.loggerDict}
    saved = {
        name: (list(logger.handlers), logger.level, logger.propagate, logger.disabled)
        for name, logger in loggers.items()
        if isinstance(logger, logging.Logger)
    }
    known = {handler for handlers, *_ in saved.values() for handler in handlers}
    streams: dict[logging.StreamHandler, object] = {}
    saved_disable = manager.disable
    logging.disable(logging.NOTSET)
    for name, (handlers, *_) in saved.items():
        logger = logging.getLogger(name or None)
        for handler in handlers:
            if type(handler).__module__ == "_pytest.logging":
                logger.removeHandler(handler)
            elif isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            ):
                target = _captured_stream(handler.stream, stdout, stderr)
                if target is not None:
                    streams[handler] = handler.stream
                    handler.stream = target
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for handler, stream in streams.items():
            handler.stream = stream
        for name, logger in [("", root), *manager.loggerDict.items()]:
            if not isinstance(logger, logging.Logger):
                continue
            for handler in list(logger.handlers):
                if handler not in known:
                    logger.removeHandler(handler)
                    handler.close()
            if name in saved:
                handlers, level, propagate, disabled = saved[name]
                logger.handlers[:] = handlers
                logger.setLevel(level)
                logger.propagate = propagate
                logger.disabled = disabled
        logging.disable(saved_disable)


def _captured_stream(stream: object, stdout: io.StringIO, stderr: io.StringIO) -> object:
    """The captured stream standing in for ``stream``, if it is this process's stdout/stderr."""
    if stream in (sys.stderr, sys.__stderr__):
        return stderr
    if stream in (sys.stdout, sys.__stdout__):
        return stdout
    return None


def write_imagenet_tree(root: Path) -> Path:
    """A tiny ImageNet in the ImageFolder layout, with real wnids and file names.

    Two classes; each: 3 files of the 1 % list (also in the 10 % one), 2 of the 10 % list
    only, 1 in neither; one validation image each, named as ImageNet's.
    """
    from mile_ssl.data.imagenet import shipped_split

    one, ten = (shipped_split(fraction) for fraction in (0.01, 0.1))
    assert one is not None and ten is not None
    one_pct = one.read_text().split()
    ten_pct = ten.read_text().split()
    wnids = sorted({name.split("_")[0] for name in one_pct[:40]})[:2]
    for wnid in wnids:
        first = [name for name in one_pct if name.startswith(wnid)][:3]
        more = [name for name in ten_pct if name.startswith(wnid) and name not in set(one_pct)]
        for seed, name in enumerate([*first, *more[:2], f"{wnid}_999999.JPEG"]):
            write_jpeg(root / "train" / wnid / name, seed)
    write_jpeg(root / "val" / wnids[0] / "ILSVRC2012_val_00000002.JPEG", 10)
    write_jpeg(root / "val" / wnids[1] / "ILSVRC2012_val_00000003.JPEG", 11)
    return root


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` as running it would: with its folder on the path."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.append(str(BENCHMARKS))
    module_name = f"benchmark_{name}"
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module
