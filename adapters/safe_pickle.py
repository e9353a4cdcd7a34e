"""A restricted unpickler that rebuilds arrays and plain containers and runs nothing else.

Some checkpoints are plain pickles rather than ``torch.save`` files: DeepMind's BYOL
releases ``dill`` pickles of JAX/Haiku state, and other projects pickle dicts of numpy
arrays. Unpickling such a file normally imports the classes it names and may call
anything it names, and checkpoints come from the internet. :class:`SafeUnpickler`
instead rebuilds only numpy arrays and builtin containers and turns every other class
or function the pickle names into an inert :class:`PickledObject`, so nothing from the
file is imported or executed; :func:`arrays_to_tensors` then turns numeric arrays into
tensors. The ``.pkl`` reader (:mod:`.reading`) is built on these.

Namedtuples pickled by reference record only their class name and positional values;
a format whose files hold some teaches their field names with
:func:`register_namedtuple_fields`, so that ``state.online_params`` works on the
stand-in.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ClassVar, cast

import numpy as np
import torch
from torch import Tensor

_NAMEDTUPLE_FIELDS: dict[str, tuple[str, ...]] = {}
"""Field order of namedtuple classes, by class name, for stand-ins of pickled instances."""


def register_namedtuple_fields(class_name: str, fields: tuple[str, ...]) -> None:
    """Name the positional values of a namedtuple class that files pickle by reference.

    Args:
        class_name: The class's name without its module (``"_ByolExperimentState"``).
        fields: Its field names, in order.

    Raises:
        ValueError: If the class already has other fields: the same pickle would then
            read differently depending on which format was imported first.
    """
    known = _NAMEDTUPLE_FIELDS.setdefault(class_name, tuple(fields))
    if known != tuple(fields):
        raise ValueError(
            f"namedtuple {class_name!r} already has the fields {list(known)}, not {list(fields)}"
        )


class RefusedPickleError(pickle.UnpicklingError):
    """The pickle asked for something :class:`SafeUnpickler` does not do."""


class PickledObject:
    """Inert stand-in for an object of a class or function the reader does not build.

    Instances record what the pickle would have passed on, and nothing is ever called
    with it: the constructor arguments (``pickled_args``, ``pickled_kwargs``), the state
    given to ``__setstate__`` (``pickled_state``), and items appended (``pickled_list``)
    or assigned (``pickled_dict``) by the list and dict opcodes. Each global the pickle
    names gets its own subclass whose ``pickled_name`` is the dotted name.

    Namedtuples pickle as their class plus positional values; a subclass created with
    ``pickled_fields`` (classes named by :func:`register_namedtuple_fields`, or dill's
    ``_create_namedtuple``) maps those names to the positional values, so
    ``state.online_params`` works.
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


def describe_pickled(value: Any) -> str:
    """Name what a pickle held, for errors: ``an unbuilt <class> object`` or ``a <type>``."""
    if isinstance(value, PickledObject):
        return f"an unbuilt {value.pickled_name} object"
    return f"a {type(value).__name__}"


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
        fields = _NAMEDTUPLE_FIELDS.get(name.rpartition(".")[2], ())
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


def arrays_to_tensors(value: Any, memo: dict[int, tuple[Any, Any]]) -> Any:
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
            result[item_key] = arrays_to_tensors(item, memo)
    elif isinstance(value, list):
        result = []
        memo[key] = (value, result)
        result.extend(arrays_to_tensors(item, memo) for item in value)
    elif isinstance(value, tuple):
        result = tuple(arrays_to_tensors(item, memo) for item in value)
    elif isinstance(value, PickledObject):
        result = value
        memo[key] = (value, result)
        value.pickled_args = arrays_to_tensors(value.pickled_args, memo)
        value.pickled_kwargs = arrays_to_tensors(value.pickled_kwargs, memo)
        value.pickled_state = arrays_to_tensors(value.pickled_state, memo)
        value.pickled_list = arrays_to_tensors(value.pickled_list, memo)
        value.pickled_dict = arrays_to_tensors(value.pickled_dict, memo)
    else:
        result = value
    memo[key] = (value, result)
    return result
