"""The ResNet of SimCLR-v2, laid out like its PyTorch conversion so that its files load as-is.

SimCLR-v2 (Chen et al., "Big Self-Supervised Models are Strong Semi-Supervised
Learners", NeurIPS 2020, arXiv:2006.10029) released TensorFlow ResNet-50/101/152
checkpoints at widths 1x/2x/3x, with and without selective kernels (SK, Li et al.,
arXiv:1903.06586). The PyTorch conversion Separius/SimCLRv2-Pytorch turns them into
``r{depth}_{width}x_sk{0,1}[_ema].pth`` files holding ``{"resnet": ..., "head": ...}``.
:class:`SimCLRv2ResNet` reproduces that conversion's module tree, so its
``state_dict()`` keys and shapes are exactly the file's ``resnet`` keys (minus the
``fc.*`` classifier) and, with a kept projection head, ``head.`` + the file's ``head``
keys. The adapter ``mile_ssl.adapters.simclrv2`` therefore renames nothing.

Layout (``C`` = 64 x width, every BatchNorm has eps 1e-5 and is wrapped with its ReLU,
or an identity, in a two-module ``nn.Sequential``, hence the ``.0`` in BN keys)::

    net.0            stem: sk0 -> 7x7/2 conv (net.0.0) + BN (net.0.1.0) + 3x3/2 max-pool
                     sk1 -> three 3x3 convs C/2 (stride 2), C/2, C (net.0.{0,2,4}) with
                     BNs net.0.{1,3,5}.0, then the max-pool (ResNet-D stem)
    net.{1..4}       stages of 3/4/6/3 (50), 3/4/23/3 (101) or 3/8/36/3 (152)
                     bottlenecks in ``.blocks``, widths C, 2C, 4C, 8C, output 4x that
    block.net        1x1 (net.0) + BN (net.1.0); then sk0: strided 3x3 (net.2) + BN
                     (net.3.0), 1x1 expand (net.4) + BN (net.5.0); sk1: SK unit (net.2),
                     1x1 expand (net.3) + BN (net.4.0)
    block.projection first block of a stage only: sk0 -> strided 1x1 (shortcut) + BN
                     (bn.0); sk1 -> ResNet-D: zero pad (0, 1, 0, 1), 2x2 average pool
                     with the stride, 1x1 (shortcut.2) + BN (bn.0)
    head.layers      kept projection-head layers: Linear without bias (0, 3, 6),
                     BatchNorm1d (1, 4, 7), ReLU (2, 5) after all but the third layer

Padding follows the PyTorch conversion, not the TensorFlow original: TF's
``conv2d_fixed_padding`` pads strided convolutions by ``k - 1`` split as
``(k - 1) // 2`` before and the rest after, and its max-pool uses "SAME" (0 before, 1
after), while the conversion pads every k x k convolution symmetrically by
``(k - 1) // 2`` (3 for the 7x7 stem, 1 for 3x3) and the max-pool by 1. The converted
weights were evaluated with the symmetric padding (the conversion's README reports
70.97% vs 71.7% top-1 for r50_1x_sk0), and those are the files this module loads.

With ``depth=50, width_multiplier=1, selective_kernel=False`` the tensors correspond one
to one, in order, to torchvision's ``resnet50`` (stride on the 3x3 convolution, same
padding), but the adapter always builds this class so that one spec covers every
variant and the projection head can be kept.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

STAGE_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
"""Bottleneck blocks per stage of each released depth (SimCLR-v2 ``resnet.py``)."""

WIDTH_MULTIPLIERS: tuple[int, ...] = (1, 2, 3)
"""Widths SimCLR-v2 released; every channel count is scaled by the multiplier."""

BASE_WIDTH = 64
"""Stem output channels and bottleneck width of the first stage at width 1."""

EXPANSION = 4
"""A bottleneck's output channels are four times its inner width."""

SK_RATIO = 0.0625
"""SimCLR-v2's ``sk_ratio``: the SK mixing layer has ``C * sk_ratio`` channels ..."""

SK_MIN_DIM = 32
"""... but never fewer than this (``min_dim`` of ``sk_conv2d``)."""

BN_EPS = 1e-5
"""BatchNorm epsilon of the TF models, kept by the conversion."""

HEAD_LAYERS = 3
"""Layers of the released contrastive projection head."""

HEAD_OUTPUT_DIM = 128
"""Output width of the head's last layer; the other layers keep the feature width."""


def _bn(channels: int, relu: bool = True) -> nn.Sequential:
    """BatchNorm followed by a ReLU (or nothing), as one indexable unit like the files."""
    return nn.Sequential(
        nn.BatchNorm2d(channels, eps=BN_EPS), nn.ReLU(inplace=True) if relu else nn.Identity()
    )


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    """Bias-free convolution with the conversion's symmetric ``(k - 1) // 2`` padding."""
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=(kernel_size - 1) // 2,
        bias=False,
    )


def sk_hidden_channels(channels: int) -> int:
    """Width of the SK mixing layer for a ``channels``-wide SK unit.

    ``max(int(channels * SK_RATIO), SK_MIN_DIM)``: 32 up to 512 channels, 64 at 1024,
    96 at 1536 (the widest stage of the 3x models).
    """
    return max(int(channels * SK_RATIO), SK_MIN_DIM)


class SelectiveKernel(nn.Module):
    """SimCLR-v2's selective-kernel 3x3 layer (``sk_conv2d`` in google-research/simclr).

    Unlike the original SK unit (Li et al., 2019), whose second branch is a dilated
    3x3 (a 5x5 receptive field), SimCLR-v2 produces both branches with *one* plain 3x3
    convolution of ``2 * C`` output channels (stride included), followed by one BN +
    ReLU over all ``2 * C`` channels; the first ``C`` channels are branch 0, the last
    ``C`` branch 1. The two branches are summed and globally averaged, squeezed by a
    1x1 convolution to :func:`sk_hidden_channels` channels + BN + ReLU, and expanded by
    a 1x1 convolution back to ``2 * C`` logits, again split in two halves. A softmax
    across the two branches, per channel and sample, gives the weights of their sum.

    Parameter shapes (as in the converted files): ``main_conv.0.weight`` is
    ``(2C, C_in, 3, 3)``, ``main_conv.1.0`` a BN of ``2C``, ``mixing_conv.0.weight``
    ``(hidden, C, 1, 1)``, ``mixing_conv.1.0`` a BN of ``hidden`` and
    ``mixing_conv.2.weight`` ``(2C, hidden, 1, 1)``.

    Args:
        in_channels: Input channels ``C_in``.
        channels: Output channels ``C`` (each branch's width).
        stride: Stride of the 3x3 convolution.
    """

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.channels = channels
        hidden = sk_hidden_channels(channels)
        self.main_conv = nn.Sequential(
            _conv(in_channels, 2 * channels, 3, stride), _bn(2 * channels)
        )
        self.mixing_conv = nn.Sequential(
            _conv(channels, hidden, 1), _bn(hidden), _conv(hidden, 2 * channels, 1)
        )

    def forward(self, inputs: Tensor) -> Tensor:
        """Softmax-weighted sum of the two branches, ``(B, C, H', W')``."""
        branches = self.main_conv(inputs).unflatten(1, (2, self.channels))
        summary = branches.sum(dim=1).mean(dim=(2, 3), keepdim=True)
        logits = self.mixing_conv(summary).unflatten(1, (2, self.channels))
        return (branches * logits.softmax(dim=1)).sum(dim=1)


class ProjectionShortcut(nn.Module):
    """The shortcut of a stage's first block, which changes width and resolution.

    Without SK it is a strided 1x1 convolution + BN. SimCLR-v2's SK models use the
    ResNet-D shortcut (He et al., "Bag of Tricks", arXiv:1812.01187): a 2x2 average
    pool carries the stride so that the 1x1 convolution sees every pixel. The
    conversion zero-pads one row and column at the end before the pool, also for the
    stride-1 first stage, where TF's "SAME" pool would instead average over the valid
    pixels only; this module follows the conversion.

    Args:
        in_channels: Input channels.
        out_channels: Output channels (the block's expanded width).
        stride: Downsampling factor of the block.
        selective_kernel: Use the ResNet-D shortcut of the SK models.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, selective_kernel: bool
    ) -> None:
        super().__init__()
        self.shortcut: nn.Module
        if selective_kernel:
            self.shortcut = nn.Sequential(
                nn.ZeroPad2d((0, 1, 0, 1)),
                nn.AvgPool2d(kernel_size=2, stride=stride),
                _conv(in_channels, out_channels, 1),
            )
        else:
            self.shortcut = _conv(in_channels, out_channels, 1, stride)
        self.bn = _bn(out_channels, relu=False)

    def forward(self, inputs: Tensor) -> Tensor:
        """The projected shortcut."""
        return self.bn(self.shortcut(inputs))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (or SK) with the stride, 1x1 expand; ReLU after the residual sum.

    Args:
        in_channels: Input channels.
        width: Inner width; the output has ``EXPANSION * width`` channels.
        stride: Stride of the 3x3 layer (and of the projection shortcut).
        selective_kernel: Use :class:`SelectiveKernel` as the 3x3 layer.
        project: Give the block a :class:`ProjectionShortcut` (first block of a stage).
    """

    def __init__(
        self, in_channels: int, width: int, stride: int, selective_kernel: bool, project: bool
    ) -> None:
        super().__init__()
        out_channels = EXPANSION * width
        self.projection = (
            ProjectionShortcut(in_channels, out_channels, stride, selective_kernel)
            if project
            else None
        )
        middle: list[nn.Module] = (
            [SelectiveKernel(width, width, stride)]
            if selective_kernel
            else [_conv(width, width, 3, stride), _bn(width)]
        )
        self.net = nn.Sequential(
            _conv(in_channels, width, 1),
            _bn(width),
            *middle,
            _conv(width, out_channels, 1),
            _bn(out_channels, relu=False),
        )

    def forward(self, inputs: Tensor) -> Tensor:
        """``relu(shortcut(x) + net(x))``."""
        shortcut = inputs if self.projection is None else self.projection(inputs)
        return torch.relu(shortcut + self.net(inputs))


class Stage(nn.Module):
    """A group of bottlenecks at one resolution; only the first one may downsample.

    Args:
        num_blocks: Bottlenecks in the stage.
        in_channels: Input channels of the first block.
        width: Inner width of every block.
        stride: Stride of the first block.
        selective_kernel: Use SK 3x3 layers and ResNet-D shortcuts.
    """

    def __init__(
        self, num_blocks: int, in_channels: int, width: int, stride: int, selective_kernel: bool
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Bottleneck(
                in_channels if index == 0 else EXPANSION * width,
                width,
                stride if index == 0 else 1,
                selective_kernel,
                project=index == 0,
            )
            for index in range(num_blocks)
        )
        self.out_channels = EXPANSION * width

    def forward(self, inputs: Tensor) -> Tensor:
        """The blocks applied in order."""
        for block in self.blocks:
            inputs = block(inputs)
        return inputs


class ProjectionHead(nn.Module):
    """The first ``num_layers`` layers of SimCLR-v2's contrastive projection head.

    The released head has three layers, each a bias-free Linear and a BatchNorm1d
    (the TF model gives the last BN no offset; the conversion stores a zero bias), with
    a ReLU after the first two. Layers 1 and 2 keep the feature width; layer 3 maps to
    :data:`HEAD_OUTPUT_DIM`. SimCLR-v2 (Section 2 of the paper) does not discard the
    head after pretraining but fine-tunes from the output of its first layer,
    ``relu(bn(linear(h)))`` of the pooled features ``h``, which helps most when few
    labels are available.

    Args:
        in_features: Width of the pooled features.
        num_layers: Head layers to keep, 1 to :data:`HEAD_LAYERS`.
    """

    def __init__(self, in_features: int, num_layers: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for index in range(num_layers):
            last_of_head = index == HEAD_LAYERS - 1
            width = HEAD_OUTPUT_DIM if last_of_head else in_features
            layers += [
                nn.Linear(in_features, width, bias=False),
                nn.BatchNorm1d(width, eps=BN_EPS),
            ]
            if not last_of_head:
                layers.append(nn.ReLU(inplace=True))
        self.layers = nn.ModuleList(layers)
        self.out_features = width

    def forward(self, features: Tensor) -> Tensor:
        """The kept layers applied in order."""
        for layer in self.layers:
            features = layer(features)
        return features


class SimCLRv2ResNet(nn.Module):
    """SimCLR-v2's ResNet, headless or with the first layers of its projection head.

    Args:
        depth: 50, 101 or 152.
        width_multiplier: 1, 2 or 3; scales every channel count.
        selective_kernel: The ``sk1`` models: 3-conv stem, SK 3x3 layers and ResNet-D
            shortcuts.
        projection_layers: Projection-head layers applied to the pooled features, 0 to
            3; SimCLR-v2's fine-tuning protocol uses 1.

    Attributes:
        feature_dim: Width of :meth:`forward`'s output: ``2048 * width_multiplier``,
            or 128 with all three head layers.

    Raises:
        ValueError: If an argument is outside the released variants.
    """

    def __init__(
        self,
        depth: int = 50,
        width_multiplier: int = 1,
        selective_kernel: bool = False,
        projection_layers: int = 0,
    ) -> None:
        super().__init__()
        if depth not in STAGE_BLOCKS:
            raise ValueError(
                f"SimCLR-v2 ResNet depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}"
            )
        if width_multiplier not in WIDTH_MULTIPLIERS:
            raise ValueError(
                f"SimCLR-v2 width_multiplier must be one of {list(WIDTH_MULTIPLIERS)}, "
                f"got {width_multiplier}"
            )
        if not 0 <= projection_layers <= HEAD_LAYERS:
            raise ValueError(
                f"projection_layers must be between 0 and {HEAD_LAYERS} (the SimCLR-v2 head "
                f"has {HEAD_LAYERS} layers), got {projection_layers}"
            )
        self.depth = depth
        self.width_multiplier = width_multiplier
        self.selective_kernel = selective_kernel
        self.projection_layers = projection_layers

        stem_channels = BASE_WIDTH * width_multiplier
        stages: list[nn.Module] = [self._stem(stem_channels, selective_kernel)]
        in_channels = stem_channels
        for index, num_blocks in enumerate(STAGE_BLOCKS[depth]):
            stage = Stage(
                num_blocks,
                in_channels,
                stem_channels * 2**index,
                stride=1 if index == 0 else 2,
                selective_kernel=selective_kernel,
            )
            stages.append(stage)
            in_channels = stage.out_channels
        self.net = nn.Sequential(*stages)
        self.pooled_dim = in_channels
        self.head = ProjectionHead(in_channels, projection_layers) if projection_layers else None
        self.feature_dim = self.head.out_features if self.head is not None else in_channels

    @staticmethod
    def _stem(channels: int, selective_kernel: bool) -> nn.Sequential:
        if selective_kernel:
            half = channels // 2
            layers: list[nn.Module] = [
                _conv(3, half, 3, stride=2),
                _bn(half),
                _conv(half, half, 3),
                _bn(half),
                _conv(half, channels, 3),
            ]
        else:
            layers = [_conv(3, channels, 7, stride=2)]
        return nn.Sequential(
            *layers, _bn(channels), nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        )

    def forward(self, images: Tensor) -> Tensor:
        """Features ``(B, feature_dim)`` of images ``(B, 3, H, W)`` in [0, 1] (no normalisation)."""
        features = self.net(images).mean(dim=(2, 3))
        return features if self.head is None else self.head(features)
