"""Backbone construction: a feature extractor and the width of its pooled features.

Every backbone is built headless (no classifier), so the state dict of a pretrained
checkpoint, once an adapter has stripped its SSL heads, must match it key for key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

BackboneBuilder = Callable[..., tuple[nn.Module, int]]
_BUILDERS: dict[str, BackboneBuilder] = {}


@dataclass(frozen=True)
class BackboneSpec:
    """Names an architecture so that it can be rebuilt from a checkpoint file.

    Attributes:
        name: ``tiny_resnet``, ``torchvision:<arch>`` (e.g. ``torchvision:resnet50``)
            or ``timm:<model name>``.
        kwargs: Keyword arguments of the builder.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def register_builder(prefix: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Register a backbone family under ``prefix`` (refusing duplicates)."""

    def decorator(builder: BackboneBuilder) -> BackboneBuilder:
        if prefix in _BUILDERS:
            raise ValueError(f"backbone family {prefix!r} is already registered")
        _BUILDERS[prefix] = builder
        return builder

    return decorator


def build_backbone(spec: BackboneSpec) -> tuple[nn.Module, int]:
    """Build a headless backbone.

    Args:
        spec: Architecture name and builder arguments.

    Returns:
        The module, which maps images ``(B, 3, H, W)`` to pooled features ``(B, D)``,
        and ``D``.

    Raises:
        ValueError: If the family or architecture is unknown.
    """
    family, _, arch = spec.name.partition(":")
    if family not in _BUILDERS:
        raise ValueError(
            f"unknown backbone {spec.name!r}; known families: {sorted(_BUILDERS)} "
            "(use e.g. 'torchvision:resnet50' or 'timm:resnet50')"
        )
    builder = _BUILDERS[family]
    return builder(arch, **spec.kwargs) if arch else builder(**spec.kwargs)


class TinyResNet(nn.Module):
    """A narrow ResNet for small images (digit grids, tests, CPU demos).

    A 3x3 stem without max-pooling keeps the spatial size of small inputs; each stage is
    torchvision's ``BasicBlock`` so the blocks behave exactly as in ResNet-18.

    Args:
        widths: Channels of each stage; every stage after the first halves the resolution.
        blocks_per_stage: Residual blocks per stage.
        in_channels: Input channels.
    """

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64),
        blocks_per_stage: int = 1,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages: list[nn.Module] = []
        in_width = widths[0]
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            blocks: list[nn.Module] = []
            for block_index in range(blocks_per_stage):
                block_stride = stride if block_index == 0 else 1
                downsample = None
                if block_stride != 1 or in_width != width:
                    downsample = nn.Sequential(
                        nn.Conv2d(in_width, width, 1, stride=block_stride, bias=False),
                        nn.BatchNorm2d(width),
                    )
                blocks.append(BasicBlock(in_width, width, block_stride, downsample))
                in_width = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_width
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features of ``images``."""
        features = self.stages(self.relu(self.bn1(self.conv1(images))))
        return torch.flatten(self.pool(features), 1)


@register_builder("tiny_resnet")
def _build_tiny_resnet(**kwargs: Any) -> tuple[nn.Module, int]:
    model = TinyResNet(**kwargs)
    return model, model.feature_dim


TORCHVISION_BUILD_OPTIONS = ("cifar_stem", "cifar_stem_padding", "tf_same_padding")
"""Options of the ``torchvision`` family that mile_ssl applies after construction; they
are not arguments of ``torchvision.models.get_model``."""


@register_builder("torchvision")
def _build_torchvision(
    arch: str,
    cifar_stem: bool = False,
    cifar_stem_padding: int = 1,
    tf_same_padding: bool = False,
    **kwargs: Any,
) -> tuple[nn.Module, int]:
    """A torchvision ResNet-style model without its classifier.

    Args:
        arch: torchvision model name.
        cifar_stem: Replace the 7x7/2 stem and max-pool by a 3x3/1 convolution, as
            CIFAR-trained ResNets do.
        cifar_stem_padding: Padding of that 3x3 convolution (solo-learn uses 2, which
            changes the feature maps, so its weights need it).
        tf_same_padding: Pad strided convolutions and the max-pool like TensorFlow's
            "SAME" (asymmetric), as weights trained in TF/JAX (e.g. BYOL) require.
        **kwargs: Passed to the torchvision constructor.
    """
    import torchvision.models

    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown torchvision classification model {arch!r}")
    model = torchvision.models.get_model(arch, weights=None, **kwargs)
    if not isinstance(getattr(model, "fc", None), nn.Linear):
        raise ValueError(
            f"torchvision:{arch} has no 'fc' classifier to remove; only ResNet-style "
            "torchvision models are supported as backbones"
        )
    feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    if cifar_stem:
        model.conv1 = nn.Conv2d(
            3, model.conv1.out_channels, 3, stride=1, padding=cifar_stem_padding, bias=False
        )
        model.maxpool = nn.Identity()
    if tf_same_padding:
        from mile_ssl.networks.tf_padding import use_tf_same_padding

        use_tf_same_padding(model)
    return model, feature_dim


@register_builder("simclrv2")
def _build_simclrv2(**kwargs: Any) -> tuple[nn.Module, int]:
    from mile_ssl.networks.simclrv2_resnet import SimCLRv2ResNet

    model = SimCLRv2ResNet(**kwargs)
    return model, model.feature_dim


@register_builder("timm")
def _build_timm(arch: str, **kwargs: Any) -> tuple[nn.Module, int]:
    import timm

    model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    return model, int(model.num_features)  # type: ignore[arg-type]


def with_drop_path(spec: BackboneSpec, rate: float | None) -> BackboneSpec:
    """``spec`` with timm's stochastic depth ``drop_path_rate`` (``backbone.drop_path_rate``).

    The rate is a builder argument, recorded with the architecture so that evaluation and
    export rebuild the same network (drop-path is inactive there).

    Raises:
        ValueError: If a rate is set for a backbone other than a timm model, naming the key.
    """
    if rate is None:
        return spec
    if not spec.name.startswith("timm:"):
        raise ValueError(
            f"config key 'backbone.drop_path_rate' ({rate}) needs a timm backbone "
            f"(timm:<model>): {spec.name} has no stochastic depth; leave it unset (null)"
        )
    return replace(spec, kwargs={**spec.kwargs, "drop_path_rate": rate})
