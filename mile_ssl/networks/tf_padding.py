"""TensorFlow "SAME" padding for torchvision ResNets, as weights trained in TF / JAX need.

TensorFlow, and JAX libraries that follow it such as Haiku (``hk.Conv2D(padding="SAME")``,
``hk.max_pool(padding="SAME")``), pad a strided window *asymmetrically* and *depending on
the input size*: the total padding is whatever makes the output ``ceil(size / stride)``
long, and the odd pixel goes after the input. PyTorch layers pad a fixed amount on both
sides. For a 3x3 stride-2 layer on an even input, TF pads ``(0, 1)`` where torchvision
pads ``(1, 1)``, which shifts every sampled position by one pixel. The weights still
"work" but the features differ from the ones the network was trained and evaluated with
(e.g. BYOL, Grill et al. 2020, whose official checkpoints are Haiku ResNets).

:func:`use_tf_same_padding` swaps the affected layers of a model for subclasses that
pad in ``forward``; parameters and their names are unchanged, so state dicts saved for
the plain torchvision model still load strictly.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair

__all__ = ["Conv2dSame", "MaxPool2dSame", "same_padding", "use_tf_same_padding"]


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """Padding before and after one spatial dimension under TF's "SAME" rule.

    TF computes the total padding from the remainder of the input size by the stride
    (``tf.nn.conv2d`` documentation, "SAME" padding) and puts the extra pixel of an odd
    total after the input.

    Args:
        size: Input length along the dimension.
        kernel: Window length.
        stride: Window step.
        dilation: Window dilation; the effective window is ``(kernel - 1) * dilation + 1``.

    Returns:
        ``(before, after)`` padding.
    """
    effective = (kernel - 1) * dilation + 1
    remainder = size % stride
    total = max(effective - (stride if remainder == 0 else remainder), 0)
    return total // 2, total - total // 2


def _pads(
    input_: Tensor, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
) -> tuple[int, int, int, int]:
    """``F.pad`` argument (last dimension first) for an ``(N, C, H, W)`` input."""
    top, bottom = same_padding(input_.shape[-2], kernel[0], stride[0], dilation[0])
    left, right = same_padding(input_.shape[-1], kernel[1], stride[1], dilation[1])
    return left, right, top, bottom


def _static_padding_is_same(
    padding: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> bool:
    """Whether a fixed symmetric ``padding`` equals TF "SAME" for every input size.

    The "SAME" total only depends on ``size % stride``, so checking every remainder
    covers all sizes. This holds for stride-1 layers with an odd effective window and
    ``padding = window // 2`` (the usual 3x3 convolution) and for 1x1 strided
    convolutions without padding; those layers can stay as they are.
    """
    for pad, k, s, d in zip(padding, kernel, stride, dilation, strict=True):
        for remainder in range(s):
            before, after = same_padding(remainder if remainder else s, k, s, d)
            if before != pad or after != pad:
                return False
    return True


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` padding like TF "SAME": dynamically, asymmetrically, with zeros.

    Parameters are those of ``nn.Conv2d`` under the same names (``weight``, ``bias``);
    the static ``padding`` is 0 because the padding is applied in :meth:`forward`.
    """

    def forward(self, input: Tensor) -> Tensor:
        """Pad ``input`` for "SAME" at its own size, then convolve without padding."""
        pads = _pads(input, _pair(self.kernel_size), _pair(self.stride), _pair(self.dilation))
        return self._conv_forward(F.pad(input, pads), self.weight, self.bias)

    def extra_repr(self) -> str:
        """``nn.Conv2d``'s description, marked as TF "SAME" padded."""
        return f"{super().extra_repr()}, padding=TF_SAME"

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> Conv2dSame:
        """A "SAME" convolution sharing ``conv``'s parameter tensors.

        Raises:
            ValueError: If ``conv`` pads with anything but zeros or uses string padding;
                TF "SAME" pads with zeros.
        """
        if conv.padding_mode != "zeros":
            raise ValueError(
                f"TF 'SAME' padding pads with zeros; cannot convert a convolution with "
                f"padding_mode={conv.padding_mode!r}"
            )
        same = cls(
            conv.in_channels,
            conv.out_channels,
            _pair(conv.kernel_size),
            stride=_pair(conv.stride),
            padding=0,
            dilation=_pair(conv.dilation),
            groups=conv.groups,
            bias=conv.bias is not None,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        same.weight = conv.weight
        same.bias = conv.bias
        same.train(conv.training)
        return same


class MaxPool2dSame(nn.MaxPool2d):
    """``nn.MaxPool2d`` padding like TF "SAME": padded pixels never win the maximum.

    TF and Haiku (``hk.max_pool``, via ``lax.reduce_window`` with a ``-inf`` initial
    value) ignore the padded area, which padding with ``-inf`` reproduces.
    """

    def forward(self, input: Tensor) -> Tensor:
        """Pad ``input`` with ``-inf`` for "SAME" at its own size, then pool."""
        kernel, stride, dilation = (
            _pair(self.kernel_size),
            _pair(self.stride),
            _pair(self.dilation),
        )
        padded = F.pad(input, _pads(input, kernel, stride, dilation), value=float("-inf"))
        return F.max_pool2d(
            padded, kernel, stride, 0, dilation, ceil_mode=False, return_indices=False
        )

    def extra_repr(self) -> str:
        """``nn.MaxPool2d``'s description, marked as TF "SAME" padded."""
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding=TF_SAME"

    @classmethod
    def from_pool(cls, pool: nn.MaxPool2d) -> MaxPool2dSame:
        """The "SAME" equivalent of ``pool``.

        Raises:
            ValueError: If ``pool`` uses ``ceil_mode`` or returns indices, which have no
                TF "SAME" counterpart.
        """
        if pool.ceil_mode or pool.return_indices:
            raise ValueError(
                f"TF 'SAME' max-pooling has no ceil_mode or return_indices; cannot convert {pool}"
            )
        return cls(
            _pair(pool.kernel_size),
            stride=_pair(pool.stride),
            padding=0,
            dilation=_pair(pool.dilation),
        )


def _needs_same(module: nn.Module) -> bool:
    if isinstance(module, Conv2dSame | MaxPool2dSame):
        return False
    if isinstance(module, nn.Conv2d):
        if module.padding == "same":
            # PyTorch allows it for stride 1 only, where it splits the padding as TF does.
            return False
        kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
        padding = (0, 0) if module.padding == "valid" else _pair(module.padding)
    elif isinstance(module, nn.MaxPool2d):
        kernel, stride, dilation = (
            _pair(module.kernel_size),
            _pair(module.stride),
            _pair(module.dilation),
        )
        padding = _pair(module.padding)
    else:
        return False
    return not _static_padding_is_same(
        (int(padding[0]), int(padding[1])),
        (int(kernel[0]), int(kernel[1])),
        (int(stride[0]), int(stride[1])),
        (int(dilation[0]), int(dilation[1])),
    )


def use_tf_same_padding(model: nn.Module) -> nn.Module:
    """Make every convolution and max-pool of ``model`` pad like TF "SAME", in place.

    Layers whose fixed padding already equals "SAME" for every input size (stride-1
    convolutions with odd kernels and ``padding = kernel // 2``, 1x1 strided
    convolutions) are kept; the others (in a torchvision ResNet: the 7x7/2 stem, the
    3x3/2 max-pool and the 3x3/2 convolution opening each downsampling stage) are
    replaced by :class:`Conv2dSame` / :class:`MaxPool2dSame`, which pad according to the
    input size at every call. Parameter tensors are reused, so ``state_dict()`` keys,
    shapes and values are unchanged. Calling it twice changes nothing more.

    Args:
        model: Any module; only its ``nn.Conv2d`` and ``nn.MaxPool2d`` are affected.

    Returns:
        ``model`` itself.

    Raises:
        ValueError: If a layer that needs converting pads with a non-zero mode or
            pools with ``ceil_mode``, which "SAME" cannot express.
    """
    replacements: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if not _needs_same(child):
                continue
            if isinstance(child, nn.Conv2d):
                replacements.append((parent, name, Conv2dSame.from_conv(child)))
            elif isinstance(child, nn.MaxPool2d):
                replacements.append((parent, name, MaxPool2dSame.from_pool(child)))
    for parent, name, replacement in replacements:
        setattr(parent, name, replacement)
    return model
