"""Plain state dicts of torchvision and timm ResNet-style models.

This covers ``torch.save(model.state_dict(), ...)`` files, the torchvision model zoo,
the PyTorch ImageNet example (``{"arch": ..., "state_dict": {"module.": ...}}``) and
timm ResNets, whose parameter names are identical to torchvision's. The classifier
``fc.*`` is dropped because backbones are built headless.

Many self-supervised formats store a torchvision ResNet under a prefix without naming
its depth; :func:`infer_resnet_spec` reads it from the tensor shapes, so that those
adapters state the architecture instead of asking the user for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from mile_ssl.backbones import BackboneSpec
from mile_ssl.preprocessing import Preprocessing

from .registry import (
    AdapterOptions,
    ConvertedCheckpoint,
    drop,
    refuse_projection_layers,
    register_adapter,
    select,
    strip_prefix,
    unwrap,
)

DATA_PARALLEL_PREFIX = "module."
"""Prefix that ``nn.DataParallel`` / ``DistributedDataParallel`` add to every key."""

CLASSIFIER_PREFIX = "fc."
"""The ImageNet classifier of ResNet-style models; not part of the backbone."""

_SIGNATURE_KEYS = ("conv1.weight", "layer1.0.conv1.weight")

RESNET_MODULES = frozenset({"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"})
"""Top-level modules with parameters in torchvision's (and timm's) ResNet family."""

_STAGES = ("layer1", "layer2", "layer3", "layer4")

_DEPTHS: dict[tuple[bool, tuple[int, ...]], int] = {
    (False, (2, 2, 2, 2)): 18,
    (False, (3, 4, 6, 3)): 34,
    (True, (3, 4, 6, 3)): 50,
    (True, (3, 4, 23, 3)): 101,
    (True, (3, 8, 36, 3)): 152,
}
"""(bottleneck blocks?, blocks per stage) -> depth, as torchvision builds them."""

_VARIANTS: dict[tuple[int, int, int], str] = {
    (18, 64, 1): "resnet18",
    (34, 64, 1): "resnet34",
    (50, 64, 1): "resnet50",
    (101, 64, 1): "resnet101",
    (152, 64, 1): "resnet152",
    (50, 128, 1): "wide_resnet50_2",
    (101, 128, 1): "wide_resnet101_2",
    (50, 128, 32): "resnext50_32x4d",
    (101, 256, 32): "resnext101_32x8d",
    (101, 256, 64): "resnext101_64x4d",
}
"""(depth, width of the first block's 3x3 conv, its groups) -> torchvision model name."""

STANDARD_STEM_WIDTH = 64
"""Output channels of every torchvision ResNet's first convolution."""


def _resnet_state_dict(raw: Mapping[str, Any]) -> dict[str, Tensor]:
    return strip_prefix(unwrap(raw), DATA_PARALLEL_PREFIX)


def detect_torchvision(raw: Mapping[str, Any]) -> bool:
    """Whether ``raw`` is a (possibly wrapped) state dict of a ResNet and nothing else.

    Every key must belong to a ResNet module (:data:`RESNET_MODULES`), so that files
    with a projection head or prototypes next to the same ResNet names (SwAV's
    ``module.prototypes``, ...) are left to the adapter of their format. Files that
    declare a ``format`` belong to the adapter of that format, even when their tensors
    carry the same ResNet names.
    """
    if "format" in raw:
        return False
    try:
        keys = _resnet_state_dict(raw).keys()
    except ValueError:
        return False
    return all(key in keys for key in _SIGNATURE_KEYS) and all(
        key.partition(".")[0] in RESNET_MODULES for key in keys
    )


def infer_resnet_spec(state_dict: Mapping[str, Tensor]) -> BackboneSpec | None:
    """Name the torchvision ResNet whose ``state_dict()`` ``state_dict`` is, from its shapes.

    The depth follows from the number of blocks per stage and the block type
    (``conv3`` only exists in bottlenecks); wide and ResNeXt variants from the width
    and groups of the first block's 3x3 convolution. A 3x3 first convolution is the
    CIFAR stem (``cifar_stem=True``). Self-supervised formats rarely record the
    architecture, but the shapes determine it, and a wrong guess cannot load since
    loading is strict.

    Args:
        state_dict: Backbone tensors with torchvision names (no prefix, ``fc`` allowed).

    Returns:
        The spec, or ``None`` when the tensors are not a torchvision ResNet of a known
        variant (e.g. a wider stem, or other module names).
    """
    conv1 = state_dict.get("conv1.weight")
    first = state_dict.get("layer1.0.conv1.weight")
    if conv1 is None or first is None or conv1.dim() != 4 or first.dim() != 4:
        return None
    if conv1.shape[0] != STANDARD_STEM_WIDTH or conv1.shape[2:] not in ((7, 7), (3, 3)):
        return None
    bottleneck = "layer1.0.conv3.weight" in state_dict
    blocks = tuple(_blocks_in_stage(state_dict, stage) for stage in _STAGES)
    depth = _DEPTHS.get((bottleneck, blocks))
    conv2 = state_dict.get("layer1.0.conv2.weight")
    if depth is None or conv2 is None or conv2.dim() != 4:
        return None
    width = int(conv2.shape[0])
    groups = width // int(conv2.shape[1]) if conv2.shape[1] else 0
    arch = _VARIANTS.get((depth, width, groups))
    if arch is None:
        return None
    return BackboneSpec(f"torchvision:{arch}", {"cifar_stem": True} if conv1.shape[2] == 3 else {})


def resnet_stem_width(state_dict: Mapping[str, Tensor]) -> int | None:
    """Output channels of ``conv1``: 64 in torchvision, ``64 * w`` in SwAV's ``resnet50w{w}``."""
    conv1 = state_dict.get("conv1.weight")
    return int(conv1.shape[0]) if conv1 is not None and conv1.dim() == 4 else None


def _blocks_in_stage(state_dict: Mapping[str, Tensor], stage: str) -> int:
    indices = {
        key.split(".")[1]
        for key in state_dict
        if key.startswith(f"{stage}.") and key.count(".") > 1
    }
    return len(indices)


def torchvision_arch_spec(arch: object) -> BackboneSpec | None:
    """``torchvision:<arch>`` when ``arch`` (a checkpoint's ``arch`` field) names one.

    Returns ``None`` for anything else (missing, not a string, a timm or custom name),
    since the family of a bare name cannot be told apart reliably.
    """
    if not isinstance(arch, str):
        return None
    import torchvision.models

    if arch not in torchvision.models.list_models(module=torchvision.models):
        # Probably a timm name; the user must say which family it belongs to.
        return None
    return BackboneSpec(f"torchvision:{arch}")


@register_adapter(
    "torchvision",
    detect=detect_torchvision,
    signature=(
        "a state dict (maybe under 'state_dict'/'model', maybe 'module.'-prefixed) holding "
        "only ResNet modules conv1, bn1, layer1-4, fc; no 'format' key"
    ),
)
def convert_torchvision(raw: Mapping[str, Any], options: AdapterOptions) -> ConvertedCheckpoint:
    """Extract the backbone of a torchvision / timm ResNet state dict.

    Args:
        raw: The checkpoint mapping: a state dict, possibly nested under ``state_dict``
            or ``model`` and possibly with a DataParallel ``module.`` prefix.
        options: Conversion options; no projection head exists in these files.

    Returns:
        The tensors without the ``fc.*`` classifier (listed in ``dropped``); the
        architecture only when a top-level ``arch`` names a torchvision model; ImageNet
        preprocessing, which these models are trained with.

    Raises:
        ValueError: If no state dict is found in ``raw``.
    """
    refuse_projection_layers(options, "torchvision")
    state_dict = _resnet_state_dict(raw)
    return ConvertedCheckpoint(
        state_dict=drop(state_dict, CLASSIFIER_PREFIX),
        backbone=torchvision_arch_spec(raw.get("arch")),
        preprocessing=Preprocessing(),
        dropped=tuple(select(state_dict, CLASSIFIER_PREFIX)),
    )
