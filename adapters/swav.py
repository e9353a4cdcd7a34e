"""SwAV, DeepCluster-v2 and SeLa-v2 checkpoints (facebookresearch/swav).

SwAV (Caron et al., 2020, "Unsupervised Learning of Visual Features by Contrasting
Cluster Assignments") and the DeepCluster-v2 / SeLa-v2 re-implementations of the same
repository share ``src/resnet50.py``. The released ``*_pretrain.pth.tar`` files are
plain state dicts of the DDP-wrapped model; training checkpoints nest the same dict
under ``state_dict`` next to ``epoch`` and ``optimizer``. Keys are
``module.<torchvision resnet key>`` plus the heads ``module.projection_head.{0,1,3}.*``
(linear, BatchNorm, linear) and ``module.prototypes.weight`` (SwAV, SeLa-v2) or
``module.prototypes.prototypes{0,1,2}.weight`` (DeepCluster-v2's ``MultiPrototypes``).

The backbone matches torchvision's ResNet-50 in names and function: the repository
pads the input by one pixel with ``nn.ConstantPad2d`` and gives ``conv1`` a padding of
2 instead of 3, which is the same zero padding of 3. The heads are dropped.

The wide models ``resnet50w2`` / ``w4`` / ``w5`` widen the stem and every stage (64 x w
channels after ``conv1``) and have no torchvision counterpart (``wide_resnet50_2``
only widens the bottlenecks' 3x3 convolutions), so they are refused with the width
found. SwAV normalises inputs with the ImageNet mean and standard deviation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from mile_ssl.networks.preprocessing import IMAGENET_MEAN, Preprocessing

from .architectures import STANDARD_STEM_WIDTH, infer_resnet_spec, resnet_stem_width
from .conversion import AdapterOptions, ConvertedCheckpoint, refuse_projection_layers
from .registry import register_adapter
from .state_dicts import DATA_PARALLEL_PREFIX, drop, has_prefix, strip_prefix, unwrap

HEAD_PREFIXES = ("projection_head.", "prototypes.")
"""SwAV's projection MLP and prototype layer(s), relative to the model."""
SWAV_PREPROCESSING = Preprocessing(mean=IMAGENET_MEAN, std=(0.228, 0.224, 0.225))
"""The normalisation of SwAV's own evaluation code (``eval_linear.py``, ``eval_semisup.py``):
ImageNet's mean, and 0.228 rather than torchvision's 0.229 for the red channel."""


def _model_prefix(state_dict: Mapping[str, Tensor]) -> str | None:
    """``"module."`` or ``""``: where the ResNet's ``conv1`` sits, if anywhere."""
    return next(
        (prefix for prefix in (DATA_PARALLEL_PREFIX, "") if f"{prefix}conv1.weight" in state_dict),
        None,
    )


def detect_swav(raw: Mapping[str, Any]) -> bool:
    """Whether the state dict is a ResNet with SwAV's prototypes or projection head."""
    try:
        state_dict = unwrap(raw)
    except ValueError:
        return False
    prefix = _model_prefix(state_dict)
    return prefix is not None and any(
        has_prefix(state_dict, f"{prefix}{head}") for head in HEAD_PREFIXES
    )


@register_adapter(
    "swav",
    detect=detect_swav,
    signature="a ResNet state dict ('module.conv1.weight', ...) with 'module.prototypes.' "
    "or 'module.projection_head.' keys (SwAV, DeepCluster-v2, SeLa-v2)",
)
def convert_swav(raw: Mapping[str, Any], options: AdapterOptions) -> ConvertedCheckpoint:
    """Extract the ResNet of a SwAV / DeepCluster-v2 / SeLa-v2 checkpoint.

    Args:
        raw: The checkpoint mapping: a state dict, possibly under ``state_dict``.
        options: Conversion options; the projection head is not kept.

    Returns:
        The ResNet tensors with torchvision names, the architecture inferred from their
        shapes, ImageNet preprocessing, and the heads as ``dropped``.

    Raises:
        ValueError: If there is no ``conv1`` or the model is one of the wide
            ``resnet50w{2,4,5}``.
    """
    refuse_projection_layers(options, "swav")
    state_dict = unwrap(raw)
    prefix = _model_prefix(state_dict)
    if prefix is None:
        raise ValueError(
            f"no ResNet found: expected 'module.conv1.weight' or 'conv1.weight' (first keys: "
            f"{list(state_dict)[:5]})"
        )
    model = strip_prefix(state_dict, prefix) if prefix else dict(state_dict)
    width = resnet_stem_width(model)
    if width != STANDARD_STEM_WIDTH and width is not None:
        raise ValueError(
            f"this is SwAV's resnet50w{width // STANDARD_STEM_WIDTH} ({width} channels after "
            f"conv1 instead of {STANDARD_STEM_WIDTH}); the wide SwAV ResNets widen the stem "
            "and every stage and have no torchvision counterpart, so they are not supported"
        )
    backbone = model
    for head in HEAD_PREFIXES:
        backbone = drop(backbone, head)
    return ConvertedCheckpoint(
        state_dict=backbone,
        backbone=infer_resnet_spec(backbone),
        preprocessing=SWAV_PREPROCESSING,
        dropped=tuple(f"{prefix}{key}" for key in model if key not in backbone),
        expected_prefix=prefix or None,
    )
