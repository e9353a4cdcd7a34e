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

from mile_ssl.networks.backbones import BackboneSpec

from .architectures import CLASSIFIER_PREFIX, VIT_HEAD_PREFIX, infer_vit_spec
from .prefixed import find_backbone_prefix, register_prefixed_adapter, resnet_from_arch
from .state_dicts import has_prefix, unwrap

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


def detect_mocov2(raw: Mapping[str, Any]) -> bool:
    """Whether the state dict holds a ResNet directly under ``[module.]encoder_q.``.

    ``encoder_q.conv1.weight`` rather than any ``encoder_q.`` key: mmselfsup 0.x also
    has an ``encoder_q``, but as ``nn.Sequential(backbone, neck)`` (``encoder_q.0.*``).
    """
    state_dict = _state_dict(raw)
    return (
        state_dict is not None
        and find_backbone_prefix(state_dict, QUERY_ENCODER_PREFIXES, direct_resnet=True) is not None
    )


def detect_mocov3(raw: Mapping[str, Any]) -> bool:
    """Whether the state dict holds ``[module.]base_encoder.`` and its momentum encoder."""
    state_dict = _state_dict(raw)
    return (
        state_dict is not None
        and any(has_prefix(state_dict, prefix) for prefix in BASE_ENCODER_PREFIXES)
        and any(has_prefix(state_dict, prefix) for prefix in MOMENTUM_ENCODER_PREFIXES)
    )


convert_mocov2 = register_prefixed_adapter(
    "mocov2",
    detect=detect_mocov2,
    signature="'state_dict' with a ResNet under 'module.encoder_q.' (MoCo v1/v2)",
    prefixes=QUERY_ENCODER_PREFIXES,
    direct_resnet=True,
    architecture=resnet_from_arch,
)
"""The query encoder without ``fc``; the architecture from ``arch`` (a torchvision name in
these files), else from the shapes; ImageNet preprocessing; the head, key encoder and
queue as ``dropped``."""


def _mocov3_spec(raw: Mapping[str, Any], encoder: Mapping[str, Tensor]) -> BackboneSpec | None:
    arch = raw.get("arch")
    if isinstance(arch, str) and arch.startswith("vit_conv"):
        raise ValueError(
            f"MoCo-v3 arch {arch!r} (a ViT with a convolutional stem) has no timm "
            "counterpart and is not supported"
        )
    if "cls_token" in encoder:
        return infer_vit_spec(encoder, num_heads=MOCOV3_VIT_HEADS)
    return resnet_from_arch(raw, encoder)


def _mocov3_heads(state_dict: Mapping[str, Tensor], prefix: str) -> tuple[str, ...]:
    """The projection head of the base encoder: ``head`` of a ViT, ``fc`` of a ResNet."""
    return (VIT_HEAD_PREFIX,) if f"{prefix}cls_token" in state_dict else (CLASSIFIER_PREFIX,)


convert_mocov3 = register_prefixed_adapter(
    "mocov3",
    detect=detect_mocov3,
    signature="'state_dict' with 'module.base_encoder.' and 'module.momentum_encoder.' keys",
    prefixes=BASE_ENCODER_PREFIXES,
    heads=_mocov3_heads,
    architecture=_mocov3_spec,
)
"""The base encoder (ResNet or ViT) without its projection head; the architecture from
``arch`` and the shapes (``vit_conv_*`` is refused); ImageNet preprocessing; heads,
momentum encoder and predictor as ``dropped``."""
