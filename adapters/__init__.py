"""Checkpoint adapters: turn self-supervised checkpoints into loadable backbones.

Importing this package registers the built-in adapters (``torchvision``, ``mile_ssl``).
Load a checkpoint with :func:`load_backbone`; add a format with
:func:`register_adapter`.
"""

from .conversion import AdapterOptions, ConvertedCheckpoint, refuse_projection_layers
from .diagnostics import describe_mismatch
from .errors import CheckpointError, CheckpointMismatchError
from .loading import LoadedBackbone, load_backbone
from .mile_ssl_format import FORMAT as MILE_SSL_FORMAT
from .mile_ssl_format import VERSION as MILE_SSL_FORMAT_VERSION
from .mile_ssl_format import convert_mile_ssl, detect_mile_ssl, save_backbone_checkpoint
from .reading import read_checkpoint, register_reader
from .registry import Adapter, available_adapters, get_adapter, register_adapter, unregister_adapter
from .state_dicts import DEFAULT_CONTAINER_KEYS, drop, select, strip_prefix, unwrap
from .torchvision_format import convert_torchvision, detect_torchvision

__all__ = [
    "AdapterOptions",
    "refuse_projection_layers",
    "register_reader",
    "DEFAULT_CONTAINER_KEYS",
    "MILE_SSL_FORMAT",
    "MILE_SSL_FORMAT_VERSION",
    "Adapter",
    "CheckpointError",
    "CheckpointMismatchError",
    "ConvertedCheckpoint",
    "LoadedBackbone",
    "available_adapters",
    "convert_mile_ssl",
    "convert_torchvision",
    "describe_mismatch",
    "detect_mile_ssl",
    "detect_torchvision",
    "drop",
    "get_adapter",
    "load_backbone",
    "mile_ssl_format",
    "read_checkpoint",
    "register_adapter",
    "save_backbone_checkpoint",
    "select",
    "strip_prefix",
    "torchvision_format",
    "unregister_adapter",
    "unwrap",
]


def _register_builtin_adapters() -> None:
    """Import every module of this package: each registers its adapters on import."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_register_builtin_adapters()
