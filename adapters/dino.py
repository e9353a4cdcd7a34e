"""DINO training checkpoints (facebookresearch/dino, ``main_dino.py``).

DINO (Caron et al., 2021, "Emerging Properties in Self-Supervised Vision Transformers")
saves ``checkpoint.pth`` as ``{"student", "teacher", "optimizer", "epoch", "args",
"dino_loss", ...}``. Student and teacher are ``MultiCropWrapper(backbone, DINOHead)``
state dicts, so their keys are ``backbone.*`` and ``head.*`` (``head.mlp.*``,
``head.last_layer.weight_g`` / ``weight_v``); a module wrapped in
``DistributedDataParallel`` adds ``module.``. The student is always wrapped; the
teacher only when the backbone has BatchNorm (ResNets), so a ResNet teacher reads
``module.backbone.*`` and a ViT teacher ``backbone.*``.

The teacher is converted by default: DINO evaluates (k-NN, linear, fine-tuning) the
teacher, whose weights are an average of the student's and perform better. The student
is used only when a file has no teacher. Heads and the other network are dropped and
listed in ``dropped`` as ``<container>.<key>``.

Backbones: torchvision ResNets (``MultiCropWrapper`` replaced ``fc`` by an identity, so
there is no classifier) and DINO's ViTs, whose parameter names are timm's
(``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv,
attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``) with the same head counts and LayerNorm
``eps=1e-6``; they load into ``timm:vit_{tiny,small,base}_patch{8,16}_224`` without
renaming. DINO's ``pos_embed`` is for 224-px inputs (14x14 patches at patch size 16).
At another fine-tuning size the embedding is resampled once, as DINO's own
``interpolate_pos_encoding`` does (:data:`DINO_RESAMPLING`). XCiT backbones are not
supported.

DINO normalises inputs with the ImageNet mean and standard deviation.

Note that ``checkpoint.pth`` also stores ``args`` as an ``argparse.Namespace``, which
the safe reader refuses; re-save the file without it (``{"teacher": ..., "student":
...}``) from a copy you trust.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mile_ssl.networks.preprocessing import Preprocessing
from mile_ssl.networks.vit import GridResampling

from .architectures import CLASSIFIER_PREFIX, VIT_HEAD_PREFIX, infer_resnet_spec, infer_vit_spec
from .conversion import AdapterOptions, ConvertedCheckpoint, refuse_projection_layers
from .registry import register_adapter
from .state_dicts import drop, first_prefix, select, strip_prefix, unwrap

DINO_RESAMPLING = GridResampling(offset=0.1, antialias=False)
"""DINO's ``interpolate_pos_encoding``: bicubic by (side + 0.1) / old side, no antialias."""

TEACHER_KEY = "teacher"
STUDENT_KEY = "student"

BACKBONE_PREFIXES = ("module.backbone.", "backbone.")
"""``MultiCropWrapper``'s backbone, with and without the DDP ``module.`` prefix."""


def detect_dino(raw: Mapping[str, Any]) -> bool:
    """Whether ``raw`` has a ``teacher`` or ``student`` mapping with ``backbone.`` keys."""
    return any(
        isinstance(raw.get(key), Mapping) and first_prefix(raw[key], BACKBONE_PREFIXES) is not None
        for key in (TEACHER_KEY, STUDENT_KEY)
    )


@register_adapter(
    "dino",
    detect=detect_dino,
    signature="top-level 'teacher'/'student' state dicts with 'backbone.' or "
    "'module.backbone.' keys",
)
def convert_dino(raw: Mapping[str, Any], options: AdapterOptions) -> ConvertedCheckpoint:
    """Extract the teacher's backbone from a DINO training checkpoint.

    Args:
        raw: The checkpoint mapping.
        options: Conversion options; DINO's projection head is not kept.

    Returns:
        The backbone tensors with torchvision / timm names, the architecture inferred
        from their shapes (``None`` for backbones neither family names), ImageNet
        preprocessing, and the heads and the other network as ``dropped``.

    Raises:
        ValueError: If neither network holds ``backbone.`` keys, or a projection head
            is requested.
    """
    refuse_projection_layers(options, "dino")
    container = TEACHER_KEY if isinstance(raw.get(TEACHER_KEY), Mapping) else STUDENT_KEY
    network = unwrap(raw, keys=(container,))
    prefix = first_prefix(network, BACKBONE_PREFIXES)
    if prefix is None:
        raise ValueError(
            f"DINO {container!r} holds no keys under {list(BACKBONE_PREFIXES)} (first keys: "
            f"{list(network)[:5]})"
        )
    backbone = strip_prefix(select(network, prefix), prefix)
    head = CLASSIFIER_PREFIX if "conv1.weight" in backbone else VIT_HEAD_PREFIX
    state_dict = drop(backbone, head)
    dropped = [f"{container}.{prefix}{key}" for key in select(backbone, head)]
    dropped += [f"{container}.{key}" for key in network if not key.startswith(prefix)]
    for other in (TEACHER_KEY, STUDENT_KEY):
        if other != container and isinstance(raw.get(other), Mapping):
            dropped += [f"{other}.{key}" for key in raw[other]]
    return ConvertedCheckpoint(
        state_dict=state_dict,
        backbone=infer_resnet_spec(state_dict) or infer_vit_spec(state_dict),
        preprocessing=Preprocessing(),
        dropped=tuple(dropped),
        expected_prefix=f"{container}.{prefix}",
        grid_resampling=DINO_RESAMPLING,
    )
