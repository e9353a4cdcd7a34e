"""Naming the architecture of a backbone's tensors from their shapes."""

import torch
from torch import Tensor

from mile_ssl.adapters.architectures import infer_vit_spec
from mile_ssl.networks.backbones import BackboneSpec


def _filler(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.float32) -> Tensor:
    """A tensor of the right shape stored as one element: for parts the test never runs."""
    return torch.zeros((), dtype=dtype).expand(shape)


def test_vit_spec_follows_patch_and_grid() -> None:
    def vit_shapes(dim: int, patch: int, grid: int, depth: int = 12) -> dict[str, Tensor]:
        tensors = {
            "cls_token": _filler((1, 1, dim)),
            "pos_embed": _filler((1, grid * grid + 1, dim)),
            "patch_embed.proj.weight": _filler((dim, 3, patch, patch)),
        }
        return tensors | {f"blocks.{i}.norm1.weight": _filler((dim,)) for i in range(depth)}

    assert infer_vit_spec(vit_shapes(384, 8, 28)) == BackboneSpec("timm:vit_small_patch8_224")
    assert infer_vit_spec(vit_shapes(768, 16, 14)) == BackboneSpec("timm:vit_base_patch16_224")
    assert infer_vit_spec(vit_shapes(384, 16, 2)) == BackboneSpec(
        "timm:vit_small_patch16_224", {"img_size": 32}
    )
    assert infer_vit_spec(vit_shapes(384, 16, 14, depth=11)) is None
    assert infer_vit_spec({"conv1.weight": _filler((64, 3, 7, 7))}) is None
