"""The network every method fine-tunes, and the in-place copy that refreshes a teacher."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """A backbone followed by a new linear head over its pooled features.

    Args:
        backbone: Maps images to features ``(B, feature_dim)``.
        feature_dim: Width of the features.
        num_classes: Outputs of the head.
        head_bias: Initial value of every head bias (``None`` keeps PyTorch's init).
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        head_bias: float | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)
        if head_bias is not None:
            nn.init.constant_(self.head.bias, head_bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, num_classes)``."""
        return self.head(self.backbone(images))


@torch.no_grad()
def copy_weights_(target: nn.Module, source: nn.Module) -> None:
    """Copy every parameter and buffer (BatchNorm statistics included) in place.

    In-place copying keeps the target's tensors, so optimisers and compiled graphs that
    hold them stay valid, and no network is re-allocated each cycle.
    """
    target_state = target.state_dict(keep_vars=True)
    for name, source_tensor in source.state_dict(keep_vars=True).items():
        target_state[name].copy_(source_tensor)
