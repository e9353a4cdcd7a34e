"""No training step waits for the device, except at logging steps.

On an accelerator, reading a tensor's value on the host (``.item()``, ``bool(t)``,
``.cpu()``, ``.tolist()``) makes the host wait for every queued kernel. These tests run
real training steps of every method on the CPU with the accelerator's rule forced
(:meth:`FineTuneModule.reads_device_every_step` false) and count such reads inside each
training step: through a dispatch mode for the ops that read a value, and by wrapping
the tensor methods that bypass the dispatcher for CPU tensors.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mile_ssl.commands.train import run_training
from mile_ssl.finetune import FineTuneModule

aten = torch.ops.aten
VALUE_READS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default}
BYPASSING = ("cpu", "tolist", "numpy", "item")


class _ValueReads(TorchDispatchMode):
    def __init__(self, found: list[str]) -> None:
        super().__init__()
        self.found = found

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in VALUE_READS:
            self.found.append(f"{func}\n{''.join(traceback.format_stack(limit=14))}")
        return func(*args, **(kwargs or {}))


@contextmanager
def counting_host_reads(found: list[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Append a description of every host read of a tensor value to ``found``."""
    originals = {name: getattr(torch.Tensor, name) for name in BYPASSING}

    def counted(name: str) -> Callable[..., Any]:
        def read(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            found.append(f"Tensor.{name}\n{''.join(traceback.format_stack(limit=14))}")
            return originals[name](tensor, *args, **kwargs)

        return read

    with monkeypatch.context() as patch:
        for name in BYPASSING:
            patch.setattr(torch.Tensor, name, counted(name))
        with _ValueReads(found):
            yield


class HostReadsPerStep(L.Callback):
    """Host reads inside each training step, and whether it was a logging step."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.steps: list[tuple[bool, list[str]]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = pl_module.training_step

        def counted_step(*args: Any, **kwargs: Any) -> Any:
            assert isinstance(pl_module, FineTuneModule)
            logging = pl_module.is_logging_step()
            found: list[str] = []
            with counting_host_reads(found, self.monkeypatch):
                result = step(*args, **kwargs)
            self.steps.append((logging, found))
            return result

        pl_module.training_step = counted_step  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def teacher_run(module_tmp_path: Path, tiny_config_module) -> Path:
    result = run_training(
        tiny_config_module("method=softmax", "trainer.max_steps=2"), module_tmp_path / "teacher"
    )
    return result.last_checkpoint


@pytest.fixture(scope="module")
def tiny_config_module():
    from mile_ssl.config import compose_train_config
    from tests.conftest import TINY_OVERRIDES

    return lambda *overrides: compose_train_config([*TINY_OVERRIDES, *overrides])


@pytest.mark.parametrize(
    "method",
    [
        ["method=softmax"],
        ["method=sigmoid"],
        ["method=mile"],
        ["method=mile", "mile.variant=copy"],
        ["method=mile_semi", "data.fraction=0.5", "data.unlabeled_ratio=1"],
        ["method=distill", "data.fraction=0.5", "data.unlabeled_ratio=1"],
        ["method=self_train", "data.fraction=0.5", "data.unlabeled_ratio=1"],
    ],
    ids=lambda overrides: "-".join(item.split("=")[1] for item in overrides[:2]),
)
def test_only_logging_steps_read_the_device(
    method: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    teacher_run: Path,
    tiny_config_module,
) -> None:
    monkeypatch.setattr(FineTuneModule, "reads_device_every_step", lambda self: False)
    counter = HostReadsPerStep(monkeypatch)
    overrides = [
        *method,
        "mile.kt=2",
        "mile.ks=2",
        "trainer.max_steps=8",
        "trainer.log_every_n_steps=3",
    ]
    if method[0] in ("method=distill", "method=self_train"):
        overrides.append(f"distill.teacher_checkpoint={teacher_run}")
    run_training(tiny_config_module(*overrides), tmp_path / "run", callbacks=[counter])

    assert len(counter.steps) == 8
    quiet = [found for logging, found in counter.steps if not logging]
    # Logging at steps 3 and 6 (of 1..8): the phase ends (steps 4 and 8) are quiet steps.
    assert len(quiet) == 6
    assert all(not found for found in quiet), "\n".join(next(f for f in quiet if f))
    # The logging steps do read (their values leave the device together, then each is
    # looked at on the host): the counter sees reads where there are some.
    assert all(found for logging, found in counter.steps if logging)
