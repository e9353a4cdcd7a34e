"""Which class trains which method, what each is built with, and what the config decides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mile_ssl.commands.train import unlabeled_stream
from mile_ssl.config import (
    METHODS,
    DistillConfig,
    MethodConfig,
    MileConfig,
    OptimConfig,
    TrainConfig,
)
from mile_ssl.finetune import (
    METHOD_CLASSES,
    FixedTeacherModule,
    MILeModule,
    ModuleSettings,
    SupervisedModule,
    build_module,
    module_from_settings,
)
from mile_ssl.networks.backbones import BackboneSpec, build_backbone
from mile_ssl.schedule import unlabeled_steps
from tests.conftest import one_step_trainer


def _backbone() -> tuple[torch.nn.Module, int]:
    return build_backbone(BackboneSpec("tiny_resnet", {"widths": [8]}))


def _settings(name: str, **fields: Any) -> ModuleSettings:
    backbone, dim = _backbone()
    return ModuleSettings(backbone, dim, 3, method=MethodConfig(name), **fields)


def test_every_method_has_exactly_one_class() -> None:
    assert set(METHOD_CLASSES) == set(METHODS)
    assert METHOD_CLASSES["mile"] is MILeModule
    assert {METHOD_CLASSES["softmax"], METHOD_CLASSES["sigmoid"]} == {SupervisedModule}
    assert {METHOD_CLASSES["distill"], METHOD_CLASSES["self_train"]} == {FixedTeacherModule}


def test_every_class_is_built_from_one_settings_record() -> None:
    teacher = _backbone()[0]
    for name in METHODS:
        settings = _settings(
            name,
            optim=OptimConfig(lr=0.25),
            mile=MileConfig(kt=3, ks=4),
            distill=DistillConfig(temperature=2.0),
            fixed_teacher=teacher if name in ("distill", "self_train") else None,
            channels_last=False,
            metadata={"class_names": ["a", "b", "c"]},
        )
        module = module_from_settings(settings)
        assert type(module) is METHOD_CLASSES[name], name
        assert type(METHOD_CLASSES[name].from_settings(settings)) is METHOD_CLASSES[name]
        assert module.method.name == name and module.optim.lr == 0.25
        assert module.metadata == {"class_names": ["a", "b", "c"]} and not module.channels_last
        assert module.student.backbone is settings.backbone
        # Each class reads what it uses and nothing else.
        assert (getattr(module, "mile", None) == MileConfig(kt=3, ks=4)) == (name == "mile")
        assert hasattr(module, "distill") == (name in ("distill", "self_train"))
    distill = module_from_settings(_settings("distill", fixed_teacher=teacher))
    assert isinstance(distill, FixedTeacherModule) and distill.networks()[1] is teacher
    assert not any(parameter.requires_grad for parameter in teacher.parameters())
    with pytest.raises(ValueError, match="no method"):
        module_from_settings(ModuleSettings(*_backbone(), 3))


def test_each_class_takes_only_its_settings() -> None:
    backbone, dim = _backbone()
    mile = build_module(
        backbone, dim, 3, method=MethodConfig("mile"), mile=MileConfig(variant="copy")
    )
    assert isinstance(mile, MILeModule) and mile.trains_teacher
    backbone, dim = _backbone()
    softmax = build_module(backbone, dim, 3, method=MethodConfig("softmax"), mile=MileConfig())
    assert isinstance(softmax, SupervisedModule) and not hasattr(softmax, "teacher")
    with pytest.raises(ValueError, match="fixed teacher"):
        build_module(*_backbone(), 3, method=MethodConfig("sigmoid"), fixed_teacher=softmax)
    with pytest.raises(ValueError, match="build_module"):
        MILeModule(*_backbone(), 3, method=MethodConfig("softmax"))
    with pytest.raises(TypeError, match="mile_config"):
        MILeModule(*_backbone(), 3, mile_config=MileConfig())


def test_a_fixed_teacher_method_built_without_its_teacher_evaluates_but_never_trains(
    tmp_path: Path,
) -> None:
    module = build_module(*_backbone(), 3, method=MethodConfig("distill"))
    assert isinstance(module, FixedTeacherModule) and module.networks() == [module.student]
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert module.eval()(images).shape == (4, 3)
    trainer = one_step_trainer(tmp_path)
    batches = [{"image": images, "label": torch.arange(4) % 3}]
    before = [parameter.detach().clone() for parameter in module.parameters()]
    with pytest.raises(ValueError, match=r"'distill'.*distill\.teacher_checkpoint"):
        trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    assert module.completed_steps == 0
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


@pytest.mark.parametrize(
    ("name", "semi_supervised", "expected"),
    [
        ("softmax", False, None),
        ("softmax", True, None),
        ("sigmoid", False, None),
        ("sigmoid", True, None),
        ("mile", False, None),
        ("mile", True, [False, False, True, True, True, False, False, True]),
        ("distill", False, [True] * 8),
        ("distill", True, [True] * 8),
        ("self_train", False, [True] * 8),
        ("self_train", True, [True] * 8),
    ],
)
def test_which_steps_read_unlabeled_images_is_a_function_of_the_config(
    name: str, semi_supervised: bool, expected: list[bool] | None
) -> None:
    uses_unlabeled = unlabeled_steps(
        MethodConfig(name), MileConfig(kt=2, ks=3, semi_supervised=semi_supervised)
    )
    if expected is None:
        assert uses_unlabeled is None
    else:
        assert uses_unlabeled is not None
        assert [uses_unlabeled(step) for step in range(8)] == expected


def test_the_data_asks_the_method_config_which_steps_read_unlabeled_images(tiny_config) -> None:
    assert unlabeled_stream(tiny_config("method=mile")) is None
    assert unlabeled_stream(tiny_config("method=sigmoid")) is None
    semi = unlabeled_stream(tiny_config("method=mile_semi", "mile.kt=1", "mile.ks=1"))
    assert semi is not None
    assert [semi.uses_unlabeled(step) for step in range(4)] == [False, True, False, True]
    distill = unlabeled_stream(tiny_config("method=distill"))
    assert distill is not None and distill.uses_unlabeled(0)


def test_the_resume_rule_is_what_the_checkpoint_stores(tiny_config) -> None:
    for name, sections in [("softmax", {"method"}), ("mile", {"method", "mile"})]:
        config: TrainConfig = tiny_config(f"method={name}", "mile.kt=3")
        fixed = METHOD_CLASSES[name].fixed_on_resume(config)
        assert set(fixed) == sections
        module = build_module(*_backbone(), 3, method=config.method, mile=config.mile)
        assert module.checkpoint_settings() == fixed
    assert fixed["mile"]["kt"] == 3
