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

from .prefixed import register_prefixed_adapter
from .state_dicts import has_prefix

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


convert_mmselfsup = register_prefixed_adapter(
    "mmselfsup",
    detect=detect_mmselfsup,
    signature="top-level 'meta' and a 'state_dict' with 'backbone.' keys (mmselfsup, mmpretrain)",
    prefixes=(BACKBONE_PREFIX,),
    container="state_dict",
)
"""The backbone under ``backbone.`` (torchvision names for OpenMMLab ResNets), the
architecture inferred from its shapes, ImageNet preprocessing, and the neck, heads and
target network as ``dropped``."""
