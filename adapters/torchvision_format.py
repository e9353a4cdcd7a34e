"""Plain state dicts of torchvision and timm ResNet-style models.

This covers ``torch.save(model.state_dict(), ...)`` files, the torchvision model zoo,
the PyTorch ImageNet example (``{"arch": ..., "state_dict": {"module.": ...}}``) and
timm ResNets, whose parameter names are identical to torchvision's. The classifier
``fc.*`` is dropped because backbones are built headless.
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


def _resnet_state_dict(raw: Mapping[str, Any]) -> dict[str, Tensor]:
    return strip_prefix(unwrap(raw), DATA_PARALLEL_PREFIX)


def detect_torchvision(raw: Mapping[str, Any]) -> bool:
    """Whether ``raw`` is a (possibly wrapped) state dict with ResNet parameter names.

    Files that declare a ``format`` belong to the adapter of that format, even when
    their tensors carry the same ResNet names.
    """
    if "format" in raw:
        return False
    try:
        keys = _resnet_state_dict(raw).keys()
    except ValueError:
        return False
    return all(key in keys for key in _SIGNATURE_KEYS)


def _spec_from_arch(raw: Mapping[str, Any]) -> BackboneSpec | None:
    arch = raw.get("arch")
    if not isinstance(arch, str):
        return None
    import torchvision.models

    if arch not in torchvision.models.list_models(module=torchvision.models):
        # Probably a timm name; the user must say which family it belongs to.
        return None
    return BackboneSpec(f"torchvision:{arch}")


@register_adapter("torchvision", detect=detect_torchvision)
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
        backbone=_spec_from_arch(raw),
        preprocessing=Preprocessing(),
        dropped=tuple(select(state_dict, CLASSIFIER_PREFIX)),
    )
