"""Checkpoints of models built with lightly (lightly-ai/lightly).

lightly is a library of heads and losses that users compose into their own models, so
its checkpoints follow two patterns:

* The benchmark modules (``benchmarks/imagenet/resnet50/*.py``) are Lightning modules
  with ``self.backbone = resnet50()`` whose ``fc`` is an identity, plus
  ``projection_head`` (``projection_head.layers.*``), ``prediction_head``,
  ``prototypes``, momentum copies (``teacher_backbone``, ``key_backbone``,
  ``student_backbone``, ``backbone_momentum``, ...) and ``online_classifier``: the
  backbone keys are ``backbone.<torchvision resnet key>``.
* lightly's examples and most user code take the ResNet's children without the
  classifier, ``nn.Sequential(*list(resnet.children())[:-1])``, so the keys are
  Sequential indices: ``backbone.0.weight`` (conv1), ``backbone.1.*`` (bn1),
  ``backbone.4.0.conv1.weight`` (layer1, block 0), ... Indices 2, 3 and 8 (ReLU,
  max-pool, average pool) hold no tensors; the others are renamed back
  (:func:`~.architectures.sequential_to_torchvision`), which also recovers the
  architecture. lightly's SimCLR tutorial saves that Sequential by itself,
  ``torch.save({"resnet18_parameters": backbone.state_dict()}, "model.pth")``:
  ``adapter="auto"`` reads it as a hand-saved file (:mod:`.hand_saved`), and this
  adapter, when named, reads it too.

Only ``backbone.*`` is kept; every other key is dropped. The architecture is inferred
from the shapes (torchvision ResNets; a 3x3 ``conv1`` is the CIFAR stem), and lightly's
transforms normalise with the ImageNet statistics (``IMAGENET_NORMALIZE``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from mile_ssl.networks.preprocessing import Preprocessing

from .architectures import (
    CLASSIFIER_PREFIX,
    RESNET_SEQUENTIAL,
    SEQUENTIAL_STEM,
    infer_resnet_spec,
    sequential_to_torchvision,
)
from .conversion import AdapterOptions, ConvertedCheckpoint, refuse_projection_layers
from .registry import register_adapter
from .state_dicts import drop, has_prefix, select, strip_prefix, top_level_state_dicts, unwrap

BACKBONE_PREFIX = "backbone."
"""Attribute lightly's benchmarks and examples give the backbone."""

HEAD_PREFIXES = ("projection_head.", "prediction_head.", "online_classifier.")
"""lightly's head modules, one of which sits next to the backbone in its models."""

_SEQUENTIAL_MARKER = BACKBONE_PREFIX + SEQUENTIAL_STEM
_NOT_LIGHTLY = ("meta", "classy_state_dict")


def detect_lightly(raw: Mapping[str, Any]) -> bool:
    """Whether the state dict has ``backbone.`` keys plus a lightly head or Sequential indices.

    solo-learn files (with ``classifier.weight``) and mmselfsup files (with ``meta``)
    also use ``backbone.``; their own markers exclude them here.
    """
    if any(key in raw for key in _NOT_LIGHTLY):
        return False
    try:
        state_dict = unwrap(raw)
    except ValueError:
        return False
    if "classifier.weight" in state_dict or not has_prefix(state_dict, BACKBONE_PREFIX):
        return False
    return _SEQUENTIAL_MARKER in state_dict or any(
        has_prefix(state_dict, head) for head in HEAD_PREFIXES
    )


@register_adapter(
    "lightly",
    detect=detect_lightly,
    signature="a state dict with 'backbone.' keys and lightly heads ('projection_head.', "
    "'prediction_head.', 'online_classifier.') or Sequential indices ('backbone.0.weight')",
)
def convert_lightly(raw: Mapping[str, Any], options: AdapterOptions) -> ConvertedCheckpoint:
    """Extract the ResNet backbone of a lightly model.

    Args:
        raw: The checkpoint mapping: a Lightning checkpoint or a plain state dict.
        options: Conversion options; lightly's projection heads are not kept.

    Returns:
        The backbone with torchvision names, the architecture inferred from its shapes,
        ImageNet preprocessing, and every other key as ``dropped``.

    Raises:
        ValueError: If there is no ``backbone.`` key or a Sequential index is unknown.
    """
    refuse_projection_layers(options, "lightly")
    container, state_dict = _lightly_state_dict(raw)
    # lightly's SimCLR tutorial saves the Sequential backbone itself, under a key of its own.
    sequential_alone = SEQUENTIAL_STEM in state_dict and not has_prefix(state_dict, BACKBONE_PREFIX)
    prefix = "" if sequential_alone else BACKBONE_PREFIX
    backbone = strip_prefix(select(state_dict, prefix), prefix)
    if not backbone:
        raise ValueError(f"no keys under {BACKBONE_PREFIX!r} (first keys: {list(state_dict)[:5]})")
    renaming = None
    if SEQUENTIAL_STEM in backbone:
        backbone, renaming = sequential_to_torchvision(backbone, prefix), RESNET_SEQUENTIAL
    kept = drop(backbone, CLASSIFIER_PREFIX)
    dropped = [key for key in state_dict if not key.startswith(prefix)]
    dropped += [f"{prefix}{key}" for key in select(backbone, CLASSIFIER_PREFIX)]
    return ConvertedCheckpoint(
        state_dict=kept,
        backbone=infer_resnet_spec(kept),
        preprocessing=Preprocessing(),
        dropped=tuple(dropped),
        expected_prefix=prefix or None,
        container=container,
        renaming=renaming,
    )


def _lightly_state_dict(raw: Mapping[str, Any]) -> tuple[str | None, dict[str, Tensor]]:
    """The state dict and the top-level key it is under, ``None`` for a usual container.

    Lightning checkpoints keep it under ``state_dict``; lightly's tutorial under a name
    of its own (``resnet18_parameters``), as the file's only mapping of tensors.
    """
    try:
        return None, unwrap(raw)
    except ValueError:
        found = top_level_state_dicts(raw)
        if len(found) != 1:
            raise
        return next(iter(found.items()))
