"""The fine-tuned student named for its backbone's library, checked against that library's model.

A run checkpoint names the student ``student.backbone.*`` and ``student.head.*``.
Deployment wants the names of the backbone's own library, so that the tensors load into
its stock classifier with one strict call: torchvision's ``fc.*``, timm's
``get_classifier()`` name (``fc``, ``head``, ``head.fc``), or mile_ssl's own
``backbone.*`` / ``head.*`` for the other backbones. The renamed tensors are compared,
name by name and shape by shape, with the target model built on the ``meta`` device (no
memory or time spent on weights), so a mismatch is an error here and never a file that
fails to load later.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mile_ssl.networks.backbones import TORCHVISION_BUILD_OPTIONS, BackboneSpec, build_backbone
from mile_ssl.runs.finished_run import FinishedRun

STUDENT_PREFIX = "student."
"""Where the kept network sits in a fine-tuning module's state dict."""


def student_state_dict(run: FinishedRun) -> dict[str, Tensor]:
    """The student's tensors (``backbone.*``, ``head.*``) of a run checkpoint, contiguous.

    The teacher is left out: it is a training device of MILe, not part of the result.
    Tensors are copied into the standard contiguous layout because networks train in
    channels-last format, which safetensors and many loaders do not expect.

    Raises:
        ValueError: Naming the checkpoint if there is no student head or backbone.
    """
    source = run.checkpoint_path
    state = run.checkpoint.get("state_dict")
    if not isinstance(state, Mapping):
        raise ValueError(f"{source}: the checkpoint has no 'state_dict'")
    student = {
        key[len(STUDENT_PREFIX) :]: value.detach()
        .to("cpu")
        .clone(memory_format=torch.contiguous_format)
        for key, value in state.items()
        if key.startswith(STUDENT_PREFIX)
    }
    for required in ("head.weight", "head.bias"):
        if required not in student:
            raise ValueError(f"{source}: the checkpoint's student has no {required!r}")
    if not any(key.startswith("backbone.") for key in student):
        raise ValueError(f"{source}: the checkpoint's student has no 'backbone.*' tensors")
    return student


def _split(student: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    backbone = {
        key[len("backbone.") :]: value
        for key, value in student.items()
        if key.startswith("backbone.")
    }
    return backbone, student["head.weight"], student["head.bias"]


def _meta_model(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a model on the ``meta`` device when it allows it (names and shapes only)."""
    try:
        with torch.device("meta"):
            return build()
    except (NotImplementedError, RuntimeError):
        return build()


def _module_name(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name
    raise ValueError(f"the classifier {type(target).__name__} is not a submodule of the model")


def _torchvision_reference(arch: str, kwargs: Mapping[str, Any], num_classes: int) -> nn.Module:
    """The backbone exactly as mile_ssl builds it (stem options included), with a head."""

    def build() -> nn.Module:
        model, feature_dim = build_backbone(BackboneSpec(f"torchvision:{arch}", dict(kwargs)))
        model.fc = nn.Linear(feature_dim, num_classes)
        return model

    return _meta_model(build)


def _timm_reference(name: str, kwargs: Mapping[str, Any], num_classes: int) -> nn.Module:
    import timm

    return _meta_model(
        lambda: timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    )


def _check_against(
    tensors: Mapping[str, Tensor], reference: nn.Module, target: str, source: str | Path
) -> None:
    """Fail, naming the first offending keys, unless ``tensors`` load strictly into it."""
    expected = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = sorted(
        key for key in set(expected) & set(tensors) if tuple(tensors[key].shape) != expected[key]
    )
    if missing or unexpected or mismatched:
        details = []
        if missing:
            details.append(f"missing {missing[:5]}")
        if unexpected:
            details.append(f"unexpected {unexpected[:5]}")
        if mismatched:
            key = mismatched[0]
            details.append(
                f"{len(mismatched)} of other shape, e.g. {key!r}: "
                f"{tuple(tensors[key].shape)} vs {expected[key]}"
            )
        raise ValueError(
            f"{source}: the student cannot be exported as {target}: " + "; ".join(details)
        )


def _torchvision_tensors(
    arch: str,
    kwargs: Mapping[str, Any],
    student: Mapping[str, Tensor],
    source: str | Path,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    backbone, weight, bias = _split(student)
    tensors = {**backbone, "fc.weight": weight, "fc.bias": bias}
    num_classes = int(weight.shape[0])
    _check_against(
        tensors,
        _torchvision_reference(arch, kwargs, num_classes),
        f"torchvision:{arch}",
        source,
    )
    constructor = {k: v for k, v in kwargs.items() if k not in TORCHVISION_BUILD_OPTIONS}
    arguments = ", ".join(
        [repr(arch), "weights=None", f"num_classes={num_classes}"]
        + [f"{key}={value!r}" for key, value in constructor.items()]
    )
    load: dict[str, Any] = {
        "library": "torchvision",
        "model": f"torchvision.models.get_model({arguments})",
        "strict": True,
        "head": "fc",
        "identical_outputs": True,
    }
    notes = []
    if kwargs.get("cifar_stem"):
        load["strict"] = False
        notes.append(
            "replace conv1 by a 3x3 stride-1 convolution (no bias, padding "
            f"{kwargs.get('cifar_stem_padding', 1)}) and maxpool by Identity before loading "
            "(CIFAR stem)"
        )
    if kwargs.get("tf_same_padding"):
        notes.append(
            "the weights were trained with TensorFlow 'SAME' padding: apply "
            "mile_ssl.networks.tf_padding.use_tf_same_padding(model) to reproduce the outputs; "
            "the stock model loads them but computes slightly different features"
        )
    if notes:
        load["identical_outputs"] = False
        load["note"] = "; ".join(notes)
    return tensors, load


def _timm_tensors(
    name: str,
    kwargs: Mapping[str, Any],
    student: Mapping[str, Tensor],
    source: str | Path,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    backbone, weight, bias = _split(student)
    num_classes = int(weight.shape[0])
    reference = _timm_reference(name, kwargs, num_classes)
    classifier = reference.get_classifier()  # type: ignore[operator]
    if not isinstance(classifier, nn.Module) or not any(True for _ in classifier.parameters()):
        raise ValueError(
            f"{source}: timm:{name} has no classifier with parameters to hold the head"
        )
    prefix = _module_name(reference, classifier)
    head_weight = reference.state_dict()[f"{prefix}.weight"]
    if tuple(head_weight.shape) != tuple(weight.shape) and head_weight.numel() == weight.numel():
        weight = weight.reshape(head_weight.shape)  # e.g. a 1x1-convolution classifier
    tensors = {**backbone, f"{prefix}.weight": weight, f"{prefix}.bias": bias}
    _check_against(tensors, reference, f"timm:{name}", source)
    arguments = ", ".join(
        [repr(name), "pretrained=False", f"num_classes={num_classes}"]
        + [f"{key}={value!r}" for key, value in kwargs.items()]
    )
    load = {
        "library": "timm",
        "model": f"timm.create_model({arguments})",
        "strict": True,
        "head": prefix,
        "identical_outputs": True,
    }
    return tensors, load


def _mile_ssl_load(name: str, kwargs: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
    return {
        "library": "mile_ssl",
        "model": (
            "mile_ssl.finetune.Classifier(*mile_ssl.networks.backbones.build_backbone("
            f"BackboneSpec({name!r}, {dict(kwargs)!r})), num_classes={num_classes})"
        ),
        "strict": True,
        "head": "head",
        "identical_outputs": True,
    }


def exported_tensors(run: FinishedRun) -> tuple[dict[str, Tensor], str, dict[str, Any]]:
    """The student named for its backbone's library, the naming used, and how to load it.

    Returns:
        ``(tensors, naming, load)``: ``naming`` is ``torchvision``, ``timm`` or
        ``mile_ssl``; ``load`` describes the model to load the tensors into.

    Raises:
        ValueError: Naming the checkpoint if the tensors do not fit the target model.
    """
    source = run.checkpoint_path
    backbone = run.metadata.get("backbone") or {}
    name = backbone.get("name")
    kwargs = dict(backbone.get("kwargs") or {})
    if not isinstance(name, str):
        raise ValueError(f"{source}: the checkpoint's metadata does not name its backbone")
    student = student_state_dict(run)
    family, _, arch = name.partition(":")
    if family == "torchvision" and arch:
        tensors, load = _torchvision_tensors(arch, kwargs, student, source)
        return tensors, "torchvision", load
    if family == "timm" and arch:
        tensors, load = _timm_tensors(arch, kwargs, student, source)
        return tensors, "timm", load
    num_classes = int(student["head.weight"].shape[0])
    return dict(student), "mile_ssl", _mile_ssl_load(name, kwargs, num_classes)


def tensors_head_width(tensors: Mapping[str, Tensor], load: Mapping[str, Any]) -> int:
    """Input width of the exported classifier (the backbone's feature width)."""
    weight = tensors[f"{load['head']}.weight"]
    return int(weight.reshape(weight.shape[0], -1).shape[1])
