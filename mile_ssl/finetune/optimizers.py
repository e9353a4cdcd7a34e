"""The optimiser of a fine-tuned network: SGD or AdamW over its parameter groups.

Two recipes share one schedule (linear warm-up, cosine decay; every group's
``initial_lr`` is scaled by it):

* ``optim.name=sgd`` without ``optim.layer_decay``, the ResNet recipe: two groups, the
  backbone and the new head (``optim.head_lr``), every weight decayed;
* otherwise one group per layer and weight-decay class. With ``optim.layer_decay`` a
  layer's rate is scaled as BEiT and MAE scale it (:func:`layer_ids`); under AdamW norms,
  biases and tokens are exempt from weight decay, as in BEiT, MAE and timm's
  ``param_groups_weight_decay``.

The groups depend on the architecture and the config only, never on the weights, so
the teacher and the student of a MILe run, copies of one architecture, get the same
groups, and a resumed run the groups its checkpoint's optimiser state was saved with.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.optim import SGD, AdamW, Optimizer

from mile_ssl.config import OptimConfig
from mile_ssl.finetune.networks import Classifier

log = logging.getLogger(__name__)

RESNET_LAYERS: dict[str, Any] = {
    "stem": r"^(conv1|bn1|net\.0)\.",
    "blocks": [(r"^layer(\d+)\.", None), (r"^stages\.(\d+)\.", None), (r"^net\.(\d+)\.", None)],
}
"""Layers of backbones without timm's ``group_matcher``, in timm's matcher format: the
stages of torchvision ResNets (``layer1``..``layer4``), of ``tiny_resnet`` (``stages.i``)
and of SimCLR-v2's ResNets (``net.1``..``net.4``); the first convolution is the stem."""

NO_DECAY_SUFFIXES = (".bias", "token", "pos_embed")
"""Parameter names AdamW does not decay, besides every 1-D tensor (norms, biases)."""


@dataclass(frozen=True)
class GroupKey:
    """Which parameters share a group: a layer and whether weight decay applies.

    Attributes:
        layer: Layer id (0: the stem; the head and what follows the blocks: the largest).
        head: Whether the group holds the head's parameters (rate ``optim.head_lr``).
        decays: Whether the group's weights are decayed.
    """

    layer: int
    head: bool
    decays: bool


def _block_patterns(spec: Any) -> list[str]:
    """The regular expressions of a timm matcher entry that number layers.

    Entries with a suffix (timm's ``(r'^norm', (99999,))``: the final norm, after the
    blocks) are left out: what follows the blocks shares the head's layer, as in BEiT.
    """
    if spec is None:
        return []
    if isinstance(spec, str):
        return [spec]
    return [pattern for pattern, suffix in spec if suffix is None]


def layer_ids(backbone: nn.Module) -> tuple[dict[str, int], int]:
    """The layer of each backbone parameter, and the head's layer, as BEiT and MAE number them.

    Layer 0 is the stem (patch embedding, class / register tokens, position embedding;
    a ResNet's first convolution), block (or ResNet stage) ``i`` of ``N`` in order is
    layer ``i + 1``, and the head and every parameter after the blocks (a final norm)
    are layer ``N + 1``. The layers come from timm's ``group_matcher(coarse=True)``
    where the backbone has one (a ViT's blocks, a timm ResNet's stages), else from
    :data:`RESNET_LAYERS`.

    Raises:
        ValueError: If no parameter belongs to a block: the layers cannot be numbered.
    """
    matcher = getattr(backbone, "group_matcher", None)
    groups = matcher(coarse=True) if callable(matcher) else RESNET_LAYERS
    stem = [re.compile(pattern) for pattern in _block_patterns(groups.get("stem"))]
    blocks = [re.compile(pattern) for pattern in _block_patterns(groups.get("blocks"))]
    stem_key: tuple[int, ...] = (-1,)
    keys: dict[str, tuple[int, ...] | None] = {}
    for name, _ in backbone.named_parameters():
        keys[name] = stem_key if any(pattern.match(name) for pattern in stem) else None
        for pattern in blocks if keys[name] is None else []:
            found = pattern.match(name)
            if found is not None:
                keys[name] = tuple(int(part) for part in found.groups() if part is not None)
                break
    ordered = sorted({key for key in keys.values() if key is not None and key != stem_key})
    if not ordered:
        raise ValueError(
            f"config key 'optim.layer_decay' needs a backbone with numbered blocks or stages "
            f"(a timm model, or a ResNet's layer1..layer4); {type(backbone).__name__} has "
            "none: leave optim.layer_decay unset (null)"
        )
    layer = {key: index + 1 for index, key in enumerate(ordered)} | {stem_key: 0}
    head = len(ordered) + 1
    return {name: head if key is None else layer[key] for name, key in keys.items()}, head


def _decays(name: str, parameter: nn.Parameter, exempt: set[str], optim: OptimConfig) -> bool:
    """Whether weight decay applies: always under SGD; under AdamW not to norms, biases, tokens."""
    if optim.name == "sgd":
        return True
    return not (parameter.ndim <= 1 or name.endswith(NO_DECAY_SUFFIXES) or name in exempt)


def _keyed_parameters(
    network: Classifier, optim: OptimConfig
) -> Iterator[tuple[GroupKey, nn.Parameter]]:
    """Every trained parameter of ``network`` with the key of its group, backbone first."""
    backbone: Any = network.backbone
    exempt = set(backbone.no_weight_decay()) if hasattr(backbone, "no_weight_decay") else set()
    legacy = optim.name == "sgd" and optim.layer_decay is None
    layers, head = layer_ids(backbone) if optim.layer_decay is not None else ({}, 1)
    for name, parameter in backbone.named_parameters():
        if parameter.requires_grad:
            decays = legacy or _decays(name, parameter, exempt, optim)
            yield GroupKey(layers.get(name, 0), False, decays), parameter
    for name, parameter in network.head.named_parameters():
        if parameter.requires_grad:
            yield GroupKey(head, True, legacy or _decays(name, parameter, set(), optim)), parameter


def parameter_groups(
    network: Classifier, optim: OptimConfig
) -> list[tuple[GroupKey, list[nn.Parameter]]]:
    """The parameter groups of ``network``, in the order the optimiser holds them.

    The ResNet recipe (``sgd``, no ``layer_decay``) has exactly two groups, backbone and
    head, as optimisers saved before per-layer groups existed.
    """
    groups: dict[GroupKey, list[nn.Parameter]] = {}
    for key, parameter in _keyed_parameters(network, optim):
        groups.setdefault(key, []).append(parameter)
    return list(groups.items())


def settings_of(key: GroupKey, head: int, optim: OptimConfig) -> dict[str, Any]:
    """The optimiser settings of one group; ``head`` is the head's layer id.

    ``initial_lr`` is the rate the schedule scales at every step: ``optim.lr`` (the head:
    ``optim.head_lr``, default ``optim.lr``) times ``optim.layer_decay ** (head - layer)``.
    """
    base = optim.head_lr if key.head and optim.head_lr is not None else optim.lr
    scale = 1.0 if optim.layer_decay is None else optim.layer_decay ** (head - key.layer)
    lr = base * scale
    settings: dict[str, Any] = {
        "lr": lr,
        "initial_lr": lr,
        "weight_decay": optim.weight_decay if key.decays else 0.0,
    }
    if optim.name == "sgd":
        settings |= {"momentum": optim.momentum, "nesterov": optim.nesterov and optim.momentum > 0}
    else:
        settings["betas"] = (optim.betas[0], optim.betas[1])
    return settings


def group_settings(network: Classifier, optim: OptimConfig) -> list[dict[str, Any]]:
    """The settings of :func:`parameter_groups`' groups, in their order.

    A resumed run applies these over the settings its checkpoint saved, so that a
    changed ``optim.lr``, ``head_lr``, ``layer_decay`` or ``weight_decay`` takes effect.
    """
    groups = parameter_groups(network, optim)
    head = max(key.layer for key, _ in groups)  # the head's layer is the last
    return [settings_of(key, head, optim) for key, _ in groups]


def make_optimizer(network: Classifier, optim: OptimConfig) -> Optimizer:
    """SGD or AdamW over ``network``'s parameter groups."""
    groups = [
        {"params": params, **settings}
        for (_, params), settings in zip(
            parameter_groups(network, optim), group_settings(network, optim), strict=True
        )
    ]
    if optim.name == "adamw":
        return AdamW(groups, lr=optim.lr, betas=(optim.betas[0], optim.betas[1]))
    return SGD(groups, lr=optim.lr)


def warn_about_recipe(network: Classifier, optim: OptimConfig) -> None:
    """Warn, in one line, of a vision transformer about to be fine-tuned with the ResNet recipe.

    SGD at one learning rate is known to fine-tune ViTs poorly; every published ViT
    recipe uses AdamW with layer-wise decay. The config is composed before the checkpoint
    says what it holds, so the recipe cannot follow the architecture: the run says it.
    """
    backbone = network.backbone
    is_vit = hasattr(backbone, "patch_embed") and hasattr(backbone, "blocks")
    if is_vit and optim.name == "sgd" and optim.layer_decay is None:
        log.warning(
            "the backbone is a vision transformer (%s) and optim=sgd, the ResNet recipe, is "
            "selected: ViTs fine-tune with AdamW and layer-wise lr decay; select optim=adamw "
            "or a ViT preset (experiment=imagenet/dinov2_vits14_10pct, mae_vitb16_10pct, ...: "
            "docs/vit_recipe.md)",
            type(backbone).__name__,
        )
