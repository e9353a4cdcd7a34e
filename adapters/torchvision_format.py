"""Plain state dicts of torchvision and timm ResNet-style models.

This covers ``torch.save(model.state_dict(), ...)`` files, the torchvision model zoo,
the PyTorch ImageNet example (``{"arch": ..., "state_dict": {"module.": ...}}``) and
timm ResNets, whose parameter names are identical to torchvision's. The classifier
``fc.*`` is dropped because backbones are built headless.

Many self-supervised formats store a torchvision ResNet under a prefix without naming
its depth; :func:`~.architectures.infer_resnet_spec` reads it from the tensor shapes, so
that those adapters state the architecture instead of asking the user for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from mile_ssl.networks.backbones import BackboneSpec
from mile_ssl.networks.preprocessing import Preprocessing

from .architectures import CLASSIFIER_PREFIX, infer_resnet_spec, torchvision_arch_spec
from .conversion import AdapterOptions, ConvertedCheckpoint, refuse_projection_layers
from .registry import register_adapter
from .state_dicts import DATA_PARALLEL_PREFIX, drop, select, strip_prefix, unwrap

_SIGNATURE_KEYS = ("conv1.weight", "layer1.0.conv1.weight")

RESNET_MODULES = frozenset({"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"})
"""Top-level modules with parameters in torchvision's (and timm's) ResNet family."""


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
        architecture (see :func:`_stated_or_inferred`: ``torch.save(resnet50()
        .state_dict())`` files such as Barlow Twins' and VICReg's need no backbone named);
        ImageNet preprocessing, which these models are trained with.

    Raises:
        ValueError: If no state dict is found in ``raw``.
    """
    refuse_projection_layers(options, "torchvision")
    state_dict = _resnet_state_dict(raw)
    backbone = drop(state_dict, CLASSIFIER_PREFIX)
    return ConvertedCheckpoint(
        state_dict=backbone,
        backbone=_stated_or_inferred(raw, backbone, options),
        preprocessing=Preprocessing(),
        dropped=tuple(select(state_dict, CLASSIFIER_PREFIX)),
    )


def _stated_or_inferred(
    raw: Mapping[str, Any], backbone: Mapping[str, Tensor], options: AdapterOptions
) -> BackboneSpec | None:
    """The architecture ``arch`` names; else, unless the user names one, the shapes' ResNet.

    timm's ResNets share torchvision's parameter names, so the shapes cannot tell the
    two apart: a backbone the user names is taken (strict loading still checks it), and
    an ``arch`` that is not a torchvision model is not replaced by a guess.
    """
    if "arch" in raw:
        return torchvision_arch_spec(raw.get("arch"))
    return None if options.backbone is not None else infer_resnet_spec(backbone)
