"""SimCLR-v2 checkpoints as converted to PyTorch by Separius/SimCLRv2-Pytorch.

SimCLR-v2 (Chen et al., "Big Self-Supervised Models are Strong Semi-Supervised
Learners", arXiv:2006.10029) released TensorFlow ResNets; the conversion writes each
one as ``r{50,101,152}_{1,2,3}x_sk{0,1}[_ema].pth`` holding
``{"resnet": state_dict, "head": state_dict}``: the backbone with its 1000-class
``fc.*`` classifier, and the 3-layer contrastive projection head (``layers.{0,3,6}``
bias-free Linear, ``layers.{1,4,7}`` BatchNorm1d). ``_ema`` files have the same layout.

The backbone is always :class:`mile_ssl.networks.simclrv2_resnet.SimCLRv2ResNet`, whose
parameter names are the conversion's own, so the tensors pass through unrenamed; also
for ``r50_1x_sk0``, which torchvision's ``resnet50`` could hold, so that every variant
has one spec and can keep the projection head. The architecture is read from the
tensors, never from the file name (files get renamed): selective kernels from the
presence of the 3-conv stem and the SK layers, the width from the stem's output
channels, the depth from the number of blocks in each stage.

The converted models expect images in [0, 1] without mean/std normalisation (the
conversion's ``verify.py`` feeds ``ToTensor()`` output), so the adapter reports
:data:`mile_ssl.networks.preprocessing.IDENTITY`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from mile_ssl.networks.backbones import BackboneSpec
from mile_ssl.networks.preprocessing import IDENTITY
from mile_ssl.networks.simclrv2_resnet import (
    BASE_WIDTH,
    HEAD_LAYERS,
    STAGE_BLOCKS,
    WIDTH_MULTIPLIERS,
)

from .conversion import AdapterOptions, ConvertedCheckpoint
from .registry import register_adapter
from .state_dicts import drop, select

BACKBONE_KEY = "resnet"
"""Top-level key of the backbone's state dict in the converted files."""

HEAD_KEY = "head"
"""Top-level key of the contrastive projection head's state dict."""

HEAD_MODULE_PREFIX = "head."
"""Where :class:`~mile_ssl.networks.simclrv2_resnet.SimCLRv2ResNet` keeps the head's layers."""

CLASSIFIER_PREFIX = "fc."
"""The supervised ImageNet classifier of the backbone; not part of the features."""

_MODULES_PER_HEAD_LAYER = 3
"""Linear, BatchNorm1d, ReLU: the head's ``layers`` indices of one layer."""

_RESNET_STEM_KEY = "net.0.0.weight"
_SK_STEM_KEY = "net.0.4.weight"
_FIRST_BLOCK_PREFIX = "net.1.blocks.0."
_SK_LAYER_MARK = ".net.2.main_conv."
_BLOCK_KEY = re.compile(r"^net\.([1-4])\.blocks\.(\d+)\.")
_HEAD_LAYER_KEY = re.compile(r"^layers\.(\d+)\.")


def detect_simclrv2(raw: Mapping[str, Any]) -> bool:
    """Whether ``raw`` is ``{"resnet": ..., "head": ...}`` with the conversion's ResNet names."""
    resnet = raw.get(BACKBONE_KEY)
    if not isinstance(resnet, Mapping) or not isinstance(raw.get(HEAD_KEY), Mapping):
        return False
    return _RESNET_STEM_KEY in resnet and any(
        isinstance(key, str) and key.startswith(_FIRST_BLOCK_PREFIX) for key in resnet
    )


def _tensors(raw: Mapping[str, Any], key: str) -> dict[str, Tensor]:
    value = raw.get(key)
    if not isinstance(value, Mapping):
        raise ValueError(
            f"a SimCLR-v2 checkpoint holds a state dict under {key!r}; got top-level keys "
            f"{list(raw)[:10]}"
        )
    bad = [name for name, item in value.items() if not isinstance(item, Tensor)]
    if bad or not value:
        raise ValueError(
            f"{key!r} must map parameter names to tensors; "
            + (f"non-tensor entries: {bad[:5]}" if bad else "it is empty")
        )
    return dict(value)


def _infer_selective_kernel(state_dict: Mapping[str, Tensor]) -> bool:
    sk_stem = _SK_STEM_KEY in state_dict
    sk_layers = any(_SK_LAYER_MARK in key for key in state_dict)
    if sk_stem != sk_layers:
        raise ValueError(
            "the ResNet mixes the two SimCLR-v2 variants: "
            f"{'a' if sk_stem else 'no'} 3-conv stem ({_SK_STEM_KEY!r}) but "
            f"{'' if sk_layers else 'no '}selective-kernel layers ('...{_SK_LAYER_MARK}...'); "
            "the file is corrupted or not a SimCLR-v2 conversion"
        )
    return sk_stem


def _infer_width(state_dict: Mapping[str, Tensor], selective_kernel: bool) -> int:
    stem_key = _SK_STEM_KEY if selective_kernel else _RESNET_STEM_KEY
    stem = state_dict[stem_key]
    channels = int(stem.shape[0]) if stem.ndim == 4 else -1
    width, remainder = divmod(channels, BASE_WIDTH)
    if remainder or width not in WIDTH_MULTIPLIERS:
        raise ValueError(
            f"the stem convolution {stem_key!r} has shape {list(stem.shape)}; SimCLR-v2 "
            f"stems output {BASE_WIDTH} x width channels with width in "
            f"{list(WIDTH_MULTIPLIERS)}"
        )
    return width


def _infer_depth(state_dict: Mapping[str, Tensor]) -> int:
    blocks: dict[int, set[int]] = {stage: set() for stage in range(1, 5)}
    for key in state_dict:
        found = _BLOCK_KEY.match(key)
        if found:
            blocks[int(found.group(1))].add(int(found.group(2)))
    for stage, indices in blocks.items():
        if indices != set(range(len(indices))):
            missing = sorted(set(range(max(indices) + 1)) - indices)
            raise ValueError(
                f"stage net.{stage} lacks blocks {missing} but has later ones: the file is "
                "truncated or corrupted"
            )
    counts = tuple(len(blocks[stage]) for stage in range(1, 5))
    for depth, expected in STAGE_BLOCKS.items():
        if counts == expected:
            return depth
    known = ", ".join(f"{depth}: {blocks}" for depth, blocks in STAGE_BLOCKS.items())
    raise ValueError(
        f"the ResNet has {counts} blocks in its four stages, which matches no SimCLR-v2 "
        f"depth ({known}); the file is truncated or holds another architecture"
    )


def _split_head(
    raw: Mapping[str, Any], projection_layers: int
) -> tuple[dict[str, Tensor], tuple[str, ...]]:
    """The head tensors to keep (renamed under ``head.``) and the dropped head keys."""
    if not 0 <= projection_layers <= HEAD_LAYERS:
        raise ValueError(
            f"projection_layers must be between 0 and {HEAD_LAYERS} for SimCLR-v2, got "
            f"{projection_layers}"
        )
    if projection_layers == 0 and raw.get(HEAD_KEY) is None:
        return {}, ()
    head = _tensors(raw, HEAD_KEY)
    available = 0
    while (
        available < HEAD_LAYERS and f"layers.{available * _MODULES_PER_HEAD_LAYER}.weight" in head
    ):
        available += 1
    if projection_layers > available:
        raise ValueError(
            f"projection_layers={projection_layers} was requested but the file's projection "
            f"head has {available} layer(s)"
        )
    kept: dict[str, Tensor] = {}
    dropped: list[str] = []
    for key, value in head.items():
        found = _HEAD_LAYER_KEY.match(key)
        if found and int(found.group(1)) < projection_layers * _MODULES_PER_HEAD_LAYER:
            kept[HEAD_MODULE_PREFIX + key] = value
        else:
            dropped.append(f"{HEAD_KEY}.{key}")
    return kept, tuple(dropped)


@register_adapter("simclrv2", detect=detect_simclrv2)
def convert_simclrv2(raw: Mapping[str, Any], options: AdapterOptions) -> ConvertedCheckpoint:
    """Extract the SimCLR-v2 ResNet, and optionally the first head layers, of a converted file.

    Args:
        raw: The checkpoint mapping ``{"resnet": ..., "head": ...}``.
        options: ``projection_layers`` (0 to 3) head layers to keep on top of the pooled
            features; SimCLR-v2's semi-supervised fine-tuning starts from 1.

    Returns:
        The ResNet tensors without ``fc.*`` plus the kept head layers under ``head.``;
        a ``simclrv2`` spec with the inferred ``depth``, ``width_multiplier`` and
        ``selective_kernel`` and the requested ``projection_layers``; identity
        preprocessing. ``dropped`` names the discarded tensors by their place in the
        file: ``resnet.fc.*`` and ``head.layers.*`` beyond the kept layers.

    Raises:
        ValueError: If the file lacks the ``resnet`` state dict, holds non-tensors, its
            stem width, block counts or SK layers match no released SimCLR-v2 model, or
            more head layers are requested than it has.
    """
    resnet = _tensors(raw, BACKBONE_KEY)
    if _RESNET_STEM_KEY not in resnet:
        raise ValueError(
            f"{BACKBONE_KEY!r} has no stem convolution {_RESNET_STEM_KEY!r}; first keys: "
            f"{list(resnet)[:5]}"
        )
    backbone = drop(resnet, CLASSIFIER_PREFIX)
    selective_kernel = _infer_selective_kernel(backbone)
    width = _infer_width(backbone, selective_kernel)
    depth = _infer_depth(backbone)
    head, head_dropped = _split_head(raw, options.projection_layers)
    spec = BackboneSpec(
        "simclrv2",
        {
            "depth": depth,
            "width_multiplier": width,
            "selective_kernel": selective_kernel,
            "projection_layers": options.projection_layers,
        },
    )
    classifier = tuple(f"{BACKBONE_KEY}.{key}" for key in select(resnet, CLASSIFIER_PREFIX))
    return ConvertedCheckpoint(
        state_dict={**backbone, **head},
        backbone=spec,
        preprocessing=IDENTITY,
        dropped=classifier + head_dropped,
    )
