"""MAE encoders as released (facebookresearch/mae, ``mae_pretrain_vit_{base,large,huge}.pth``).

The released pretraining files are ``{"model": encoder_state_dict}``: timm ViT names
(``cls_token``, ``pos_embed`` as MAE's fixed 2-D sin-cos table, ``patch_embed.proj``,
``blocks.N.*``, ``norm``), no classifier. A training checkpoint (``checkpoint-E.pth``)
also holds the decoder (``decoder_*``, ``mask_token``), which is dropped.

MAE fine-tunes with global average pooling: the head sees the mean of the patch tokens
after a new LayerNorm, ``fc_norm``, and the encoder's final ``norm`` is not used
(``main_finetune.py`` loads the file with ``head.*`` and ``fc_norm.*`` missing, and
``models_vit.VisionTransformer(global_pool=True)`` skips ``norm``). timm builds the
same network with ``global_pool="avg"``; ``fc_norm`` starts where MAE's does, at
LayerNorm's identity (weight 1, bias 0), and ``norm`` is listed as dropped.

At another image size the position embedding is resampled as MAE's
``interpolate_pos_embed`` does (bicubic to the size, no antialiasing). Inputs are
normalised with the ImageNet mean and standard deviation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from mile_ssl.networks.preprocessing import Preprocessing
from mile_ssl.networks.vit import GridResampling

from .architectures import VIT_ENCODER_KEYS, VIT_HEAD_PREFIX, infer_vit_spec
from .conversion import AdapterOptions, ConvertedCheckpoint, refuse_projection_layers
from .registry import register_adapter
from .state_dicts import is_tensor_dict

CONTAINER = "model"
"""Where MAE's ``misc.save_model`` (and the released files) keep the network."""

DECODER_KEYS = ("decoder_", "mask_token")
"""The pretraining decoder's tensors, present in training checkpoints only."""

ENCODER_NORM = ("norm.weight", "norm.bias")
"""The final norm, which global-pool fine-tuning replaces by ``fc_norm``."""

MAE_RESAMPLING = GridResampling(offset=0.0, antialias=False)
"""MAE's ``util.pos_embed.interpolate_pos_embed``: bicubic to the new size."""


def detect_mae(raw: Mapping[str, Any]) -> bool:
    """Whether ``raw["model"]`` is a headless ViT encoder (maybe with MAE's decoder)."""
    model: Any = raw.get(CONTAINER)
    if not is_tensor_dict(model):
        return False
    return (
        all(key in model for key in (*VIT_ENCODER_KEYS, *ENCODER_NORM))
        and not any(key.startswith((VIT_HEAD_PREFIX, "fc_norm.")) for key in model)
        and "blocks.0.ls1.gamma" not in model
    )


@register_adapter(
    "mae",
    detect=detect_mae,
    signature="'model' holding a ViT encoder without 'head'/'fc_norm' (the released "
    "mae_pretrain_vit_*.pth; MAE's decoder keys allowed)",
)
def convert_mae(raw: Mapping[str, Any], options: AdapterOptions) -> ConvertedCheckpoint:
    """The MAE encoder for global-pool fine-tuning, as MAE's ``main_finetune.py`` builds it.

    Args:
        raw: The checkpoint mapping.
        options: Conversion options; MAE has no projection head.

    Returns:
        The encoder tensors with a fresh ``fc_norm`` and without ``norm``, timm's ViT
        with ``global_pool="avg"``, ImageNet preprocessing, the decoder and ``norm`` as
        dropped, and MAE's position-embedding resampling.

    Raises:
        ValueError: If ``raw["model"]`` holds no ViT encoder.
    """
    refuse_projection_layers(options, "mae")
    if not detect_mae(raw):
        raise ValueError(
            f"no ViT encoder without a head under {CONTAINER!r} (top-level keys: {list(raw)[:5]})"
        )
    model: Mapping[str, Tensor] = raw[CONTAINER]
    dropped = [key for key in model if key.startswith(DECODER_KEYS) or key in ENCODER_NORM]
    state_dict = {key: value for key, value in model.items() if key not in dropped}
    width = state_dict["cls_token"].shape[-1]
    state_dict["fc_norm.weight"] = torch.ones(width, dtype=state_dict["cls_token"].dtype)
    state_dict["fc_norm.bias"] = torch.zeros(width, dtype=state_dict["cls_token"].dtype)
    spec = infer_vit_spec(state_dict)
    return ConvertedCheckpoint(
        state_dict=state_dict,
        backbone=replace(spec, kwargs={**spec.kwargs, "global_pool": "avg"}) if spec else None,
        preprocessing=Preprocessing(),
        dropped=tuple(f"{CONTAINER}.{key}" for key in dropped),
        expected_prefix=f"{CONTAINER}.",
        grid_resampling=MAE_RESAMPLING,
    )
