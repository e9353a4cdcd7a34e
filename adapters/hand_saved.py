"""Checkpoints as people save them: one network's state dict, maybe wrapped, maybe prefixed.

Beside the files that self-supervised projects release, most checkpoints are what a
training script wrote with ``torch.save``:

* ``{"model": sd}``, ``{"net": sd}``, ``{"state_dict": sd, "optimizer": ..., "epoch":
  ...}`` or a key of the author's choosing: lightly's SimCLR tutorial saves
  ``{"resnet18_parameters": backbone.state_dict()}``;
* the state dict of a network kept inside another, so that every key shares the path of
  its attribute: ``encoder.``, ``backbone.``, ``module.model.`` (DataParallel);
* a torchvision ResNet as ``nn.Sequential(*list(resnet.children())[:-1])``, whose keys
  are child indices (``0.weight``, ``4.0.conv1.weight``; see
  :func:`~.architectures.sequential_to_torchvision`).

Such a file carries no mark of a format, only the names and shapes of one network, so
it is read by trying each way it can be one (:func:`readings`): the file itself or
each top-level mapping of tensors (the wrapper key), without the module path all its
keys share (the prefix), Sequential indices renamed. A reading counts when the
architecture its shapes name (:func:`~.architectures.infer_resnet_spec`,
:func:`~.architectures.infer_vit_spec`) has every one of its tensors, shape for shape,
besides the classifier. Exactly one reading must count: two (``{"model": ...,
"model_ema": ...}``) are refused with both listed, since taking one would be a guess.

The adapter is a fallback (:attr:`~.registry.Adapter.fallback`): a file that an
adapter of a named format recognises keeps that adapter (a plain torchvision state dict
stays ``torchvision``'s), and this one is asked only about the rest. The weights are
taken to expect ImageNet normalisation, which torchvision's and timm's models use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mile_ssl.networks.backbones import BackboneSpec, build_backbone
from mile_ssl.networks.preprocessing import Preprocessing

from .architectures import (
    CLASSIFIER_PREFIX,
    RESNET_SEQUENTIAL,
    SEQUENTIAL_STEM,
    VIT_HEAD_PREFIX,
    infer_resnet_spec,
    infer_vit_spec,
    sequential_to_torchvision,
)
from .conversion import AdapterOptions, ConvertedCheckpoint, refuse_projection_layers
from .diagnostics import describe_mismatch, describe_spec
from .registry import register_adapter
from .state_dicts import common_prefix, extract, top_level_state_dicts

NAME = "hand_saved"


@dataclass(frozen=True)
class Reading:
    """One way a file can hold one network: where its state dict is and what it becomes.

    Attributes:
        container: The top-level key of the state dict; ``None`` when the file is one.
        prefix: The module path all its keys share, removed (``""`` when none).
        renaming: How the keys were renamed, in words; ``None`` when they were not.
        spec: The architecture that has every tensor.
        backbone: The tensors under the backbone's names, without the classifier.
        dropped: The classifier's keys, as the file names them.
    """

    container: str | None
    prefix: str
    renaming: str | None
    spec: BackboneSpec
    backbone: dict[str, Tensor]
    dropped: tuple[str, ...]

    def describe(self) -> str:
        """Where the network was found and what it is, for the ambiguity error."""
        where = "the file itself" if self.container is None else f"under {self.container!r}"
        prefix = f", keys under {self.prefix!r}" if self.prefix else ""
        return f"{describe_spec(self.spec)} {where}{prefix}"


def readings(raw: Mapping[str, Any]) -> list[Reading]:
    """Every way ``raw`` holds one network of a known architecture, all tensors included."""
    found = []
    for container, state_dict in top_level_state_dicts(raw).items():
        reading = _read(container, state_dict)
        if reading is not None:
            found.append(reading)
    return found


def _read(container: str | None, state_dict: Mapping[str, Tensor]) -> Reading | None:
    prefix = common_prefix(state_dict)
    network, dropped = extract(state_dict, prefix)
    renaming = None
    if SEQUENTIAL_STEM in network:
        try:
            network = sequential_to_torchvision(network, prefix)
        except ValueError:
            return None
        renaming = RESNET_SEQUENTIAL
    classifier = CLASSIFIER_PREFIX if "conv1.weight" in network else VIT_HEAD_PREFIX
    backbone, left_out = extract(network, "", classifier)
    spec = infer_resnet_spec(backbone) or infer_vit_spec(backbone)
    if spec is None or not _fits(spec, backbone):
        return None
    dropped += tuple(prefix + key for key in left_out)
    return Reading(container, prefix, renaming, spec, backbone, dropped)


def _fits(spec: BackboneSpec, backbone: Mapping[str, Tensor]) -> bool:
    """Whether the architecture has exactly these tensors; built on the meta device (free)."""
    try:
        with torch.device("meta"):
            module, _ = build_backbone(spec)
    except ValueError:
        return False
    return not describe_mismatch(module.state_dict(), backbone)


def detect_hand_saved(raw: Mapping[str, Any]) -> bool:
    """Whether some reading of ``raw`` is one network of a known architecture (see above)."""
    return bool(readings(raw))


@register_adapter(
    NAME,
    detect=detect_hand_saved,
    signature=(
        "one network's state dict, the file itself or under one top-level key ('model', "
        "'state_dict', 'net', any name), its keys maybe under one shared prefix ('encoder.', "
        "'module.model.'), a ResNet maybe as nn.Sequential indices; exactly one torchvision "
        "ResNet or timm ViT must have every tensor. Asked only when no other adapter matches"
    ),
    fallback=True,
)
def convert_hand_saved(raw: Mapping[str, Any], options: AdapterOptions) -> ConvertedCheckpoint:
    """Take the one network a hand-saved file holds.

    Args:
        raw: The checkpoint mapping.
        options: Conversion options. A backbone named by the user chooses among
            readings of different architectures.

    Returns:
        The backbone under its own names, its architecture, ImageNet preprocessing, the
        classifier as ``dropped``, and where it was found (``container``,
        ``expected_prefix``, ``renaming``) for ``inspect``.

    Raises:
        ValueError: If no reading fits a known architecture, or several do.
    """
    refuse_projection_layers(options, NAME)
    found = readings(raw)
    if options.backbone is not None and len(found) > 1:
        found = [reading for reading in found if reading.spec.name == options.backbone.name]
    if not found:
        raise ValueError(
            "no state dict in it (the file itself or a top-level mapping of tensors, without "
            "the prefix all its keys share) is a torchvision ResNet or timm ViT with every "
            "tensor of the right shape"
        )
    if len(found) > 1:
        raise ValueError(_ambiguity(found, options))
    reading = found[0]
    return ConvertedCheckpoint(
        state_dict=reading.backbone,
        backbone=reading.spec,
        preprocessing=Preprocessing(),
        dropped=reading.dropped,
        expected_prefix=reading.prefix or None,
        container=reading.container,
        renaming=reading.renaming,
    )


def _ambiguity(found: list[Reading], options: AdapterOptions) -> str:
    """Several networks fit: list them, and say how to choose one."""
    listed = "; ".join(reading.describe() for reading in found)
    names = {reading.spec.name for reading in found}
    choose = (
        f"name its architecture ({options.syntax.backbone.format(sorted(names)[0])}) or "
        if len(names) == len(found)
        else ""
    )
    key = next((reading.container for reading in found if reading.container), "KEY")
    return (
        f"{len(found)} networks fit, and taking one would be a guess: {listed}. To use one, "
        f"{choose}save it by itself: torch.save(checkpoint[{key!r}], 'backbone.pth')"
    )
