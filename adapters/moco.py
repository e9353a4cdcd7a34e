"""MoCo v1/v2 (facebookresearch/moco) and MoCo v3 (facebookresearch/moco-v3) checkpoints.

MoCo v1/v2 (He et al., 2020; Chen et al., 2020, arXiv:2003.04297): ``main_moco.py``
saves ``{"epoch", "arch", "state_dict", "optimizer"}`` (the released
``moco_v2_{200,800}ep_pretrain.pth.tar`` and ``moco_v1_200ep_pretrain.pth.tar`` too).
The model is wrapped in ``DistributedDataParallel``, so the state dict reads
``module.encoder_q.<torchvision resnet key>`` for the query encoder, whose ``fc`` is
the projection head (v2: MLP ``fc.0`` / ``fc.2``; v1: linear ``fc``), plus
``module.encoder_k.*`` (momentum key encoder) and the ``module.queue`` /
``module.queue_ptr`` buffers. The backbone is the query encoder without ``fc``, as in
the repository's ``main_lincls.py``.

MoCo v3 (Chen et al., 2021, "An Empirical Study of Training Self-Supervised Vision
Transformers"): ``main_moco.py`` saves ``{"epoch", "arch", "state_dict", "optimizer",
"scaler"}`` with ``module.base_encoder.*``, ``module.momentum_encoder.*`` and
``module.predictor.*``. The base encoder is a torchvision ResNet whose ``fc`` is the
projection MLP, or a timm ViT whose ``head`` is; both heads, the momentum encoder and the
predictor are dropped. MoCo-v3's ViT-S has 12 attention heads (timm's ViT-S has 6), so
it is built as ``timm:vit_small_patch16_224`` with ``num_heads=12``; the
convolutional-stem ``vit_conv_*`` models have no timm counterpart and are refused.

Both normalise inputs with the ImageNet mean and standard deviation. The files come
from DDP runs; the same keys without ``module.`` (a single-GPU run) are accepted too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from mile_ssl.backbones import BackboneSpec
from mile_ssl.preprocessing import Preprocessing

from .dino import VIT_HEAD_PREFIX, infer_vit_spec
from .registry import (
    AdapterOptions,
    ConvertedCheckpoint,
    extract,
    has_prefix,
    refuse_projection_layers,
    register_adapter,
    unwrap,
)
from .torchvision_format import CLASSIFIER_PREFIX, infer_resnet_spec, torchvision_arch_spec

QUERY_ENCODER_PREFIXES = ("module.encoder_q.", "encoder_q.")
"""MoCo v1/v2's query encoder, with and without the DDP prefix."""

BASE_ENCODER_PREFIXES = ("module.base_encoder.", "base_encoder.")
"""MoCo v3's base (online) encoder, with and without the DDP prefix."""

MOMENTUM_ENCODER_PREFIXES = ("module.momentum_encoder.", "momentum_encoder.")
"""MoCo v3's momentum encoder; required next to the base encoder to recognise the file."""

MOCOV3_VIT_HEADS = 12
"""Attention heads of every MoCo-v3 ViT (``vits.py``), whatever its width."""


def _state_dict(raw: Mapping[str, Any]) -> dict[str, Tensor] | None:
    try:
        return unwrap(raw)
    except ValueError:
        return None


def _prefix_with(
    state_dict: Mapping[str, Tensor], prefixes: tuple[str, ...], *markers: str
) -> str | None:
    """The first of ``prefixes`` under which one of ``markers`` is a key."""
    return next(
        (
            prefix
            for prefix in prefixes
            if any(f"{prefix}{marker}" in state_dict for marker in markers)
        ),
        None,
    )


def detect_mocov2(raw: Mapping[str, Any]) -> bool:
    """Whether the state dict holds a ResNet directly under ``[module.]encoder_q.``.

    ``encoder_q.conv1.weight`` rather than any ``encoder_q.`` key: mmselfsup 0.x also
    has an ``encoder_q``, but as ``nn.Sequential(backbone, neck)`` (``encoder_q.0.*``).
    """
    state_dict = _state_dict(raw)
    return (
        state_dict is not None
        and _prefix_with(state_dict, QUERY_ENCODER_PREFIXES, "conv1.weight") is not None
    )


def detect_mocov3(raw: Mapping[str, Any]) -> bool:
    """Whether the state dict holds ``[module.]base_encoder.`` and its momentum encoder."""
    state_dict = _state_dict(raw)
    return (
        state_dict is not None
        and any(has_prefix(state_dict, prefix) for prefix in BASE_ENCODER_PREFIXES)
        and any(has_prefix(state_dict, prefix) for prefix in MOMENTUM_ENCODER_PREFIXES)
    )


@register_adapter(
    "mocov2",
    detect=detect_mocov2,
    signature="'state_dict' with a ResNet under 'module.encoder_q.' (MoCo v1/v2)",
)
def convert_mocov2(raw: Mapping[str, Any], options: AdapterOptions) -> ConvertedCheckpoint:
    """Extract the query encoder of a MoCo v1/v2 checkpoint.

    Args:
        raw: The checkpoint mapping.
        options: Conversion options; the MLP head is not kept.

    Returns:
        The query encoder without ``fc``; the architecture from ``arch`` (a
        torchvision name in these files), else from the shapes; ImageNet preprocessing;
        the head, key encoder and queue as ``dropped``.

    Raises:
        ValueError: If no ResNet is found under ``encoder_q.``.
    """
    refuse_projection_layers(options, "mocov2")
    state_dict = unwrap(raw)
    prefix = _prefix_with(state_dict, QUERY_ENCODER_PREFIXES, "conv1.weight")
    if prefix is None:
        raise ValueError(
            f"no ResNet under {list(QUERY_ENCODER_PREFIXES)} (expected e.g. "
            f"'module.encoder_q.conv1.weight'; first keys: {list(state_dict)[:5]})"
        )
    kept, dropped = extract(state_dict, prefix, CLASSIFIER_PREFIX)
    return ConvertedCheckpoint(
        state_dict=kept,
        backbone=torchvision_arch_spec(raw.get("arch")) or infer_resnet_spec(kept),
        preprocessing=Preprocessing(),
        dropped=dropped,
        expected_prefix=prefix,
    )


def _mocov3_spec(arch: object, encoder: Mapping[str, Tensor]) -> BackboneSpec | None:
    if isinstance(arch, str) and arch.startswith("vit_conv"):
        raise ValueError(
            f"MoCo-v3 arch {arch!r} (a ViT with a convolutional stem) has no timm "
            "counterpart and is not supported"
        )
    if "cls_token" in encoder:
        return infer_vit_spec(encoder, num_heads=MOCOV3_VIT_HEADS)
    return torchvision_arch_spec(arch) or infer_resnet_spec(encoder)


@register_adapter(
    "mocov3",
    detect=detect_mocov3,
    signature="'state_dict' with 'module.base_encoder.' and 'module.momentum_encoder.' keys",
)
def convert_mocov3(raw: Mapping[str, Any], options: AdapterOptions) -> ConvertedCheckpoint:
    """Extract the base encoder of a MoCo v3 checkpoint (ResNet or ViT).

    Args:
        raw: The checkpoint mapping.
        options: Conversion options; the projection MLP is not kept.

    Returns:
        The base encoder without its projection head (``fc`` for ResNets, ``head`` for
        ViTs); the architecture from ``arch`` and the shapes; ImageNet preprocessing;
        heads, momentum encoder and predictor as ``dropped``.

    Raises:
        ValueError: If the base encoder is missing or ``arch`` is a ``vit_conv_*``.
    """
    refuse_projection_layers(options, "mocov3")
    state_dict = unwrap(raw)
    prefix = next((p for p in BASE_ENCODER_PREFIXES if has_prefix(state_dict, p)), None)
    if prefix is None:
        raise ValueError(
            f"no keys under {list(BASE_ENCODER_PREFIXES)} (first keys: {list(state_dict)[:5]})"
        )
    vit = f"{prefix}cls_token" in state_dict
    kept, dropped = extract(state_dict, prefix, VIT_HEAD_PREFIX if vit else CLASSIFIER_PREFIX)
    return ConvertedCheckpoint(
        state_dict=kept,
        backbone=_mocov3_spec(raw.get("arch"), kept),
        preprocessing=Preprocessing(),
        dropped=dropped,
        expected_prefix=prefix,
    )
