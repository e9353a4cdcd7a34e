"""Which class trains which method, and what each is built with."""

from __future__ import annotations

import pytest
import torch

from mile_ssl.commands.train import unlabeled_stream
from mile_ssl.config import METHODS, MethodConfig, MileConfig
from mile_ssl.finetune import (
    METHOD_CLASSES,
    FixedTeacherModule,
    MILeModule,
    SupervisedModule,
    build_module,
)
from mile_ssl.networks.backbones import BackboneSpec, build_backbone


def _backbone() -> tuple[torch.nn.Module, int]:
    return build_backbone(BackboneSpec("tiny_resnet", {"widths": [8]}))


def test_every_method_has_exactly_one_class() -> None:
    assert set(METHOD_CLASSES) == set(METHODS)
    assert METHOD_CLASSES["mile"] is MILeModule
    assert {METHOD_CLASSES["softmax"], METHOD_CLASSES["sigmoid"]} == {SupervisedModule}
    assert {METHOD_CLASSES["distill"], METHOD_CLASSES["self_train"]} == {FixedTeacherModule}


def test_each_class_takes_only_its_settings() -> None:
    backbone, dim = _backbone()
    mile = build_module(
        backbone, dim, 3, method=MethodConfig("mile"), mile=MileConfig(variant="copy")
    )
    assert isinstance(mile, MILeModule) and mile.trains_teacher
    backbone, dim = _backbone()
    softmax = build_module(backbone, dim, 3, method=MethodConfig("softmax"), mile=MileConfig())
    assert isinstance(softmax, SupervisedModule) and not hasattr(softmax, "teacher")
    with pytest.raises(ValueError, match="distill.teacher_checkpoint"):
        build_module(*_backbone(), 3, method=MethodConfig("distill"))
    with pytest.raises(ValueError, match="fixed teacher"):
        build_module(*_backbone(), 3, method=MethodConfig("sigmoid"), fixed_teacher=softmax)
    with pytest.raises(ValueError, match="build_module"):
        MILeModule(*_backbone(), 3, method=MethodConfig("softmax"))


def test_the_data_asks_the_method_class_which_steps_read_unlabeled_images(tiny_config) -> None:
    assert unlabeled_stream(tiny_config("method=mile")) is None
    assert unlabeled_stream(tiny_config("method=sigmoid")) is None
    semi = unlabeled_stream(tiny_config("method=mile_semi", "mile.kt=1", "mile.ks=1"))
    assert semi is not None
    assert [semi.uses_unlabeled(step) for step in range(4)] == [False, True, False, True]
    distill = unlabeled_stream(tiny_config("method=distill"))
    assert distill is not None and distill.uses_unlabeled(0)
