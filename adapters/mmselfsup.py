"""OpenMMLab checkpoints: mmselfsup and mmpretrain (open-mmlab/mmselfsup, mmpretrain).

mmcv / mmengine save ``{"meta": {...}, "state_dict": {...}}`` (training runs add
``optimizer``, ``message_hub``, ``param_schedulers``). A self-supervised algorithm's
state dict has ``backbone.*``, ``neck.*`` and ``head.*``, and for momentum methods the
target network (``target_net.*`` in mmselfsup 1.x and mmpretrain, ``encoder_k.*`` /
``target_net.*`` plus ``queue`` in 0.x); this covers mmselfsup's MoCo, SimCLR, BYOL,
SwAV, DenseCL, ... The backbone is kept, everything else is dropped.

OpenMMLab's ``ResNet`` (``mmpretrain/models/backbones/resnet.py``) names its layers
like torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``,
...) and computes the same function (the default ``style="pytorch"`` puts the stride on
the 3x3 convolution), so the backbone loads into ``torchvision:resnet*`` as is; the
depth is read from the shapes. Other backbones (``ResNetV1c``'s deep stem, ViTs named
``layers.N.ln1``) do not load into torchvision or timm names and need a converter.

The released models normalise inputs with the ImageNet statistics (configs'
``data_preprocessor`` / ``img_norm_cfg``: mean 123.675/116.28/103.53 and std
58.395/57.12/57.375 on 0-255 pixels).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mile_ssl.preprocessing import Preprocessing

from .registry import (
    AdapterOptions,
    ConvertedCheckpoint,
    extract,
    has_prefix,
    refuse_projection_layers,
    register_adapter,
    unwrap,
)
from .torchvision_format import CLASSIFIER_PREFIX, infer_resnet_spec

META_KEY = "meta"
"""Top-level metadata every mmcv / mmengine checkpoint carries."""

BACKBONE_PREFIX = "backbone."
"""Where OpenMMLab algorithms keep the backbone."""


def detect_mmselfsup(raw: Mapping[str, Any]) -> bool:
    """Whether ``raw`` has a top-level ``meta`` and a ``state_dict`` with ``backbone.`` keys."""
    state_dict = raw.get("state_dict")
    return (
        isinstance(raw.get(META_KEY), Mapping)
        and isinstance(state_dict, Mapping)
        and has_prefix(state_dict, BACKBONE_PREFIX)
    )


@register_adapter(
    "mmselfsup",
    detect=detect_mmselfsup,
    signature="top-level 'meta' and a 'state_dict' with 'backbone.' keys (mmselfsup, mmpretrain)",
)
def convert_mmselfsup(raw: Mapping[str, Any], options: AdapterOptions) -> ConvertedCheckpoint:
    """Extract the backbone of an mmselfsup / mmpretrain checkpoint.

    Args:
        raw: The checkpoint mapping.
        options: Conversion options; necks and heads are not kept.

    Returns:
        The backbone tensors (torchvision names for OpenMMLab ResNets), the
        architecture inferred from their shapes, ImageNet preprocessing, and the neck,
        heads and target network as ``dropped``.

    Raises:
        ValueError: If there are no ``backbone.`` keys.
    """
    refuse_projection_layers(options, "mmselfsup")
    state_dict = unwrap(raw, keys=("state_dict",))
    if not has_prefix(state_dict, BACKBONE_PREFIX):
        raise ValueError(
            f"no keys under {BACKBONE_PREFIX!r} in 'state_dict' (first keys: "
            f"{list(state_dict)[:5]})"
        )
    kept, dropped = extract(state_dict, BACKBONE_PREFIX, CLASSIFIER_PREFIX)
    return ConvertedCheckpoint(
        state_dict=kept,
        backbone=infer_resnet_spec(kept),
        preprocessing=Preprocessing(),
        dropped=dropped,
        expected_prefix=BACKBONE_PREFIX,
    )
