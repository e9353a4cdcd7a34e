"""DeepMind's official BYOL checkpoints (deepmind-research/byol), read without running them.

BYOL (Grill et al., 2020, "Bootstrap Your Own Latent") was released as JAX/Haiku code
whose checkpoints (``pretrain_res50x1.pkl``, ``pretrain_res200x2.pkl`` and the ablation
files) are ``dill`` pickles of ``{"step", "rng", "experiment_state"}``, where the
experiment state is a ``_ByolExperimentState`` namedtuple of ``online_params``,
``target_params``, ``online_state``, ``target_state`` and ``opt_state``
(``byol/byol_experiment.py``). Parameters map Haiku module names
(``res_net50/~/block_group_0/~/block_0/~/conv_0``) to ``{"w" | "b" | "scale" |
"offset": array}``; the BatchNorm state maps ``<batchnorm>/~/mean_ema`` and
``/~/var_ema`` to ``{"average", "hidden", "counter"}``.

Reading: unpickling such a file normally imports ``byol``, ``haiku``, ``optax`` and
``dill`` and may call anything the file names. :class:`SafeUnpickler` instead rebuilds
only numpy arrays and builtin containers, turns every other class or function the pickle
names into an inert :class:`PickledObject` and so executes nothing from the file. The
``.pkl`` reader converts numeric arrays to tensors.

Converting: the online encoder is kept, because BYOL evaluates (linear evaluation,
fine-tuning) the online network and discards the target one. The projector, predictor,
the online linear classifier, the target network and the optimiser state are dropped and
listed in ``dropped``. Haiku's ResNet v1 maps onto torchvision's ResNet-50/101/152 name
for name (kernels HWIO -> OIHW, BatchNorm ``scale``/``offset`` and EMA ``average`` ->
weight/bias/running stats; BYOL's BatchNorm uses ``eps=1e-5`` like torchvision), but
Haiku convolutions and max-pooling use TF "SAME" padding, so the backbone is built with
``tf_same_padding=True`` (:mod:`mile_ssl.tf_padding`). To convert the target network
instead, call :func:`convert_haiku_resnet` on ``experiment_state.target_params`` and
``target_state``.

BYOL feeds the network images in [0, 1] normalised with the ImageNet mean and standard
deviation (``normalize_images`` in ``byol/utils/dataset.py``), which is
:class:`~mile_ssl.preprocessing.Preprocessing`'s default.

ResNet-200 (x2) and the other wide ablation networks have no torchvision counterpart and
are refused with the architecture found. BYOL weights already converted to torchvision
names (plain ``.pth`` state dicts) are handled by the ``torchvision`` adapter; those
conversions target symmetric PyTorch padding and are loaded without "SAME" padding.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import torch
from torch import Tensor

from mile_ssl.backbones import BackboneSpec
from mile_ssl.preprocessing import Preprocessing

from .registry import (
    AdapterOptions,
    CheckpointError,
    ConvertedCheckpoint,
    _read_torch,
    register_adapter,
    register_reader,
)

__all__ = [
    "HaikuResNet",
    "PickledObject",
    "RefusedPickleError",
    "SafeUnpickler",
    "convert_byol",
    "convert_haiku_resnet",
    "detect_byol",
    "read_pickle",
]

EXPERIMENT_STATE_KEY = "experiment_state"
"""Top-level key of BYOL's checkpoints (``byol/utils/checkpointing.py``)."""

NETWORK_FIELDS: tuple[tuple[str, str], ...] = (
    ("online_params", "online_state"),
    ("backbone_params", "backbone_state"),
)
"""Experiment-state fields holding the encoder: BYOL pre-training keeps the online network
in ``online_*`` (``_ByolExperimentState``), BYOL's linear evaluation in ``backbone_*``
(``_EvalExperimentState``)."""

HEAD_MODULES = frozenset({"projector", "predictor", "classifier", "logits"})
"""Haiku modules of BYOL that are not part of the encoder: the projection and prediction
MLPs, the online linear classifier and a ResNet's own classifier."""

_KNOWN_NAMEDTUPLES: dict[str, tuple[str, ...]] = {
    "_ByolExperimentState": (
        "online_params",
        "target_params",
        "online_state",
        "target_state",
        "opt_state",
    ),
    "_EvalExperimentState": (
        "backbone_params",
        "classif_params",
        "backbone_state",
        "backbone_opt_state",
        "classif_opt_state",
    ),
}
"""Field order of BYOL's experiment-state namedtuples (``byol_experiment.py`` and
``eval_experiment.py``). A namedtuple pickled by reference records only its class name
and positional values, so the names must come from here."""

_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
"""First object of a pre-1.6 ``torch.save`` file (``torch.serialization.MAGIC_NUMBER``)."""

_SHOWN = 5


class RefusedPickleError(pickle.UnpicklingError):
    """The pickle asked for something :class:`SafeUnpickler` does not do."""


# --------------------------------------------------------------------------- reading


class PickledObject:
    """Inert stand-in for an object of a class or function the reader does not build.

    Instances record what the pickle would have passed on, and nothing is ever called
    with it: the constructor arguments (``pickled_args``, ``pickled_kwargs``), the state
    given to ``__setstate__`` (``pickled_state``), and items appended (``pickled_list``)
    or assigned (``pickled_dict``) by the list and dict opcodes. Each global the pickle
    names gets its own subclass whose ``pickled_name`` is the dotted name.

    Namedtuples pickle as their class plus positional values; a subclass created with
    ``pickled_fields`` (BYOL's experiment states, or dill's ``_create_namedtuple``) maps
    those names to the positional values, so ``state.online_params`` works.
    """

    pickled_name: ClassVar[str] = "?"
    pickled_fields: ClassVar[tuple[str, ...]] = ()

    pickled_args: tuple[Any, ...]
    pickled_kwargs: dict[str, Any]
    pickled_state: Any
    pickled_list: list[Any]
    pickled_dict: dict[Any, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObject:
        """Record the arguments; a stand-in executes nothing when called."""
        instance = super().__new__(cls)
        instance.pickled_args = args
        instance.pickled_kwargs = dict(kwargs)
        instance.pickled_state = None
        instance.pickled_list = []
        instance.pickled_dict = {}
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        del args, kwargs  # already recorded by __new__

    def __setstate__(self, state: Any) -> None:
        """Record the state of the ``BUILD`` opcode instead of applying it."""
        self.pickled_state = state

    def append(self, item: Any) -> None:
        """Record an item of the ``APPEND`` opcode."""
        self.pickled_list.append(item)

    def extend(self, items: Any) -> None:
        """Record the items of the ``APPENDS`` opcode."""
        self.pickled_list.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        """Record an entry of the ``SETITEM(S)`` opcodes."""
        self.pickled_dict[key] = value

    def __getattr__(self, name: str) -> Any:
        """Positional value of the namedtuple field ``name``."""
        fields = type(self).pickled_fields
        if name in fields:
            args = self.__dict__.get("pickled_args", ())
            index = fields.index(name)
            if index < len(args):
                return args[index]
            kwargs = self.__dict__.get("pickled_kwargs", {})
            if name in kwargs:
                return kwargs[name]
        raise AttributeError(
            f"{type(self).pickled_name} (an unbuilt stand-in) has no field {name!r}"
            + (f"; its fields are {list(fields)}" if fields else "")
        )

    def __repr__(self) -> str:
        return f"<unbuilt {type(self).pickled_name} stand-in>"


def _stand_in(qualified: str, fields: tuple[str, ...] = ()) -> type[PickledObject]:
    return type(
        "PickledObject",
        (PickledObject,),
        {"pickled_name": qualified, "pickled_fields": fields, "__module__": __name__},
    )


class _Allowed:
    """A callable the pickle may invoke, immutable so that ``BUILD`` cannot rewire it."""

    __slots__ = ("_function", "_name")
    _function: Callable[..., Any]
    _name: str

    def __init__(self, name: str, function: Callable[..., Any]) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_function", function)

    def __call__(self, *args: Any) -> Any:
        return self._function(*args)

    def __setattr__(self, name: str, value: Any) -> None:
        raise RefusedPickleError(f"the pickle tried to modify {self._name}")

    def __setstate__(self, state: Any) -> None:
        raise RefusedPickleError(f"the pickle tried to modify {self._name}")

    def __repr__(self) -> str:
        return f"<allowed {self._name}>"


def _reducer(value: object, protocol: int) -> Callable[..., Any]:
    """The function numpy's own pickling calls to rebuild ``value``."""
    reduced = value.__reduce_ex__(protocol)
    assert isinstance(reduced, tuple)
    return cast("Callable[..., Any]", reduced[0])


_NUMPY_RECONSTRUCT = _reducer(np.zeros(1), 2)
_NUMPY_SCALAR = _reducer(np.float32(0), 2)
_NUMPY_FROMBUFFER = _reducer(np.zeros(1), 5)


def _reconstruct_ndarray(subtype: Any, shape: Any, typecode: Any) -> Any:
    if subtype is not np.ndarray:
        raise RefusedPickleError(f"refusing to reconstruct an array of type {subtype!r}")
    return _NUMPY_RECONSTRUCT(subtype, shape, typecode)


def _frombuffer(buffer: Any, dtype: Any, *layout: Any) -> Any:
    if not isinstance(buffer, bytes | bytearray | pickle.PickleBuffer) or not isinstance(
        dtype, np.dtype
    ):
        raise RefusedPickleError("refusing an array built from a non-buffer")
    return _NUMPY_FROMBUFFER(buffer, dtype, *layout)


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    # Protocol 2 has no bytes opcode, so Python 3 pickles bytes (array data) as
    # _codecs.encode(str, "latin1"); no other codec is needed or allowed.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedPickleError(
            f"refusing _codecs.encode with {type(text).__name__} and encoding {encoding!r}"
        )
    return text.encode("latin-1")


def _create_array(function: Any, args: Any, state: Any, npdict: Any = None) -> Any:
    # dill (up to 0.3.x) pickles numpy arrays as
    # dill._dill._create_array(_reconstruct, args, state, __dict__).
    if function is not _RECONSTRUCT or not isinstance(args, tuple) or npdict:
        raise RefusedPickleError("refusing a dill array not built by numpy's _reconstruct")
    array = function(*args)
    array.__setstate__(state)
    return array


def _create_namedtuple(name: Any, fieldnames: Any, modulename: Any, *_: Any) -> type:
    # dill (0.3.x) pickles namedtuple classes by value, as
    # dill._dill._create_namedtuple(name, fieldnames, modulename[, defaults]).
    valid = (
        isinstance(name, str)
        and isinstance(modulename, str)
        and isinstance(fieldnames, tuple | list)
        and all(isinstance(field, str) for field in fieldnames)
    )
    if not valid:
        return _stand_in(f"{modulename!r}.{name!r}")
    return _stand_in(f"{modulename}.{name}", tuple(fieldnames))


_RECONSTRUCT = _Allowed("numpy _reconstruct", _reconstruct_ndarray)
_FROMBUFFER = _Allowed("numpy _frombuffer", _frombuffer)

_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
    ("collections", "OrderedDict"): OrderedDict,
    ("_codecs", "encode"): _Allowed("_codecs.encode", _latin1_bytes),
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = _RECONSTRUCT
    _ALLOWED_GLOBALS[(f"{_core}.multiarray", "scalar")] = _NUMPY_SCALAR
    _ALLOWED_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = _FROMBUFFER
for _dill in ("dill._dill", "dill.dill"):
    _ALLOWED_GLOBALS[(_dill, "_create_array")] = _Allowed("dill _create_array", _create_array)
    _ALLOWED_GLOBALS[(_dill, "_create_namedtuple")] = _Allowed(
        "dill _create_namedtuple", _create_namedtuple
    )

_PYTHON2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that builds numpy arrays and plain containers, and calls nothing else.

    Security model: a pickle can only run code through the globals it names (the
    ``GLOBAL``/``STACK_GLOBAL``/``INST``/``EXT`` opcodes resolve them through
    :meth:`find_class`) and through ``persistent_load``. :meth:`find_class` returns:

    * builtin container types (``set``, ``frozenset``, ``bytearray``, ``complex``,
      ``collections.OrderedDict``), whose construction runs no user code;
    * numpy's own array rebuilding: ``numpy.dtype``, ``numpy.ndarray``,
      ``multiarray._reconstruct`` (for ``ndarray`` only), ``multiarray.scalar`` and
      ``numeric._frombuffer`` (from a bytes buffer only), under the ``numpy.core`` and
      ``numpy._core`` names, trusting numpy to validate the array state it is given;
    * ``_codecs.encode`` restricted to the latin-1 text that encodes bytes in
      protocol 2;
    * for dill's ``_create_array``, numpy's reconstruction above; for dill's
      ``_create_namedtuple``, a local function returning a stand-in type;
    * for everything else (``os.system``, ``builtins.exec``, ``subprocess.*``, BYOL's
      and optax's classes, haiku's ``FlatMapping``, other dill helpers, ...) a fresh
      :class:`PickledObject` subclass. Calling it records its arguments and returns an
      inert instance; nothing named by the file is imported or executed.

    The allowed callables are immutable (the ``BUILD`` opcode cannot rewire them), and
    persistent ids are refused.
    """

    def __init__(self, file: Any) -> None:
        # latin1 lets numpy arrays pickled by Python 2 decode their raw data.
        super().__init__(file, encoding="latin1")

    def find_class(self, module: str, name: str) -> Any:
        """Resolve an allowed global, or an inert stand-in for any other one."""
        module = _PYTHON2_MODULES.get(module, module)
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        fields = _KNOWN_NAMEDTUPLES.get(name.rpartition(".")[2], ())
        return _stand_in(f"{module}.{name}", fields)

    def persistent_load(self, pid: Any) -> Any:
        """Refuse external references, which only ``torch.save``-style files use."""
        raise RefusedPickleError(
            "the pickle refers to persistent (external) objects, as torch.save files do"
        )


def _to_tensor(array: np.ndarray) -> Tensor | np.ndarray:
    if array.dtype.kind not in "biufc":
        return array
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, order="C")
    try:
        return torch.from_numpy(array)
    except TypeError:  # a dtype torch has no tensor type for
        return array


def _arrays_to_tensors(value: Any, memo: dict[int, tuple[Any, Any]]) -> Any:
    """Replace numeric numpy arrays by tensors throughout lists, dicts and stand-ins.

    ``memo`` maps ``id(original)`` to ``(original, converted)``: shared objects stay
    shared, cycles terminate, and keeping the original alive keeps its id unique.
    """
    key = id(value)
    if key in memo:
        return memo[key][1]
    result: Any
    if isinstance(value, np.ndarray):
        result = _to_tensor(value)
    elif isinstance(value, np.generic):
        result = value.item()
    elif isinstance(value, dict):
        result = OrderedDict() if isinstance(value, OrderedDict) else {}
        memo[key] = (value, result)
        for item_key, item in value.items():
            result[item_key] = _arrays_to_tensors(item, memo)
    elif isinstance(value, list):
        result = []
        memo[key] = (value, result)
        result.extend(_arrays_to_tensors(item, memo) for item in value)
    elif isinstance(value, tuple):
        result = tuple(_arrays_to_tensors(item, memo) for item in value)
    elif isinstance(value, PickledObject):
        result = value
        memo[key] = (value, result)
        value.pickled_args = _arrays_to_tensors(value.pickled_args, memo)
        value.pickled_kwargs = _arrays_to_tensors(value.pickled_kwargs, memo)
        value.pickled_state = _arrays_to_tensors(value.pickled_state, memo)
        value.pickled_list = _arrays_to_tensors(value.pickled_list, memo)
        value.pickled_dict = _arrays_to_tensors(value.pickled_dict, memo)
    else:
        result = value
    memo[key] = (value, result)
    return result


@register_reader(".pkl")
def read_pickle(path: Path) -> dict[str, Any]:
    """Read a ``.pkl`` checkpoint with :class:`SafeUnpickler`, arrays as tensors.

    ``torch.save`` files that were named ``.pkl`` are recognised and read like any
    other PyTorch checkpoint (``weights_only=True``).

    Args:
        path: The file.

    Returns:
        The pickled top-level dict, with numeric numpy arrays converted to tensors and
        objects of other classes left as :class:`PickledObject` stand-ins.

    Raises:
        CheckpointError: If the file is truncated, corrupted, not a pickle, or does not
            hold a dict.
    """
    if zipfile.is_zipfile(path):
        return cast("dict[str, Any]", _read_torch(path))
    try:
        with path.open("rb") as file:
            raw = SafeUnpickler(file).load()
    except OSError:
        raise
    except RefusedPickleError as exc:
        raise CheckpointError(
            f"{path} is refused: {exc}; nothing from the file was executed"
        ) from exc
    except Exception as exc:
        # The unpickler reports truncated or foreign bytes as EOFError,
        # UnpicklingError, ValueError, ... depending on where the data stops making
        # sense; a TypeError also arises when the pickle calls an unbuilt stand-in.
        raise CheckpointError(
            f"cannot read {path} as a pickle: it is truncated, corrupted or not a pickle, "
            f"or it uses objects that were not built ({type(exc).__name__}: {exc})"
        ) from exc
    if isinstance(raw, int) and raw == _LEGACY_TORCH_MAGIC:
        return cast("dict[str, Any]", _read_torch(path))
    if not isinstance(raw, dict):
        what = repr(raw) if isinstance(raw, PickledObject) else type(raw).__name__
        raise CheckpointError(
            f"checkpoint {path} holds {what}, expected a dict (BYOL's checkpoints hold "
            f"{{'step', 'rng', {EXPERIMENT_STATE_KEY!r}}}); nothing in it was executed"
        )
    try:
        return cast("dict[str, Any]", _arrays_to_tensors(raw, {}))
    except RecursionError as exc:
        raise CheckpointError(f"checkpoint {path} is nested too deeply to read") from exc


# --------------------------------------------------------------------------- converting


def _field(container: Any, name: str) -> Any:
    if isinstance(container, Mapping):
        return container.get(name)
    return getattr(container, name, None)


def _field_names(container: Any) -> tuple[str, ...]:
    if isinstance(container, Mapping):
        return tuple(str(key) for key in container)
    if isinstance(container, PickledObject):
        return type(container).pickled_fields
    return tuple(getattr(container, "_fields", ()))


def _describe(value: Any) -> str:
    if isinstance(value, PickledObject):
        return f"an unbuilt {value.pickled_name} object"
    return f"a {type(value).__name__}"


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
    raise ValueError(f"{where} is {_describe(value)}, expected a mapping of Haiku modules")


def _tensor(value: Any, where: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return torch.from_numpy(np.array(value, order="C"))
    raise ValueError(f"{where} is {_describe(value)}, expected an array")


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


_TORCHVISION_RESNETS: dict[tuple[int, ...], str] = {
    (3, 4, 6, 3): "resnet50",
    (3, 4, 23, 3): "resnet101",
    (3, 8, 36, 3): "resnet152",
}
"""Bottleneck ResNets of width x1 that torchvision builds, by blocks per group."""

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
            f"{unknown[:_SHOWN]} (a ResNet v2's final_batchnorm is not supported)"
        )
    prefixes = sorted({match["prefix"] for match in modules.values()})
    if len(prefixes) > 1:
        raise ValueError(f"{where} holds several ResNets, under the prefixes {prefixes}")
    architecture = _architecture(modules, params)

    state_dict: dict[str, Tensor] = {}
    for module, match in modules.items():
        target = _torchvision_module(match)
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
    for name in state:
        owner = name.rpartition("/~/")[0]
        if _is_head(name):
            dropped.extend(f"{where}.state/{name}/{key}" for key in _mapping(state[name], name))
        elif owner not in modules:
            raise ValueError(f"the state of {where} has {name!r}, which belongs to no layer")
    return state_dict, architecture, tuple(dropped)


def _torchvision_spec(architecture: HaikuResNet) -> BackboneSpec:
    arch = _TORCHVISION_RESNETS.get(architecture.blocks_per_group)
    if not architecture.bottleneck or architecture.width != 1 or arch is None:
        raise ValueError(
            f"this BYOL checkpoint holds a {architecture}, which torchvision does not "
            "provide (supported: ResNet-50, -101 and -152 of width x1, e.g. "
            "pretrain_res50x1.pkl). BYOL's ResNet-200 x2 and wider ablation networks "
            "cannot be loaded"
        )
    return BackboneSpec(f"torchvision:{arch}", {"tf_same_padding": True})


def detect_byol(raw: Mapping[str, Any]) -> bool:
    """Whether ``raw`` is a BYOL checkpoint: it has a top-level ``experiment_state``."""
    return EXPERIMENT_STATE_KEY in raw and "format" not in raw


@register_adapter("byol", detect=detect_byol)
def convert_byol(raw: Mapping[str, Any], options: AdapterOptions) -> ConvertedCheckpoint:
    """Extract the online ResNet encoder of an official BYOL checkpoint.

    Args:
        raw: The checkpoint mapping, as :func:`read_pickle` returns it.
        options: Conversion options; BYOL's projector is not offered as part of the
            backbone, so ``projection_layers`` must be 0.

    Returns:
        The encoder's tensors named as in torchvision's ResNet, the architecture
        (``torchvision:resnet50`` with TF "SAME" padding for ``pretrain_res50x1.pkl``),
        ImageNet preprocessing, and everything else in ``dropped``: the heads, the target
        network, the optimiser state and the other top-level entries.

    Raises:
        ValueError: If the experiment state holds no encoder, the encoder is not a Haiku
            ResNet v1, or torchvision has no matching model (e.g. ResNet-200 x2).
    """
    if options.projection_layers:
        raise ValueError(
            f"checkpoint.projection_layers={options.projection_layers} is not supported by "
            "the 'byol' adapter: BYOL's projector is dropped and fine-tuning starts from "
            "the encoder's pooled features"
        )
    experiment_state = raw[EXPERIMENT_STATE_KEY]
    fields = next(
        (pair for pair in NETWORK_FIELDS if _field(experiment_state, pair[0]) is not None), None
    )
    if fields is None:
        raise ValueError(
            f"{EXPERIMENT_STATE_KEY} is {_describe(experiment_state)} without "
            f"{' or '.join(pair[0] for pair in NETWORK_FIELDS)}; expected BYOL's "
            "_ByolExperimentState (pre-training) or _EvalExperimentState (linear evaluation)"
        )
    params_field, state_field = fields
    params = _field(experiment_state, params_field)
    state = _field(experiment_state, state_field)
    if state is None:
        raise ValueError(f"{EXPERIMENT_STATE_KEY} has {params_field} but no {state_field}")
    state_dict, architecture, heads = convert_haiku_resnet(params, state, where=params_field)
    others = tuple(
        f"{EXPERIMENT_STATE_KEY}.{name}"
        for name in _field_names(experiment_state)
        if name not in (params_field, state_field)
    )
    top_level = tuple(key for key in raw if key != EXPERIMENT_STATE_KEY)
    return ConvertedCheckpoint(
        state_dict=state_dict,
        backbone=_torchvision_spec(architecture),
        preprocessing=Preprocessing(),
        dropped=heads + others + top_level,
    )
