"""solo-learn pretraining checkpoints (vturrisi/solo-learn) and their ``args.json``.

solo-learn (da Costa et al., JMLR 2022) trains every method as a Lightning module
(``solo/methods/base.py``), so a run folder holds ``<name>-<id>-ep=<N>.ckpt`` (a
Lightning checkpoint: ``state_dict`` next to ``epoch``, ``global_step``,
``optimizer_states``, ...) and the run's configuration as ``args.json``
(``solo/utils/checkpointer.py``). The state dict holds the backbone as ``backbone.*``
(``encoder.*`` in releases before 1.0), the online linear probe ``classifier.*``, and
method parts such as ``projector.*``, ``predictor.*``, ``momentum_backbone.*``,
``momentum_projector.*``, ``momentum_classifier.*``; all but the backbone are dropped.

The architecture is not in the checkpoint but in ``args.json``: ``method``,
``backbone: {name, kwargs}`` and ``data: {dataset}`` (older releases: top-level
``backbone`` or ``encoder`` strings and ``dataset``). The adapter reads it from the
checkpoint's folder (:attr:`AdapterOptions.source`); without it the user must name the
architecture (``backbone.name``). Mapping:

* ``resnet18`` / ``resnet50``: torchvision's models with ``fc`` replaced by an
  identity, as ``torchvision:resnet18`` / ``torchvision:resnet50``. For CIFAR-10/100
  runs solo-learn replaces ``conv1`` by a 3x3 stride-1 convolution and removes the
  max-pool, built here with ``cifar_stem=True``. solo-learn pads that convolution by 2
  pixels (34x34 feature maps for 32x32 CIFAR images), so the spec also sets
  ``cifar_stem_padding=2``: the same weights with padding 1 would compute other features.
* ``vit_tiny`` / ``vit_small`` / ``vit_base`` / ``vit_large``: timm's
  ``VisionTransformer`` with timm's own parameter names (``solo/backbones/vit``), as
  ``timm:vit_<size>_patch<P>_224``; patch size and image size are read from the
  weights. The MoCo-v3 and MAE variants of ViT-Tiny/Small use 12 attention heads, so
  those runs get ``num_heads=12``.
* Swin, PoolFormer, ConvNeXt and solo-learn's own WideResNets are not supported: name a
  matching backbone explicitly, or convert the weights.

Preprocessing follows solo-learn's table (``build_transform_pipeline`` in
``solo/data/pretrain_dataloader.py``): CIFAR-10, CIFAR-100 and STL-10 statistics for
those datasets, ImageNet's for ImageNet(-100), and otherwise the ``mean`` / ``std`` of
the run's first augmentation pipeline, else ImageNet's.

Lightning checkpoints that pickle the run config (an OmegaConf object in
``hyper_parameters``) are refused by the safe reader; re-save ``{"state_dict": ...}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from mile_ssl.networks.backbones import BackboneSpec
from mile_ssl.networks.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

from .architectures import CLASSIFIER_PREFIX, VIT_HEAD_PREFIX, infer_vit_spec
from .conversion import AdapterOptions, ConvertedCheckpoint, refuse_projection_layers
from .prefixed import backbone_prefix
from .registry import register_adapter
from .state_dicts import extract, first_prefix, unwrap

ARGS_FILE = "args.json"
"""The run configuration solo-learn's ``Checkpointer`` writes beside the checkpoints."""

BACKBONE_PREFIXES = ("backbone.", "encoder.")
"""The backbone in current releases, and in releases before 1.0."""

CLASSIFIER_KEY = "classifier.weight"
"""solo-learn's online linear probe, present in every method's state dict."""

CIFAR_DATASETS = frozenset({"cifar10", "cifar100"})
"""Datasets for which solo-learn swaps the ResNet stem for a 3x3 stride-1 one."""

CIFAR_STEM_KWARGS: dict[str, Any] = {"cifar_stem": True, "cifar_stem_padding": 2}
"""Builder arguments of the CIFAR stem (see the module notes on its padding)."""

RESNETS = frozenset({"resnet18", "resnet50"})
VITS = frozenset({"vit_tiny", "vit_small", "vit_base", "vit_large"})

TWELVE_HEAD_VITS = frozenset(
    {(method, vit) for method in ("mocov3", "mae") for vit in ("vit_tiny", "vit_small")}
)
"""(method, backbone) pairs whose solo-learn ViT has 12 heads where timm's has fewer."""

TWELVE_HEADS = 12

NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4914, 0.4823, 0.4466), (0.247, 0.243, 0.261)),
    "imagenet100": (IMAGENET_MEAN, IMAGENET_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}
"""solo-learn's per-dataset input statistics, which take precedence over the config's."""


def _solo_state_dict(raw: Mapping[str, Any]) -> Mapping[str, Tensor] | None:
    """The state dict of a file with solo-learn's backbone keys, else ``None``.

    mmselfsup files (a top-level ``meta``) also use ``backbone.`` and are excluded.
    """
    if "meta" in raw:
        return None
    try:
        state_dict = unwrap(raw)
    except ValueError:
        return None
    return state_dict if first_prefix(state_dict, BACKBONE_PREFIXES) is not None else None


def detect_solo_learn(raw: Mapping[str, Any]) -> bool:
    """Whether the state dict has ``backbone.`` (or ``encoder.``) keys and ``classifier``.

    The online ``classifier`` tells solo-learn apart from lightly (whose probe is
    ``online_classifier``).
    """
    state_dict = _solo_state_dict(raw)
    return state_dict is not None and CLASSIFIER_KEY in state_dict


def detect_solo_learn_run(raw: Mapping[str, Any]) -> bool:
    """Whether the state dict has solo-learn's backbone keys, checked beside ``args.json``.

    In a solo-learn run folder the ``args.json`` is the evidence, so the online
    classifier need not be there (checkpoints re-saved without it).
    """
    return _solo_state_dict(raw) is not None


def read_run_args(checkpoint: Path) -> dict[str, Any] | None:
    """The ``args.json`` in ``checkpoint``'s folder, or ``None`` if there is none.

    Raises:
        ValueError: If the file exists but is not a JSON object (naming the file).
    """
    path = checkpoint.parent / ARGS_FILE
    if not path.is_file():
        return None
    try:
        args = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read solo-learn run config {path}: {exc}") from exc
    if not isinstance(args, dict):
        raise ValueError(
            f"solo-learn run config {path} holds a {type(args).__name__}, not an object"
        )
    return args


def _run_field(args: Mapping[str, Any], *paths: str) -> Any:
    """The first of the dotted ``paths`` present in ``args`` (current, then legacy layout)."""
    for path in paths:
        node: Any = args
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            if node is not None and not isinstance(node, Mapping):
                return node
    return None


def backbone_name(args: Mapping[str, Any]) -> str | None:
    """The solo-learn backbone name of a run (``backbone.name``, or legacy fields)."""
    name = _run_field(args, "backbone.name", "backbone", "encoder")
    return name if isinstance(name, str) else None


def dataset_name(args: Mapping[str, Any]) -> str | None:
    """The dataset of a run (``data.dataset``, or the legacy top-level ``dataset``)."""
    name = _run_field(args, "data.dataset", "dataset")
    return name if isinstance(name, str) else None


def run_preprocessing(args: Mapping[str, Any]) -> Preprocessing:
    """The input statistics a run was trained with (see the module notes)."""
    dataset = dataset_name(args)
    if dataset in NORMALISATION:
        mean, std = NORMALISATION[dataset]
        return Preprocessing(mean=mean, std=std)
    pipelines = args.get("augmentations")
    first = pipelines[0] if isinstance(pipelines, list) and pipelines else None
    if isinstance(first, Mapping) and "mean" in first and "std" in first:
        return Preprocessing(
            mean=tuple(float(v) for v in first["mean"]), std=tuple(float(v) for v in first["std"])
        )
    return Preprocessing()


def run_spec(
    args: Mapping[str, Any], state_dict: Mapping[str, Tensor], where: Path
) -> BackboneSpec:
    """The backbone of a run, from its ``args.json`` and the weights' shapes.

    Raises:
        ValueError: If the backbone is missing or not supported, or the weights do not
            fit the named ViT (naming ``where``, the ``args.json``).
    """
    name = backbone_name(args)
    if name in RESNETS:
        kwargs = dict(CIFAR_STEM_KWARGS) if dataset_name(args) in CIFAR_DATASETS else {}
        return BackboneSpec(f"torchvision:{name}", kwargs)
    if name in VITS:
        method = str(args.get("method", "")).lower()
        heads = TWELVE_HEADS if (method, name) in TWELVE_HEAD_VITS else None
        spec = infer_vit_spec(state_dict, num_heads=heads)
        size = name.removeprefix("vit_")
        if spec is None or not spec.name.startswith(f"timm:vit_{size}_"):
            raise ValueError(
                f"{where} names backbone {name!r} but the weights are "
                f"{'not a timm ViT' if spec is None else spec.name}"
            )
        return spec
    if name is None:
        raise ValueError(f"{where} does not name the backbone (no 'backbone.name')")
    raise ValueError(
        f"solo-learn backbone {name!r} (from {where}) is not supported; supported: "
        f"{sorted(RESNETS | VITS)}. Set backbone.name to a matching architecture to load it"
    )


@register_adapter(
    "solo_learn",
    detect=detect_solo_learn,
    signature="a Lightning 'state_dict' with 'backbone.' (or legacy 'encoder.') keys and "
    "solo-learn's online 'classifier.weight' (or an args.json beside the file); no 'meta'",
    run_file=ARGS_FILE,
    detect_in_run=detect_solo_learn_run,
)
def convert_solo_learn(raw: Mapping[str, Any], options: AdapterOptions) -> ConvertedCheckpoint:
    """Extract the backbone of a solo-learn checkpoint, with its architecture from ``args.json``.

    Args:
        raw: The checkpoint mapping (a Lightning checkpoint or its state dict).
        options: ``source`` locates ``args.json``; ``backbone`` is used when there is
            none (or it names an unsupported backbone); no projection head is kept.

    Returns:
        The backbone tensors, the architecture and preprocessing of the run (``None``
        architecture when only the user's ``backbone`` can say it), and every other
        key as ``dropped``.

    Raises:
        ValueError: If there is no backbone, or neither ``args.json`` nor the user
            names a supported architecture.
    """
    refuse_projection_layers(options, "solo_learn")
    state_dict = unwrap(raw)
    prefix = backbone_prefix(state_dict, BACKBONE_PREFIXES)
    backbone, dropped = extract(state_dict, prefix, CLASSIFIER_PREFIX, VIT_HEAD_PREFIX)
    spec, preprocessing = _run_architecture(backbone, options)
    return ConvertedCheckpoint(
        state_dict=backbone,
        backbone=spec,
        preprocessing=preprocessing,
        dropped=dropped,
        expected_prefix=prefix,
    )


def _run_architecture(
    backbone: Mapping[str, Tensor], options: AdapterOptions
) -> tuple[BackboneSpec | None, Preprocessing]:
    """Architecture and preprocessing from ``args.json``, or ``None`` if the user names it."""
    source = options.source
    args = read_run_args(source) if source is not None else None
    if source is None or args is None:
        if options.backbone is None:
            where = source.parent if source is not None else "the checkpoint's folder"
            raise ValueError(
                f"no {ARGS_FILE} in {where}: solo-learn keeps the architecture in the run's "
                f"{ARGS_FILE}; put it back next to the checkpoint or set backbone.name "
                "(e.g. 'torchvision:resnet18' with cifar_stem for CIFAR runs)"
            )
        return None, Preprocessing()
    try:
        spec: BackboneSpec | None = run_spec(args, backbone, source.parent / ARGS_FILE)
    except ValueError:
        if options.backbone is None:
            raise
        spec = None
    return spec, run_preprocessing(args)
