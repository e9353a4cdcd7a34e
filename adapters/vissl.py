"""VISSL checkpoints (facebookresearch/vissl).

VISSL's checkpoints (``vissl/utils/checkpoint.py``) nest the model as
``classy_state_dict -> base_model -> model -> {trunk, heads}`` next to
``phase_idx``, ``iteration``, ``loss`` and the optimizer state. Model-zoo exports and
``extra_scripts/convert_vissl_to_torchvision.py``'s input also come as
``{"model_state_dict": <trunk>}``. The ResNe(X)t trunk (``models/trunks/resnext.py``)
wraps torchvision's modules in ``_feature_blocks`` (an ``nn.ModuleDict`` of ``conv1``,
``bn1``, ``conv1_relu``, ``maxpool``, ``layer1``..``layer4``, ``avgpool``,
``flatten``), so its keys are ``_feature_blocks.<torchvision resnet key>``: removing the
prefix gives torchvision names, and the depth is read from the shapes. The heads (SwAV
prototypes, SimCLR MLPs, linear classifiers, ...) are dropped and listed as
``heads.<key>``.

Trunks other than ResNe(X)t (RegNet, ViT, ...) do not use torchvision names and need a
converter. VISSL's ImageNet recipes normalise with the ImageNet statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from mile_ssl.networks.preprocessing import Preprocessing

from .architectures import CLASSIFIER_PREFIX, infer_resnet_spec
from .conversion import AdapterOptions, ConvertedCheckpoint, refuse_projection_layers
from .registry import register_adapter
from .state_dicts import extract, has_prefix, unwrap

CLASSY_PATH = ("classy_state_dict", "base_model", "model")
"""Where training checkpoints keep ``{"trunk", "heads"}``."""

MODEL_STATE_KEY = "model_state_dict"
"""Top-level key of exported trunks."""

TRUNK_PREFIX = "_feature_blocks."
"""The ``nn.ModuleDict`` VISSL's ResNe(X)t trunk keeps torchvision's modules in."""


def _classy_model(raw: Mapping[str, Any]) -> Mapping[str, Any] | None:
    node: Any = raw
    for key in CLASSY_PATH:
        if not isinstance(node, Mapping) or not isinstance(node.get(key), Mapping):
            return None
        node = node[key]
    return node if isinstance(node.get("trunk"), Mapping) else None


def detect_vissl(raw: Mapping[str, Any]) -> bool:
    """Whether ``raw`` nests a VISSL trunk, or exports one under ``model_state_dict``."""
    if _classy_model(raw) is not None:
        return True
    exported = raw.get(MODEL_STATE_KEY)
    return isinstance(exported, Mapping) and has_prefix(exported, TRUNK_PREFIX)


def _trunk_and_heads(raw: Mapping[str, Any]) -> tuple[dict[str, Tensor], list[str], str]:
    """The trunk's tensors, the heads' keys, and where the trunk was found."""
    model = _classy_model(raw)
    if model is not None:
        heads = model.get("heads")
        head_keys = [str(key) for key in heads] if isinstance(heads, Mapping) else []
        return unwrap(model, keys=("trunk",)), head_keys, "trunk."
    if isinstance(raw.get(MODEL_STATE_KEY), Mapping):
        return unwrap(raw, keys=(MODEL_STATE_KEY,)), [], ""
    raise ValueError(
        f"no VISSL model found: expected {'/'.join(CLASSY_PATH)}/trunk or {MODEL_STATE_KEY!r} "
        f"(top-level keys: {list(raw)[:10]})"
    )


@register_adapter(
    "vissl",
    detect=detect_vissl,
    signature="'classy_state_dict'/'base_model'/'model'/'trunk', or 'model_state_dict' with "
    "'_feature_blocks.' keys",
)
def convert_vissl(raw: Mapping[str, Any], options: AdapterOptions) -> ConvertedCheckpoint:
    """Extract the ResNe(X)t trunk of a VISSL checkpoint.

    Args:
        raw: The checkpoint mapping, in either nesting.
        options: Conversion options; VISSL heads are not kept.

    Returns:
        The trunk with torchvision names, the architecture inferred from its shapes,
        ImageNet preprocessing, and the heads (``heads.<key>``) and any trunk key
        outside ``_feature_blocks`` as ``dropped``.

    Raises:
        ValueError: If no trunk is found or it has no ``_feature_blocks.`` keys.
    """
    refuse_projection_layers(options, "vissl")
    trunk, heads, where = _trunk_and_heads(raw)
    if not has_prefix(trunk, TRUNK_PREFIX):
        raise ValueError(
            f"the VISSL trunk has no {TRUNK_PREFIX!r} keys, so it is not a ResNe(X)t trunk "
            f"(first keys: {list(trunk)[:5]})"
        )
    kept, left = extract(trunk, TRUNK_PREFIX, CLASSIFIER_PREFIX)
    dropped = [f"{where}{key}" for key in left] + [f"heads.{key}" for key in heads]
    return ConvertedCheckpoint(
        state_dict=kept,
        backbone=infer_resnet_spec(kept),
        preprocessing=Preprocessing(),
        dropped=tuple(dropped),
        expected_prefix=f"{where}{TRUNK_PREFIX}",
    )
