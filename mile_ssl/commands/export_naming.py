"""The fine-tuned student named for its backbone's library, checked against that library's model.

A run checkpoint names the student ``student.backbone.*`` and ``student.head.*``.
Deployment wants the names of the backbone's own library, so that the tensors load into
its stock classifier with one strict call: torchvision's ``fc.*``, timm's
``get_classifier()`` name (``fc``, ``head``, ``head.fc``), or mile_ssl's own
``backbone.*`` / ``head.*`` for the other backbones. SimCLR-v2's ResNets without
selective kernels at width 1 and without projection-head layers are torchvision's
ResNet-50/101/152 layer for layer, so they get torchvision's names; its other variants
are no network of either library, and their export carries the network's definition (a
torch-only file) instead. The renamed tensors are compared, name by name and shape by
shape, with the target model built on the ``meta`` device (no memory or time spent on
weights), so a mismatch is an error here and never a file that fails to load later.

Each export also says how to build the model in Python (:class:`ExportedNetwork`): the
imports and statements that make ``model``, which ``model.json`` renders as code that
runs as written.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mile_ssl.networks.backbones import TORCHVISION_BUILD_OPTIONS, BackboneSpec, build_backbone
from mile_ssl.runs.finished_run import FinishedRun

STUDENT_PREFIX = "student."
"""Where the kept network sits in a fine-tuning module's state dict."""


@dataclass(frozen=True)
class ExportedNetwork:
    """The student as exported, and how to rebuild it without a run.

    Attributes:
        tensors: The state dict, named for ``naming``.
        naming: ``torchvision``, ``timm`` or ``mile_ssl``.
        load: What ``model.json`` says about loading (library, strict, head,
            identical_outputs, note).
        imports: Import lines the statements need.
        build: Statements that make ``model``; they may read ``folder``, the export's
            folder (e.g. for a definition in :attr:`files`).
        files: Source files to write beside the weights, by name.
    """

    tensors: dict[str, Tensor]
    naming: str
    load: dict[str, Any]
    imports: tuple[str, ...]
    build: tuple[str, ...]
    files: dict[str, str] = field(default_factory=dict)


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
) -> ExportedNetwork:
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
    imports = ["import torchvision"]
    build = [f"model = torchvision.models.get_model({arguments})"]
    load: dict[str, Any] = {
        "library": "torchvision",
        "strict": True,
        "head": "fc",
        "identical_outputs": True,
    }
    notes = []
    if kwargs.get("cifar_stem"):
        padding = kwargs.get("cifar_stem_padding", 1)
        imports.append("import torch")
        build += [
            "model.conv1 = torch.nn.Conv2d(3, model.conv1.out_channels, 3, stride=1, "
            f"padding={padding}, bias=False)",
            "model.maxpool = torch.nn.Identity()",
        ]
        notes.append(
            "CIFAR stem: conv1 is a 3x3 stride-1 convolution (no bias, padding "
            f"{padding}) and maxpool an Identity; build them so before loading"
        )
    if kwargs.get("tf_same_padding"):
        load["identical_outputs"] = False
        notes.append(
            "the weights were trained with TensorFlow 'SAME' padding: apply "
            "mile_ssl.networks.tf_padding.use_tf_same_padding(model) to reproduce the outputs; "
            "the stock model loads them but computes slightly different features"
        )
    if notes:
        load["note"] = "; ".join(notes)
    return ExportedNetwork(tensors, "torchvision", load, tuple(imports), tuple(build))


def _timm_tensors(
    name: str,
    kwargs: Mapping[str, Any],
    student: Mapping[str, Tensor],
    source: str | Path,
) -> ExportedNetwork:
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
    load = {"library": "timm", "strict": True, "head": prefix, "identical_outputs": True}
    build = (f"model = timm.create_model({arguments})",)
    return ExportedNetwork(tensors, "timm", load, ("import timm",), build)


def _mile_ssl_network(
    name: str, kwargs: Mapping[str, Any], student: Mapping[str, Tensor]
) -> ExportedNetwork:
    """mile_ssl's own names, built by mile_ssl (``pip install mile-ssl``)."""
    num_classes = int(student["head.weight"].shape[0])
    load = {
        "library": "mile_ssl",
        "strict": True,
        "head": "head",
        "identical_outputs": True,
        "note": f"{name} is no torchvision or timm network: mile_ssl builds it",
    }
    imports = (
        "from mile_ssl.finetune import Classifier",
        "from mile_ssl.networks.backbones import BackboneSpec, build_backbone",
    )
    build = (
        f"backbone, feature_dim = build_backbone(BackboneSpec({name!r}, {dict(kwargs)!r}))",
        f"model = Classifier(backbone, feature_dim, num_classes={num_classes})",
    )
    return ExportedNetwork(dict(student), "mile_ssl", load, imports, build)


SIMCLRV2_DEFINITION = "simclrv2_resnet.py"
"""The file beside an export's weights that defines SimCLR-v2's ResNet (torch only)."""

_SIMCLRV2_STEM = {"net.0.0.": "conv1.", "net.0.1.0.": "bn1."}
_SIMCLRV2_BLOCK = re.compile(r"net\.([1-4])\.blocks\.(\d+)\.(.+)")
_SIMCLRV2_BLOCK_PARTS = {
    "net.0.": "conv1.",
    "net.1.0.": "bn1.",
    "net.2.": "conv2.",
    "net.3.0.": "bn2.",
    "net.4.": "conv3.",
    "net.5.0.": "bn3.",
    "projection.shortcut.": "downsample.0.",
    "projection.bn.0.": "downsample.1.",
}
"""SimCLR-v2 sk0 ResNet names (:mod:`mile_ssl.networks.simclrv2_resnet`) -> torchvision's:
the same layers, strides and paddings, the stride on the 3x3 convolution as in ResNet v1.5."""


def simclrv2_torchvision_name(key: str) -> str:
    """The torchvision name of a SimCLR-v2 sk0 ResNet tensor, e.g. ``layer1.0.conv2.weight``.

    ``net.1.blocks.0.net.2.weight`` is the first block's 3x3 convolution.

    Raises:
        ValueError: If ``key`` is no tensor of a plain SimCLR-v2 ResNet.
    """
    block = _SIMCLRV2_BLOCK.fullmatch(key)
    parts = _SIMCLRV2_BLOCK_PARTS if block else _SIMCLRV2_STEM
    rest = block.group(3) if block else key
    for old, new in parts.items():
        if rest.startswith(old):
            prefix = f"layer{block.group(1)}.{block.group(2)}." if block else ""
            return prefix + new + rest[len(old) :]
    raise ValueError(f"{key!r} is no tensor of a SimCLR-v2 ResNet without selective kernels")


def _simclrv2_network(
    kwargs: Mapping[str, Any], student: Mapping[str, Tensor], source: str | Path
) -> ExportedNetwork:
    """The torchvision ResNet where SimCLR-v2's is one; else its own definition beside it."""
    from mile_ssl.networks import simclrv2_resnet

    depth = int(kwargs.get("depth", 50))
    width = int(kwargs.get("width_multiplier", 1))
    selective_kernel = bool(kwargs.get("selective_kernel", False))
    layers = int(kwargs.get("projection_layers", 0))
    if width == 1 and not selective_kernel and not layers:
        renamed = {
            (f"backbone.{simclrv2_torchvision_name(key[len('backbone.') :])}")
            if key.startswith("backbone.")
            else key: value
            for key, value in student.items()
        }
        return _torchvision_tensors(f"resnet{depth}", {}, renamed, source)
    differences = [
        *([f"width {width}x (every channel count times {width})"] if width != 1 else []),
        *(["selective kernels (sk1)"] if selective_kernel else []),
        *([f"{layers} projection-head layer(s) before the classifier"] if layers else []),
    ]
    num_classes = int(student["head.weight"].shape[0])
    arguments = ", ".join(f"{key}={value!r}" for key, value in sorted(kwargs.items()))
    load = {
        "library": "torch",
        "strict": True,
        "head": "head",
        "identical_outputs": True,
        "note": (
            f"SimCLR-v2 ResNet-{depth} with {' and '.join(differences)} is no torchvision or "
            f"timm network: {SIMCLRV2_DEFINITION} beside the weights defines it (torch only)"
        ),
    }
    imports = ("import importlib.util", "from collections import OrderedDict", "import torch")
    build = (
        "spec = importlib.util.spec_from_file_location("
        f"'simclrv2_resnet', folder / {SIMCLRV2_DEFINITION!r})",
        "simclrv2_resnet = importlib.util.module_from_spec(spec)",
        "spec.loader.exec_module(simclrv2_resnet)",
        f"backbone = simclrv2_resnet.SimCLRv2ResNet({arguments})",
        "model = torch.nn.Sequential(OrderedDict(backbone=backbone, "
        f"head=torch.nn.Linear(backbone.feature_dim, {num_classes})))",
    )
    definition = Path(simclrv2_resnet.__file__).read_text(encoding="utf-8")
    return ExportedNetwork(
        dict(student), "mile_ssl", load, imports, build, {SIMCLRV2_DEFINITION: definition}
    )


def exported_network(run: FinishedRun) -> ExportedNetwork:
    """The student named for its backbone's library, and how to rebuild it.

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
        return _torchvision_tensors(arch, kwargs, student, source)
    if family == "timm" and arch:
        return _timm_tensors(arch, kwargs, student, source)
    if name == "simclrv2":
        return _simclrv2_network(kwargs, student, source)
    return _mile_ssl_network(name, kwargs, student)


def tensors_head_width(tensors: Mapping[str, Tensor], load: Mapping[str, Any]) -> int:
    """Input width of the exported classifier (the backbone's feature width)."""
    weight = tensors[f"{load['head']}.weight"]
    return int(weight.reshape(weight.shape[0], -1).shape[1])
