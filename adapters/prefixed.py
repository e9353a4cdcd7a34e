"""Declaring an adapter for a format that keeps its backbone under a key prefix.

Many self-supervised formats store the network they train as ``<prefix><name>`` beside
heads, momentum encoders and queues (MoCo's ``module.encoder_q.``, OpenMMLab's and
solo-learn's ``backbone.``). Their conversions share one skeleton: find the prefix or
say where it was looked for, keep what is under it without the classifier, list the
rest as dropped, and name the architecture. :func:`register_prefixed_adapter` writes
that skeleton once, so such a format is declared in a few lines and all of them report
a missing backbone alike; :func:`backbone_prefix` serves formats that add their own
twist (an architecture from ``args.json``, a head that depends on the network).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from mile_ssl.networks.backbones import BackboneSpec
from mile_ssl.networks.preprocessing import Preprocessing

from .architectures import CLASSIFIER_PREFIX, infer_resnet_spec, torchvision_arch_spec
from .conversion import (
    AdapterOptions,
    ConvertedCheckpoint,
    ConvertFn,
    DetectFn,
    refuse_projection_layers,
)
from .errors import SHOWN
from .registry import register_adapter
from .state_dicts import DEFAULT_CONTAINER_KEYS, extract, first_prefix, unwrap

RESNET_STEM_KEY = "conv1.weight"
"""The key that shows a ResNet sits directly under a prefix (not nested one level down)."""

ArchitectureFn = Callable[[Mapping[str, Any], Mapping[str, Tensor]], BackboneSpec | None]
"""The architecture of a backbone, from the raw checkpoint and the backbone's tensors."""

HeadsFn = Callable[[Mapping[str, Tensor], str], tuple[str, ...]]
"""The heads to leave out, from the state dict and the prefix the backbone was found under."""


def resnet_from_shapes(
    raw: Mapping[str, Any], backbone: Mapping[str, Tensor]
) -> BackboneSpec | None:
    """The torchvision ResNet the backbone's shapes name; for files that state nothing."""
    return infer_resnet_spec(backbone)


def resnet_from_arch(raw: Mapping[str, Any], backbone: Mapping[str, Tensor]) -> BackboneSpec | None:
    """The torchvision model the file's ``arch`` names, else the one the shapes name."""
    return torchvision_arch_spec(raw.get("arch")) or infer_resnet_spec(backbone)


def find_backbone_prefix(
    state_dict: Mapping[str, Tensor], prefixes: tuple[str, ...], *, direct_resnet: bool = False
) -> str | None:
    """The first of ``prefixes`` the backbone sits under, or ``None`` (for ``detect``).

    Args:
        state_dict: The checkpoint's tensors.
        prefixes: Where the format may keep the backbone, preferred first.
        direct_resnet: Require a ResNet's ``conv1.weight`` right under the prefix rather
            than any key: MoCo's ``encoder_q.`` is the ResNet itself, whereas
            mmselfsup 0.x nests ``encoder_q.0.`` under the same name.
    """
    if not direct_resnet:
        return first_prefix(state_dict, prefixes)
    return next((prefix for prefix in prefixes if prefix + RESNET_STEM_KEY in state_dict), None)


def backbone_prefix(
    state_dict: Mapping[str, Tensor],
    prefixes: tuple[str, ...],
    *,
    direct_resnet: bool = False,
    container: str | None = None,
) -> str:
    """The first of ``prefixes`` the backbone sits under (see :func:`find_backbone_prefix`).

    Args:
        state_dict: The checkpoint's tensors.
        prefixes: Where the format may keep the backbone, preferred first.
        direct_resnet: See :func:`find_backbone_prefix`.
        container: The top-level key ``state_dict`` was taken from, named in the error
            when the format reads only that one.

    Raises:
        ValueError: If the backbone is under none of them; the message names where it
            was looked for and the first keys found instead.
    """
    prefix = find_backbone_prefix(state_dict, prefixes, direct_resnet=direct_resnet)
    if prefix is not None:
        return prefix
    where = repr(prefixes[0]) if len(prefixes) == 1 else str(list(prefixes))
    if container is not None:
        where += f" in {container!r}"
    first_keys = list(state_dict)[:SHOWN]
    if direct_resnet:
        raise ValueError(
            f"no ResNet under {where} (expected e.g. {prefixes[0] + RESNET_STEM_KEY!r}; "
            f"first keys: {first_keys})"
        )
    raise ValueError(f"no keys under {where} (first keys: {first_keys})")


def register_prefixed_adapter(
    name: str,
    *,
    detect: DetectFn,
    signature: str,
    prefixes: tuple[str, ...],
    heads: tuple[str, ...] | HeadsFn = (CLASSIFIER_PREFIX,),
    container: str | None = None,
    direct_resnet: bool = False,
    architecture: ArchitectureFn = resnet_from_shapes,
) -> ConvertFn:
    """Register the adapter of a format that keeps its backbone under a key prefix.

    The conversion refuses projection layers, finds the state dict and the first of
    ``prefixes`` present (:func:`backbone_prefix`), keeps the tensors under it without
    ``heads``, lists every other key as dropped, and reports ImageNet preprocessing.

    Args:
        name: Registry name of the format.
        detect: Cheap predicate on the raw checkpoint mapping; the conversion is
            attributed to its module, which declares the format.
        signature: What ``detect`` looks for, in words.
        prefixes: Where the format may keep the backbone, preferred first.
        heads: Prefixes, relative to the backbone, of heads to leave out; or a function
            choosing them from what was found, for formats whose encoder may be a
            ResNet (``fc.``) or a ViT (``head.``).
        container: The one top-level key holding the state dict; ``None`` searches
            the usual containers (:data:`~.state_dicts.DEFAULT_CONTAINER_KEYS`).
        direct_resnet: See :func:`find_backbone_prefix`.
        architecture: Names the architecture from the raw mapping and the backbone.

    Returns:
        The registered conversion, a plain function that tests can call directly.
    """
    containers = DEFAULT_CONTAINER_KEYS if container is None else (container,)

    def convert(raw: Mapping[str, Any], options: AdapterOptions) -> ConvertedCheckpoint:
        refuse_projection_layers(options, name)
        state_dict = unwrap(raw, keys=containers)
        prefix = backbone_prefix(
            state_dict, prefixes, direct_resnet=direct_resnet, container=container
        )
        left_out = heads(state_dict, prefix) if callable(heads) else heads
        kept, dropped = extract(state_dict, prefix, *left_out)
        return ConvertedCheckpoint(
            state_dict=kept,
            backbone=architecture(raw, kept),
            preprocessing=Preprocessing(),
            dropped=dropped,
            expected_prefix=prefix,
        )

    # Registry messages and tracebacks name the format's module and function, not this one.
    convert.__module__ = detect.__module__
    convert.__name__ = convert.__qualname__ = f"convert_{name}"
    convert.__doc__ = f"Extract the backbone under {list(prefixes)} of a {name} checkpoint."
    return register_adapter(name, detect=detect, signature=signature)(convert)
