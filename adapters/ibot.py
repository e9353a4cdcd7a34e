"""iBOT teacher backbones as released (bytedance/ibot, ``checkpoint_teacher.pth``).

The released backbone files are ``{"state_dict": teacher_backbone_state_dict}``: timm
ViT names (``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N.*``, ``norm``),
no prefix, no head, no ``masked_embed`` (iBOT's own loader must be told
``--checkpoint_key state_dict`` for these files). The full training checkpoints hold the
teacher as ``teacher.backbone.*`` beside its head, the layout of DINO's, and load with
the ``dino`` adapter.

The head sees the class token after the final norm, the feature iBOT's k-NN evaluation
uses (timm's ``global_pool="token"``). iBOT's ViT is DINO's, so at another image size the
position embedding is resampled as DINO's (:data:`~.dino.DINO_RESAMPLING`). Inputs are
normalised with the ImageNet mean and standard deviation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mile_ssl.networks.preprocessing import Preprocessing

from .architectures import VIT_ENCODER_KEYS, VIT_HEAD_PREFIX, infer_vit_spec
from .conversion import AdapterOptions, ConvertedCheckpoint, refuse_projection_layers
from .dino import DINO_RESAMPLING
from .registry import register_adapter
from .state_dicts import is_tensor_dict

CONTAINER = "state_dict"
"""Where ``checkpoint_teacher.pth`` keeps the backbone."""


def detect_ibot(raw: Mapping[str, Any]) -> bool:
    """Whether ``raw`` is ``{"state_dict": <headless ViT>}`` and nothing else."""
    backbone: Any = raw.get(CONTAINER)
    if list(raw) != [CONTAINER] or not is_tensor_dict(backbone):
        return False
    return (
        all(key in backbone for key in (*VIT_ENCODER_KEYS, "norm.weight"))
        and not any(key.startswith(VIT_HEAD_PREFIX) for key in backbone)
        and "blocks.0.ls1.gamma" not in backbone
    )


@register_adapter(
    "ibot",
    detect=detect_ibot,
    signature="only 'state_dict', holding a ViT backbone without a head (the released "
    "iBOT checkpoint_teacher.pth)",
)
def convert_ibot(raw: Mapping[str, Any], options: AdapterOptions) -> ConvertedCheckpoint:
    """The iBOT teacher backbone, whose names are timm's.

    Args:
        raw: The checkpoint mapping.
        options: Conversion options; the backbone files hold no projection head.

    Returns:
        The backbone tensors, the timm ViT their shapes name, ImageNet preprocessing and
        DINO's position-embedding resampling.

    Raises:
        ValueError: If the file is not an iBOT backbone file.
    """
    refuse_projection_layers(options, "ibot")
    if not detect_ibot(raw):
        raise ValueError(
            f"expected only {CONTAINER!r} holding a headless ViT (top-level keys: {list(raw)[:5]})"
        )
    state_dict = dict(raw[CONTAINER])
    return ConvertedCheckpoint(
        state_dict=state_dict,
        backbone=infer_vit_spec(state_dict),
        preprocessing=Preprocessing(),
        expected_prefix=f"{CONTAINER}.",
        grid_resampling=DINO_RESAMPLING,
    )
