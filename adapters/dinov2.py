"""DINOv2 backbones as released (facebookresearch/dinov2, ``dinov2_vit*14[_reg4]_pretrain.pth``).

The official files hold the backbone's ``state_dict()`` at the top level: ``cls_token``,
``pos_embed`` for 518-px inputs (``1 + 37 * 37`` positions at patch size 14),
``mask_token`` (iBOT-style masking, unused at fine-tuning), ``register_tokens`` in the
``_reg4`` models, ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma,
norm2, mlp, ls2.gamma}`` and ``norm``. ViT-g/14 has a SwiGLU feed-forward whose packed
input projection is ``mlp.w12`` and output ``mlp.w3``; the others an MLP ``mlp.fc1/fc2``.
A file saved with block chunks (``blocks.C.N.``, DINOv2's FSDP layout) is read the same.

The backbones load into timm's ``vit_{small,base,large,giant}_patch14[_reg4]_dinov2``:
LayerScale and its ``gamma`` names are timm's; ``register_tokens`` become ``reg_token``;
``mask_token`` is dropped. timm builds the register models without a class position
(``no_embed_class``): the class token's position vector is added to the token itself,
which is what DINOv2 computes, and ``pos_embed`` keeps the patch positions only.

At the fine-tuning resolution the patch positions are resampled once, as DINOv2's own
``interpolate_pos_encoding`` does it for that model (:data:`RESAMPLING`): the first
models scale by ``(side + 0.1) / 37`` without antialiasing, the register models
interpolate to the size with antialiasing (the arguments ``dinov2/hub/backbones.py``
builds them with). Features then equal DINOv2's at that size.

The head sees the class token after the final norm, the feature DINOv2's linear
evaluation starts from (timm's ``global_pool="token"``). Inputs are normalised with the
ImageNet mean and standard deviation, as in DINOv2's training.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from mile_ssl.networks.backbones import BackboneSpec
from mile_ssl.networks.preprocessing import Preprocessing
from mile_ssl.networks.vit import GridResampling

from .architectures import vit_depth
from .conversion import AdapterOptions, ConvertedCheckpoint, refuse_projection_layers
from .registry import register_adapter
from .state_dicts import is_tensor_dict

PATCH_SIZE = 14
"""Every released DINOv2 backbone uses 14-px patches."""

SIZES: dict[tuple[int, int], str] = {
    (384, 12): "small",
    (768, 12): "base",
    (1024, 24): "large",
    (1536, 40): "giant",
}
"""(embedding width, blocks) of the released backbones -> timm's size name."""

TIMM_REGISTERS = 4
"""Register tokens of timm's ``*_reg4_dinov2`` models (and of the released files)."""

RESAMPLING = {
    False: GridResampling(offset=0.1, antialias=False),
    True: GridResampling(offset=0.0, antialias=True),
}
"""Registers? -> how DINOv2's hub builds that model's ``interpolate_pos_encoding``."""

_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")
_DROPPED = ("mask_token",)
_SWIGLU = re.compile(r"\.mlp\.(w12|w3)\.")
_SWIGLU_NAMES = {"w12": "fc1", "w3": "fc2"}
"""DINOv2's SwiGLU projections -> timm's ``SwiGLUPacked`` names."""


def _backbone_tensors(raw: Mapping[str, Any]) -> dict[str, Tensor]:
    """The top-level tensors, block chunks flattened (``blocks.C.N.`` -> ``blocks.N.``)."""
    if not is_tensor_dict(raw):
        return {}
    return {_CHUNKED_BLOCK.sub(r"blocks.\1.", key): value for key, value in raw.items()}


def detect_dinov2(raw: Mapping[str, Any]) -> bool:
    """Whether ``raw`` is a DINOv2 backbone: LayerScale, a mask token, 14-px patches."""
    tensors = _backbone_tensors(raw)
    proj = tensors.get("patch_embed.proj.weight")
    return (
        proj is not None
        and proj.dim() == 4
        and proj.shape[-1] == PATCH_SIZE
        and "mask_token" in tensors
        and "blocks.0.ls1.gamma" in tensors
    )


def dinov2_spec(tensors: Mapping[str, Tensor]) -> BackboneSpec | None:
    """The timm model of these tensors, or ``None`` when no released size fits."""
    width = int(tensors["patch_embed.proj.weight"].shape[0])
    size = SIZES.get((width, vit_depth(tensors)))
    registers = tensors.get("register_tokens")
    if size is None or (registers is not None and registers.shape[1] != TIMM_REGISTERS):
        return None
    return BackboneSpec(f"timm:vit_{size}_patch14{'_reg4' if registers is not None else ''}_dinov2")


@register_adapter(
    "dinov2",
    detect=detect_dinov2,
    signature="a plain state dict with 'mask_token', 'blocks.0.ls1.gamma' and 14-px "
    "'patch_embed.proj' (the released dinov2_vit*14[_reg4]_pretrain.pth)",
)
def convert_dinov2(raw: Mapping[str, Any], options: AdapterOptions) -> ConvertedCheckpoint:
    """Rename a released DINOv2 backbone into timm's DINOv2 ViT.

    Args:
        raw: The checkpoint: the backbone's state dict.
        options: Conversion options; the released files hold no projection head.

    Returns:
        timm-named tensors, timm's architecture (``None`` for a width/depth DINOv2 did
        not release), ImageNet preprocessing, the dropped ``mask_token`` and the
        model's own position-embedding resampling.

    Raises:
        ValueError: If the file holds no DINOv2 backbone, or a projection head is asked for.
    """
    refuse_projection_layers(options, "dinov2")
    tensors = _backbone_tensors(raw)
    if not detect_dinov2(tensors):
        raise ValueError(
            "no DINOv2 backbone at the top level (expected 'mask_token', "
            f"'blocks.0.ls1.gamma', 14-px 'patch_embed.proj.weight'; first keys: {list(raw)[:5]})"
        )
    spec = dinov2_spec(tensors)
    registers = tensors.pop("register_tokens", None)
    state_dict = {
        _SWIGLU.sub(lambda match: f".mlp.{_SWIGLU_NAMES[match.group(1)]}.", key): value
        for key, value in tensors.items()
        if key not in _DROPPED
    }
    if registers is not None:
        # timm's register models give the class token no position: fold its vector in.
        position = state_dict["pos_embed"]
        state_dict["cls_token"] = state_dict["cls_token"] + position[:, :1]
        state_dict["pos_embed"] = position[:, 1:].clone()
        state_dict["reg_token"] = registers
    return ConvertedCheckpoint(
        state_dict=state_dict,
        backbone=spec,
        preprocessing=Preprocessing(),
        dropped=tuple(key for key in _DROPPED if key in tensors),
        grid_resampling=RESAMPLING[registers is not None],
    )
