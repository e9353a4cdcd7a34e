"""Haiku's ResNet v1 under torchvision's names, as DeepMind's BYOL checkpoints hold it.

Haiku names parameters by module path (``res_net50/~/block_group_0/~/block_0/~/conv_0``)
and stores ``{"w" | "scale" | "offset": array}`` per module, with BatchNorm statistics
in a separate state tree (``<batchnorm>/~/mean_ema``, ``/~/var_ema``). Its ResNet v1
matches torchvision's layer for layer, so :func:`convert_haiku_resnet` renames and
transposes instead of re-implementing the network; the trees may still be pickled Haiku
mapping stand-ins (:class:`~.safe_pickle.PickledObject`) as the ``.pkl`` reader leaves
them. This is kept apart from the BYOL file format (:mod:`.byol`), which only decides
which network of the file to convert.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import SHOWN
from .safe_pickle import PickledObject, describe_pickled

HEAD_MODULES = frozenset({"projector", "predictor", "classifier", "logits"})
"""Haiku modules of BYOL that are not part of the encoder: the projection and prediction
MLPs, the online linear classifier and a ResNet's own classifier."""


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    """``value`` as a mapping, seeing through Haiku's pickled mapping classes.

    Haiku's immutable mappings (``FlatMapping``, ``frozendict``) pickle as
    ``FlatMapping(dict)`` or as an object whose only mapping attribute is the dict; the
    reader keeps them as stand-ins holding that dict.
    """
    if isinstance(value, Mapping):
        return value
    if isinstance(value, PickledObject):
        if value.pickled_dict and not value.pickled_args:
            return value.pickled_dict
        if len(value.pickled_args) == 1:
            return _mapping(value.pickled_args[0], where)
        state = value.pickled_state
        parts = state if isinstance(state, tuple) else (state,)
        inner = [
            item
            for part in parts
            if isinstance(part, Mapping)
            for item in part.values()
            if isinstance(item, Mapping | PickledObject)
        ]
        if len(inner) == 1:
            return _mapping(inner[0], where)
    raise ValueError(f"{where} is {describe_pickled(value)}, expected a mapping of Haiku modules")


def _tensor(value: Any, where: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return torch.from_numpy(np.array(value, order="C"))
    raise ValueError(f"{where} is {describe_pickled(value)}, expected an array")


@dataclass(frozen=True)
class HaikuResNet:
    """The shape of a Haiku ResNet v1, inferred from its parameter names and shapes.

    Attributes:
        blocks_per_group: Residual blocks of each of the four block groups.
        bottleneck: Whether blocks have three convolutions (ResNet-50 and deeper).
        width: Channel multiplier (``width_multiplier`` in BYOL's ``ResNetTorso``).
    """

    blocks_per_group: tuple[int, ...]
    bottleneck: bool
    width: float

    @property
    def depth(self) -> int:
        """Number of weighted layers: convolutions of every block, the stem and the head."""
        return (3 if self.bottleneck else 2) * sum(self.blocks_per_group) + 2

    def __str__(self) -> str:
        width = f"{self.width:g}"
        return (
            f"ResNet-{self.depth} (width x{width}, "
            f"{'bottleneck' if self.bottleneck else 'basic'} blocks per group "
            f"{self.blocks_per_group})"
        )


_ENCODER_MODULE = re.compile(
    r"^(?P<prefix>.*?)(?P<local>initial_conv|initial_batchnorm"
    r"|block_group_(?P<group>\d+)/~/block_(?P<block>\d+)/~/"
    r"(?P<layer>conv_\d+|batchnorm_\d+|shortcut_conv|shortcut_batchnorm))$"
)


def _torchvision_module(match: re.Match[str]) -> str:
    local = match["local"]
    if local == "initial_conv":
        return "conv1"
    if local == "initial_batchnorm":
        return "bn1"
    block = f"layer{int(match['group']) + 1}.{int(match['block'])}"
    layer = match["layer"]
    if layer == "shortcut_conv":
        return f"{block}.downsample.0"
    if layer == "shortcut_batchnorm":
        return f"{block}.downsample.1"
    kind, _, index = layer.rpartition("_")
    return f"{block}.{'conv' if kind == 'conv' else 'bn'}{int(index) + 1}"


def _is_head(module: str) -> bool:
    # Haiku joins a submodule made in __init__ with "/~/" and one made in __call__
    # with "/" (BYOL's MLP heads: "projector/linear", "projector/batch_norm/~/mean_ema").
    return any(part in HEAD_MODULES for part in module.split("/"))


def _channels(array: Tensor, where: str) -> Tensor:
    """A BatchNorm vector: Haiku stores ``(1, 1, 1, C)`` (older) or ``(C,)``."""
    if array.dim() == 0 or any(size != 1 for size in array.shape[:-1]):
        raise ValueError(f"{where} has shape {tuple(array.shape)}, expected (C,) or (1, 1, 1, C)")
    return array.reshape(-1)


def _architecture(modules: Mapping[str, re.Match[str]], params: Mapping[str, Any]) -> HaikuResNet:
    blocks: dict[int, set[int]] = {}
    bottleneck = False
    for match in modules.values():
        if match["group"] is not None:
            blocks.setdefault(int(match["group"]), set()).add(int(match["block"]))
            bottleneck = bottleneck or match["layer"] == "conv_2"
    counts = []
    for group in range(max(blocks, default=-1) + 1):
        indices = blocks.get(group, set())
        if indices != set(range(len(indices))) or not indices:
            raise ValueError(
                f"block_group_{group} has blocks {sorted(indices)}; expected block_0 to "
                "block_<n-1>, as a Haiku ResNet numbers them"
            )
        counts.append(len(indices))
    stem = next((name for name, match in modules.items() if match["local"] == "initial_conv"), None)
    if stem is None:
        raise ValueError("no initial_conv found; the parameters are not a Haiku ResNet v1")
    weight = _mapping(params[stem], stem).get("w")
    width = _tensor(weight, f"{stem}/w").shape[-1] / 64 if weight is not None else float("nan")
    return HaikuResNet(tuple(counts), bottleneck, width)


def convert_haiku_resnet(
    params: Any, state: Any, *, where: str = "params"
) -> tuple[dict[str, Tensor], HaikuResNet, tuple[str, ...]]:
    """Rename a Haiku ResNet v1 (as in BYOL) to torchvision's ResNet names.

    Haiku's bottleneck block (``conv_0`` 1x1, ``conv_1`` 3x3 carrying the stride,
    ``conv_2`` 1x1, each followed by ``batchnorm_i``; ``shortcut_conv`` and
    ``shortcut_batchnorm`` on the first block of a group) matches torchvision's
    ``Bottleneck`` (``conv1/2/3``, ``bn1/2/3``, ``downsample.0/1``) layer for layer;
    ``initial_conv`` / ``initial_batchnorm`` are ``conv1`` / ``bn1``. Any prefix before
    these names (``res_net50/~/``) is accepted. Kernels go from HWIO to OIHW; BatchNorm
    ``scale``/``offset`` become ``weight``/``bias`` and the ``average`` of the
    ``mean_ema``/``var_ema`` states the running statistics (``hidden`` and ``counter``
    are EMA bookkeeping without a torchvision counterpart).

    Args:
        params: Haiku parameters, module name -> ``{"w" | "scale" | "offset": array}``
            (mappings or pickled Haiku mapping stand-ins; arrays or tensors).
        state: Haiku state, ``<batchnorm>/~/mean_ema`` / ``var_ema`` ->
            ``{"average", ...}``.
        where: Name of ``params`` in error messages and ``dropped``.

    Returns:
        The torchvision-named tensors, the architecture found, and the names of the
        head parameters and states (projector, predictor, classifier) left out.

    Raises:
        ValueError: If a module is neither part of the ResNet nor a known head, or a
            parameter or statistic is missing or has an unexpected shape.
    """
    params = _mapping(params, where)
    state = _mapping(state, f"the state of {where}")
    modules: dict[str, re.Match[str]] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    for module in params:
        match = _ENCODER_MODULE.match(module)
        if match is not None:
            modules[module] = match
        elif _is_head(module):
            dropped.extend(f"{where}/{module}/{name}" for name in _mapping(params[module], module))
        else:
            unknown.append(module)
    if unknown:
        raise ValueError(
            f"{where} has modules that are neither a Haiku ResNet v1 layer nor a BYOL head: "
            f"{unknown[:SHOWN]} (a ResNet v2's final_batchnorm is not supported)"
        )
    prefixes = sorted({match["prefix"] for match in modules.values()})
    if len(prefixes) > 1:
        raise ValueError(f"{where} holds several ResNets, under the prefixes {prefixes}")
    architecture = _architecture(modules, params)

    state_dict: dict[str, Tensor] = {}
    for module, match in modules.items():
        state_dict.update(_layer_tensors(module, match, params, state, where))
    for name in state:
        owner = name.rpartition("/~/")[0]
        if _is_head(name):
            dropped.extend(f"{where}.state/{name}/{key}" for key in _mapping(state[name], name))
        elif owner not in modules:
            raise ValueError(f"the state of {where} has {name!r}, which belongs to no layer")
    return state_dict, architecture, tuple(dropped)


def _layer_tensors(
    module: str,
    match: re.Match[str],
    params: Mapping[str, Any],
    state: Mapping[str, Any],
    where: str,
) -> dict[str, Tensor]:
    """The torchvision tensors of one Haiku layer: a kernel (HWIO), or BatchNorm and its EMAs."""
    target = _torchvision_module(match)
    state_dict: dict[str, Tensor] = {}
    values = dict(_mapping(params[module], module))
    if "conv" in (match["layer"] or match["local"]).split("_"):
        kernel = _tensor(values.pop("w", None), f"{module}/w")
        if kernel.dim() != 4:
            raise ValueError(f"{module}/w has shape {tuple(kernel.shape)}, expected HWIO")
        state_dict[f"{target}.weight"] = kernel.permute(3, 2, 0, 1).contiguous()
    else:
        state_dict[f"{target}.weight"] = _channels(
            _tensor(values.pop("scale", None), f"{module}/scale"), f"{module}/scale"
        )
        state_dict[f"{target}.bias"] = _channels(
            _tensor(values.pop("offset", None), f"{module}/offset"), f"{module}/offset"
        )
        for statistic, buffer in (("mean_ema", "running_mean"), ("var_ema", "running_var")):
            name = f"{module}/~/{statistic}"
            if name not in state:
                raise ValueError(f"the state of {where} has no {name!r}")
            average = _mapping(state[name], name).get("average")
            state_dict[f"{target}.{buffer}"] = _channels(
                _tensor(average, f"{name}/average"), f"{name}/average"
            )
    if values:
        raise ValueError(
            f"{module} has unexpected parameters {sorted(values)}; torchvision's ResNet "
            "has no convolution biases"
        )
    return state_dict
