"""``trainer.compile=true``: the networks are compiled in place, keys and tensors unchanged.

The run below switches dynamo's compilation off: compiling the tiny network for
training and for validation takes about a minute on a two-core CPU, too long for this
suite; the compiled call path, the wiring and the checkpoint are what is tested.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from mile_ssl.commands.train import run_training
from mile_ssl.config import MileConfig
from mile_ssl.finetune import MILeModule
from mile_ssl.networks.backbones import BackboneSpec, build_backbone


def test_compiling_keeps_state_dict_names_and_the_tensors_a_refresh_copies_into() -> None:
    backbone, dim = build_backbone(BackboneSpec("tiny_resnet", {"widths": [8]}))
    module = MILeModule(backbone, dim, 3, mile=MileConfig(variant="snapshot"))
    names = list(module.state_dict())
    teacher_tensors = [tensor.data_ptr() for tensor in module.teacher.state_dict().values()]
    module.compile_networks()
    assert all(network._compiled_call_impl is not None for network in module.networks())
    assert list(module.state_dict()) == names
    with torch.no_grad():
        module.student.head.bias.add_(1.0)
    module.refresh_teacher()
    assert torch.equal(module.teacher.head.bias, module.student.head.bias)
    assert [tensor.data_ptr() for tensor in module.teacher.state_dict().values()] == (
        teacher_tensors
    )


class CompiledNetworks(L.Callback):
    """Records whether each network of the module was compiled when training started."""

    def __init__(self) -> None:
        self.compiled: list[bool] = []

    def on_train_start(self, trainer: L.Trainer, module: Any) -> None:
        self.compiled = [net._compiled_call_impl is not None for net in module.networks()]


def test_trainer_compile_trains_compiled_networks_and_saves_the_usual_keys(
    tiny_config, tmp_path: Path
) -> None:
    config = tiny_config(
        "method=mile", "mile.kt=1", "mile.ks=1", "trainer.max_steps=2", "trainer.compile=true"
    )
    watcher = CompiledNetworks()
    with torch._dynamo.config.patch(disable=True):
        result = run_training(config, tmp_path, [watcher])
    assert watcher.compiled == [True, True]
    saved = torch.load(result.last_checkpoint, weights_only=True)
    assert saved["mile_ssl"]["completed_steps"] == 2
    backbone, dim = build_backbone(BackboneSpec("tiny_resnet", dict(config.backbone.kwargs)))
    uncompiled = MILeModule(backbone, dim, len(saved["mile_ssl"]["metadata"]["class_names"]))
    assert list(saved["state_dict"]) == list(uncompiled.state_dict())
    assert {"top1", "map"} <= set(result.metrics)
