"""Vision transformers at the fine-tuning resolution: one position embedding per image size.

A ViT's position embedding holds one vector per patch of the grid it was trained on
(14x14 at 224 px with 16-px patches; DINOv2's 37x37 at 518 px with 14-px patches).
Fine-tuning at another resolution needs one vector per patch of the new grid. timm
builds the network for the new size (``img_size``) and mile_ssl resamples the
checkpoint's embedding once, at load time, so the fine-tuned network, its checkpoints
and its exports all hold the embedding of the size they run at; the run records
``img_size`` in the backbone's builder arguments, so evaluation and export rebuild the
same network.

How the grid is resampled differs between the projects that trained the weights, and
features only match the project's own at the new size when the resampling does too:
:class:`GridResampling` states it per checkpoint format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mile_ssl.networks.backbones import BackboneSpec, build_backbone


@dataclass(frozen=True)
class GridResampling:
    """How a format's own code interpolates the patch grid of its position embedding.

    Attributes:
        offset: Added to the new grid side before dividing by the old one to get the
            scale factor (DINO and the first DINOv2 models use 0.1, a work-around for
            a floating-point rounding in older PyTorch); 0 interpolates to the size
            itself, as timm and MAE do.
        antialias: Low-pass the embedding when shrinking it (timm, DINOv2 with
            registers) or not (DINO, MAE, DINOv2 without registers).
    """

    offset: float = 0.0
    antialias: bool = True


TIMM_RESAMPLING = GridResampling()
"""timm's ``resample_abs_pos_embed``: bicubic to the new size, antialiased."""


def is_vit(module: nn.Module) -> bool:
    """Whether ``module`` is a timm-style ViT: a patch embedding and a position embedding."""
    return isinstance(getattr(module, "pos_embed", None), Tensor) and hasattr(module, "patch_embed")


def patch_size(module: nn.Module) -> int:
    """Side of a ViT's square patches, in pixels."""
    embed: Any = module.patch_embed
    size = embed.patch_size
    return int(size[0] if isinstance(size, tuple | list) else size)


def patch_grid(module: nn.Module) -> tuple[int, int]:
    """Rows and columns of a ViT's patch grid at the image size it was built for."""
    embed: Any = module.patch_embed
    rows, columns = embed.grid_size
    return int(rows), int(columns)


def position_embedding(module: nn.Module) -> Tensor:
    """A ViT's ``pos_embed`` parameter."""
    pos_embed: Any = module.pos_embed
    return pos_embed


def embedded_prefix_tokens(module: nn.Module) -> int:
    """Class/register tokens that have a position vector in ``pos_embed`` (before the grid).

    timm's ``no_embed_class`` models (DINOv2 with registers) add position vectors to the
    patches only.
    """
    if getattr(module, "no_embed_class", False):
        return 0
    return int(getattr(module, "num_prefix_tokens", 1))


def vit_spec_at(spec: BackboneSpec, image_size: int) -> BackboneSpec:
    """``spec`` built for ``image_size``-px inputs when it names a timm ViT, else ``spec``.

    The architecture is instantiated on PyTorch's meta device (no memory, no
    initialisation) to learn whether it is a ViT and its patch size.

    Raises:
        ValueError: If ``image_size`` is not a multiple of the ViT's patch size, naming
            ``data.image_size`` and the nearest sizes that are.
    """
    if not spec.name.startswith("timm:"):
        return spec
    with torch.device("meta"):
        module, _ = build_backbone(spec)
    if not is_vit(module):
        return spec
    patch = patch_size(module)
    if image_size % patch:
        lower = max(patch, image_size // patch * patch)
        raise ValueError(
            f"config key 'data.image_size' ({image_size}) must be a multiple of the patch "
            f"size {patch} of the ViT {spec.name}; use {lower} or {lower + patch}"
        )
    embed: Any = module.patch_embed
    built_for = tuple(embed.img_size)
    if built_for == (image_size, image_size):
        return spec
    return replace(spec, kwargs={**spec.kwargs, "img_size": image_size})


def resample_position_embedding(
    pos_embed: Tensor, module: nn.Module, resampling: GridResampling = TIMM_RESAMPLING
) -> Tensor:
    """A checkpoint's ``pos_embed`` resampled to the grid of ``module``, a timm ViT.

    The prefix-token vectors are kept; the patch vectors are interpolated bicubically in
    float32 as ``resampling`` says: by timm's ``resample_abs_pos_embed`` to the size, or by
    a scale factor with an offset as DINO computes it.

    Args:
        pos_embed: ``(1, prefix + side**2, D)`` from the checkpoint (square grid).
        module: The ViT built for the fine-tuning image size.
        resampling: The format's own interpolation.

    Returns:
        A tensor of ``module.pos_embed``'s shape and ``pos_embed``'s dtype.

    Raises:
        ValueError: If the checkpoint's grid is not square or the widths differ.
    """
    target = position_embedding(module)
    prefix = embedded_prefix_tokens(module)
    old_tokens = pos_embed.shape[1] - prefix
    old_side = math.isqrt(old_tokens)
    if old_side * old_side != old_tokens or pos_embed.shape[-1] != target.shape[-1]:
        raise ValueError(
            f"cannot resample a position embedding of shape {tuple(pos_embed.shape)} to "
            f"{tuple(target.shape)}: not a square grid of the same width"
        )
    height, width = patch_grid(module)
    if not resampling.offset:
        from timm.layers import resample_abs_pos_embed  # timm loads only where a ViT is

        return resample_abs_pos_embed(
            pos_embed,
            new_size=[height, width],
            old_size=[old_side, old_side],
            num_prefix_tokens=prefix,
            antialias=resampling.antialias,
        )
    # DINO's scale factor, which timm does not offer: (new side + offset) / old side.
    grid = pos_embed[:, prefix:].float().reshape(1, old_side, old_side, -1).permute(0, 3, 1, 2)
    scale = ((height + resampling.offset) / old_side, (width + resampling.offset) / old_side)
    grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=resampling.antialias)
    if tuple(grid.shape[-2:]) != (height, width):
        raise ValueError(f"resampling gave a {tuple(grid.shape[-2:])} grid, not {(height, width)}")
    patches = grid.permute(0, 2, 3, 1).reshape(1, height * width, -1).to(pos_embed.dtype)
    return torch.cat([pos_embed[:, :prefix], patches], dim=1)
