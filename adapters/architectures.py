"""Naming the architecture of a backbone's tensors: torchvision ResNets and timm ViTs.

Self-supervised formats rarely record the architecture, but the tensor shapes determine
it, and a wrong guess cannot load since loading is strict. Every adapter that finds a
torchvision ResNet or a timm ViT under some prefix names it with
:func:`infer_resnet_spec` or :func:`infer_vit_spec`, and leaves out the supervised
classifier (:data:`CLASSIFIER_PREFIX`, :data:`VIT_HEAD_PREFIX`) the same way, so these
live here rather than in one format's module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from mile_ssl.networks.backbones import BackboneSpec

CLASSIFIER_PREFIX = "fc."
"""The ImageNet classifier of ResNet-style models; not part of the backbone."""

VIT_HEAD_PREFIX = "head."
"""A ViT's classifier; DINO replaces it by an identity, other files may keep it."""

STANDARD_STEM_WIDTH = 64
"""Output channels of every torchvision ResNet's first convolution."""

VIT_PRETRAIN_SIZE = 224
"""Resolution the timm ``*_224`` ViTs are built for, and DINO's training resolution."""

_STAGES = ("layer1", "layer2", "layer3", "layer4")

_DEPTHS: dict[tuple[bool, tuple[int, ...]], int] = {
    (False, (2, 2, 2, 2)): 18,
    (False, (3, 4, 6, 3)): 34,
    (True, (3, 4, 6, 3)): 50,
    (True, (3, 4, 23, 3)): 101,
    (True, (3, 8, 36, 3)): 152,
}
"""(bottleneck blocks?, blocks per stage) -> depth, as torchvision builds them."""

_VARIANTS: dict[tuple[int, int, int], str] = {
    (18, 64, 1): "resnet18",
    (34, 64, 1): "resnet34",
    (50, 64, 1): "resnet50",
    (101, 64, 1): "resnet101",
    (152, 64, 1): "resnet152",
    (50, 128, 1): "wide_resnet50_2",
    (101, 128, 1): "wide_resnet101_2",
    (50, 128, 32): "resnext50_32x4d",
    (101, 256, 32): "resnext101_32x8d",
    (101, 256, 64): "resnext101_64x4d",
}
"""(depth, width of the first block's 3x3 conv, its groups) -> torchvision model name."""

_VIT_SIZES: dict[tuple[int, int], str] = {
    (192, 12): "tiny",
    (384, 12): "small",
    (768, 12): "base",
    (1024, 24): "large",
    (1280, 32): "huge",
}
"""(embedding width, number of blocks) -> timm size name (``vit_<size>_patch<P>_224``)."""


def infer_resnet_spec(state_dict: Mapping[str, Tensor]) -> BackboneSpec | None:
    """Name the torchvision ResNet whose ``state_dict()`` ``state_dict`` is, from its shapes.

    The depth follows from the number of blocks per stage and the block type
    (``conv3`` only exists in bottlenecks); wide and ResNeXt variants from the width
    and groups of the first block's 3x3 convolution. A 3x3 first convolution is the
    CIFAR stem (``cifar_stem=True``). Self-supervised formats rarely record the
    architecture, but the shapes determine it, and a wrong guess cannot load since
    loading is strict.

    Args:
        state_dict: Backbone tensors with torchvision names (no prefix, ``fc`` allowed).

    Returns:
        The spec, or ``None`` when the tensors are not a torchvision ResNet of a known
        variant (e.g. a wider stem, or other module names).
    """
    conv1 = state_dict.get("conv1.weight")
    first = state_dict.get("layer1.0.conv1.weight")
    if conv1 is None or first is None or conv1.dim() != 4 or first.dim() != 4:
        return None
    if conv1.shape[0] != STANDARD_STEM_WIDTH or conv1.shape[2:] not in ((7, 7), (3, 3)):
        return None
    bottleneck = "layer1.0.conv3.weight" in state_dict
    blocks = tuple(_blocks_in_stage(state_dict, stage) for stage in _STAGES)
    depth = _DEPTHS.get((bottleneck, blocks))
    conv2 = state_dict.get("layer1.0.conv2.weight")
    if depth is None or conv2 is None or conv2.dim() != 4:
        return None
    width = int(conv2.shape[0])
    groups = width // int(conv2.shape[1]) if conv2.shape[1] else 0
    arch = _VARIANTS.get((depth, width, groups))
    if arch is None:
        return None
    return BackboneSpec(f"torchvision:{arch}", {"cifar_stem": True} if conv1.shape[2] == 3 else {})


def resnet_stem_width(state_dict: Mapping[str, Tensor]) -> int | None:
    """Output channels of ``conv1``: 64 in torchvision, ``64 * w`` in SwAV's ``resnet50w{w}``."""
    conv1 = state_dict.get("conv1.weight")
    return int(conv1.shape[0]) if conv1 is not None and conv1.dim() == 4 else None


def _blocks_in_stage(state_dict: Mapping[str, Tensor], stage: str) -> int:
    indices = {
        key.split(".")[1]
        for key in state_dict
        if key.startswith(f"{stage}.") and key.count(".") > 1
    }
    return len(indices)


def torchvision_arch_spec(arch: object) -> BackboneSpec | None:
    """``torchvision:<arch>`` when ``arch`` (a checkpoint's ``arch`` field) names one.

    Returns ``None`` for anything else (missing, not a string, a timm or custom name),
    since the family of a bare name cannot be told apart reliably.
    """
    if not isinstance(arch, str):
        return None
    import torchvision.models

    if arch not in torchvision.models.list_models(module=torchvision.models):
        # Probably a timm name; the user must say which family it belongs to.
        return None
    return BackboneSpec(f"torchvision:{arch}")


VIT_ENCODER_KEYS = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight")
"""Tensors every timm-named ViT encoder has: the marks of a ViT among a file's keys."""


def vit_depth(state_dict: Mapping[str, Tensor]) -> int:
    """Transformer blocks of a timm-named ViT (``blocks.N.*``)."""
    return len({key.split(".")[1] for key in state_dict if key.startswith("blocks.")})


def infer_vit_spec(
    state_dict: Mapping[str, Tensor], *, num_heads: int | None = None
) -> BackboneSpec | None:
    """Name the timm ViT whose ``state_dict()`` ``state_dict`` is, from its shapes.

    Width and depth give the size (tiny/small/base/large/huge), the patch embedding's
    kernel the patch size, and ``pos_embed`` the grid, hence the image size (passed as
    ``img_size`` when it is not 224). The number of attention heads cannot be read from
    the weights: timm's default for the size is used unless ``num_heads`` is given
    (MoCo-v3 and solo-learn's MoCo-v3/MAE ViT-S use 12 heads where timm uses 6; the
    weights would load and compute something else).

    Args:
        state_dict: Backbone tensors with timm names, no prefix.
        num_heads: Attention heads, when the source states a non-default count.

    Returns:
        The spec, or ``None`` if the tensors are not a ViT of a size timm names.
    """
    proj = state_dict.get("patch_embed.proj.weight")
    pos_embed = state_dict.get("pos_embed")
    if proj is None or pos_embed is None or "cls_token" not in state_dict:
        return None
    if proj.dim() != 4 or proj.shape[2] != proj.shape[3] or pos_embed.dim() != 3:
        return None
    width, patch = int(proj.shape[0]), int(proj.shape[2])
    size = _VIT_SIZES.get((width, vit_depth(state_dict)))
    if size is None:
        return None
    name = f"vit_{size}_patch{patch}_{VIT_PRETRAIN_SIZE}"
    import timm

    if not timm.is_model(name):
        return None
    tokens = int(pos_embed.shape[1]) - 1
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        return None
    kwargs: dict[str, Any] = {}
    if grid * patch != VIT_PRETRAIN_SIZE:
        kwargs["img_size"] = grid * patch
    if num_heads is not None:
        kwargs["num_heads"] = num_heads
    return BackboneSpec(f"timm:{name}", kwargs)


RESNET_SEQUENTIAL_NAMES: dict[str, str] = {
    "0": "conv1",
    "1": "bn1",
    "4": "layer1",
    "5": "layer2",
    "6": "layer3",
    "7": "layer4",
}
"""Index in ``list(resnet.children())`` -> torchvision name, for children with tensors."""

SEQUENTIAL_STEM = "0.weight"
"""conv1 of a ResNet Sequential: the key that tells its indices from torchvision's names."""

RESNET_SEQUENTIAL = "nn.Sequential(*list(resnet.children())[:-1]) indices -> torchvision names"
"""The renaming of :func:`sequential_to_torchvision`, in words, as ``inspect`` reports it."""


def sequential_to_torchvision(
    backbone: Mapping[str, Tensor], prefix: str = ""
) -> dict[str, Tensor]:
    """Rename ``nn.Sequential(*list(resnet.children())[:-1])`` keys to torchvision's.

    lightly's examples and much user code keep a torchvision ResNet's children without
    the classifier, so the keys are Sequential indices: ``0.weight`` (conv1), ``1.*``
    (bn1), ``4.0.conv1.weight`` (layer1, block 0), ... Indices 2, 3 and 8 (ReLU,
    max-pool, average pool) hold no tensors (:data:`RESNET_SEQUENTIAL_NAMES`).

    Args:
        backbone: Keys relative to the Sequential (``0.weight``, ``4.0.conv1.weight``).
        prefix: Where the Sequential sits in the file, named in the error.

    Returns:
        The same tensors under torchvision names (``conv1.weight``,
        ``layer1.0.conv1.weight``), in the original order.

    Raises:
        ValueError: If a key's index is not a ResNet child with tensors.
    """
    renamed: dict[str, Tensor] = {}
    for key, value in backbone.items():
        index, _, rest = key.partition(".")
        if index not in RESNET_SEQUENTIAL_NAMES:
            raise ValueError(
                f"key {prefix + key!r}: child {index} of a ResNet Sequential holds no tensors "
                f"in torchvision (expected children {sorted(RESNET_SEQUENTIAL_NAMES)}); this "
                "is not nn.Sequential(*list(resnet.children())[:-1])"
            )
        renamed[f"{RESNET_SEQUENTIAL_NAMES[index]}.{rest}"] = value
    return renamed
