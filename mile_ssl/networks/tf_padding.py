"""TensorFlow "SAME" padding for torchvision ResNets, as weights trained in TF / JAX need.

TensorFlow, and JAX libraries that follow it such as Haiku (``hk.Conv2D(padding="SAME")``,
``hk.max_pool(padding="SAME")``), pad a strided window *asymmetrically* and *depending on
the input size*: the total padding is whatever makes the output ``ceil(size / stride)``
long, and the odd pixel goes after the input. PyTorch layers pad a fixed amount on both
sides. For a 3x3 stride-2 layer on an even input, TF pads ``(0, 1)`` where torchvision
pads ``(1, 1)``, which shifts every sampled position by one pixel. The weights still
"work" but the features differ from the ones the network was trained and evaluated with
(e.g. BYOL, Grill et al. 2020, whose official checkpoints are Haiku ResNets).

timm implements the padding (``timm.layers.Conv2dSame``, ``MaxPool2dSame``, which pads
with ``-inf`` so that padded pixels never win, as ``lax.reduce_window`` does in Haiku).
:func:`use_tf_same_padding` swaps the affected layers of a built model for them, keeping
the parameter tensors, so state dicts saved for the plain torchvision model still load
strictly.
"""

from __future__ import annotations

import torch
from timm.layers import Conv2dSame, get_same_padding
from timm.layers.pool2d_same import MaxPool2dSame
from torch import nn
from torch.nn.modules.utils import _pair

__all__ = ["Conv2dSame", "MaxPool2dSame", "use_tf_same_padding"]


def _padding_is_same(
    padding: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
) -> bool:
    """Whether a fixed symmetric ``padding`` equals TF "SAME" for every input size.

    The "SAME" total only depends on ``size % stride``, so the sizes ``stride`` to
    ``2 * stride - 1`` cover all inputs. This holds for stride-1 layers with an odd
    effective window and ``padding = window // 2`` (the usual 3x3 convolution) and for
    1x1 strided convolutions without padding; those layers can stay as they are.
    """
    return all(
        get_same_padding(size, k, s, d) == 2 * p
        for p, k, s, d in zip(padding, kernel, stride, dilation, strict=True)
        for size in range(s, 2 * s)
    )


def _needs_same(module: nn.Module) -> bool:
    if isinstance(module, Conv2dSame | MaxPool2dSame):
        return False
    if isinstance(module, nn.Conv2d):
        if module.padding == "same":
            # PyTorch allows it for stride 1 only, where it splits the padding as TF does.
            return False
        padding = (0, 0) if module.padding == "valid" else _pair(module.padding)
        return not _padding_is_same(padding, module.kernel_size, module.stride, module.dilation)
    if isinstance(module, nn.MaxPool2d):
        return not _padding_is_same(
            _pair(module.padding),
            _pair(module.kernel_size),
            _pair(module.stride),
            _pair(module.dilation),
        )
    return False


def _same_conv(conv: nn.Conv2d) -> Conv2dSame:
    """A "SAME" convolution sharing ``conv``'s parameter tensors."""
    if conv.padding_mode != "zeros":
        raise ValueError(
            f"TF 'SAME' padding pads with zeros; cannot convert a convolution with "
            f"padding_mode={conv.padding_mode!r}"
        )
    with torch.device("meta"):  # the parameters are replaced: allocate nothing
        same = Conv2dSame(
            conv.in_channels,
            conv.out_channels,
            _pair(conv.kernel_size),
            stride=_pair(conv.stride),
            dilation=_pair(conv.dilation),
            groups=conv.groups,
            bias=conv.bias is not None,
        )
    same.weight = conv.weight
    same.bias = conv.bias
    return same.train(conv.training)


def _same_pool(pool: nn.MaxPool2d) -> MaxPool2dSame:
    """The "SAME" equivalent of ``pool``."""
    if pool.ceil_mode or pool.return_indices:
        raise ValueError(
            f"TF 'SAME' max-pooling has no ceil_mode or return_indices; cannot convert {pool}"
        )
    return MaxPool2dSame(pool.kernel_size, stride=pool.stride, dilation=pool.dilation)


def use_tf_same_padding(model: nn.Module) -> nn.Module:
    """Make every convolution and max-pool of ``model`` pad like TF "SAME", in place.

    Layers whose fixed padding already equals "SAME" for every input size (stride-1
    convolutions with odd kernels and ``padding = kernel // 2``, 1x1 strided
    convolutions) are kept; the others (in a torchvision ResNet: the 7x7/2 stem, the
    3x3/2 max-pool and the 3x3/2 convolution opening each downsampling stage) are
    replaced by timm's :class:`Conv2dSame` / :class:`MaxPool2dSame`, which pad according
    to the input size at every call. Parameter tensors are reused, so ``state_dict()``
    keys, shapes and values are unchanged. Calling it twice changes nothing more.

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
                replacements.append((parent, name, _same_conv(child)))
            elif isinstance(child, nn.MaxPool2d):
                replacements.append((parent, name, _same_pool(child)))
    for parent, name, replacement in replacements:
        setattr(parent, name, replacement)
    return model
