"""BYOL's official Haiku checkpoints, written here as real pickles of synthetic weights.

The files imitate ``pretrain_res50x1.pkl``: a ``{"step", "rng", "experiment_state"}``
dict whose experiment state is an instance of ``byol.byol_experiment._ByolExperimentState``
holding Haiku parameter and state dicts. ``byol``, ``haiku``, ``optax`` and ``dill`` are
not installed; the classes and helpers the pickles name are registered in
``sys.modules`` only while pickling, so the loader cannot import them.
"""

import collections
import importlib.util
import math
import pickle
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from torch.nn import functional as F

from mile_ssl.adapters import AdapterOptions, CheckpointError, load_backbone
from mile_ssl.adapters.byol import convert_byol
from mile_ssl.networks.backbones import BackboneSpec
from mile_ssl.networks.preprocessing import Preprocessing
from mile_ssl.networks.tf_padding import Conv2dSame, MaxPool2dSame

Params = dict[str, dict[str, np.ndarray]]

PREFIX = "res_net50/~/"
BLOCKS = (3, 4, 6, 3)
CHANNELS = (256, 512, 1024, 2048)
FIELDS = ("online_params", "target_params", "online_state", "target_state", "opt_state")
EVAL_FIELDS = (
    "backbone_params",
    "classif_params",
    "backbone_state",
    "backbone_opt_state",
    "classif_opt_state",
)
EPS = 1e-5  # hk.BatchNorm eps in BYOL's ResNet (byol/utils/networks.py)


# --------------------------------------------------------------------------- weights


class _HaikuNet:
    """Builds Haiku-named parameters and BatchNorm state with random, well-scaled values."""

    def __init__(self, seed: int, bn_shape: Callable[[int], tuple[int, ...]]) -> None:
        self.rng = np.random.default_rng(seed)
        self.bn_shape = bn_shape
        self.params: Params = {}
        self.state: dict[str, dict[str, np.ndarray]] = {}

    def conv(self, name: str, kernel: int, cin: int, cout: int) -> None:
        std = math.sqrt(2.0 / (kernel * kernel * cin))
        shape = (kernel, kernel, cin, cout)  # HWIO
        self.params[name] = {"w": (self.rng.standard_normal(shape) * std).astype(np.float32)}

    def batchnorm(self, name: str, channels: int, scale: tuple[float, float] = (0.5, 1.0)) -> None:
        shape = self.bn_shape(channels)

        def uniform(low: float, high: float) -> np.ndarray:
            return self.rng.uniform(low, high, channels).astype(np.float32).reshape(shape)

        self.params[name] = {"scale": uniform(*scale), "offset": uniform(-0.1, 0.1)}
        for ema, value in (("mean_ema", uniform(-0.2, 0.2)), ("var_ema", uniform(0.5, 1.5))):
            self.state[f"{name}/~/{ema}"] = {
                "average": value,
                "hidden": value * 0.9,
                "counter": np.array(1000, dtype=np.int32),
            }

    def linear(self, name: str, cin: int, cout: int, bias: bool = True) -> None:
        values = {"w": self.rng.standard_normal((cin, cout)).astype(np.float32)}
        if bias:
            values["b"] = np.zeros(cout, dtype=np.float32)
        self.params[name] = values


def haiku_byol_resnet(
    seed: int = 0,
    blocks: tuple[int, ...] = BLOCKS,
    width: int = 1,
    channels: tuple[int, ...] = CHANNELS,
    bn_shape: Callable[[int], tuple[int, ...]] = lambda c: (1, 1, 1, c),
) -> tuple[Params, dict[str, dict[str, np.ndarray]]]:
    """Online params and state of BYOL's network: Haiku ResNet v1 plus BYOL's heads."""
    net = _HaikuNet(seed, bn_shape)
    net.conv(f"{PREFIX}initial_conv", 7, 3, 64 * width)
    net.batchnorm(f"{PREFIX}initial_batchnorm", 64 * width)
    cin = 64 * width
    for group, count in enumerate(blocks):
        cout = channels[group] * width
        for block in range(count):
            base = f"{PREFIX}block_group_{group}/~/block_{block}/~/"
            net.conv(f"{base}conv_0", 1, cin, cout // 4)
            net.batchnorm(f"{base}batchnorm_0", cout // 4)
            net.conv(f"{base}conv_1", 3, cout // 4, cout // 4)
            net.batchnorm(f"{base}batchnorm_1", cout // 4)
            net.conv(f"{base}conv_2", 1, cout // 4, cout)
            net.batchnorm(f"{base}batchnorm_2", cout, scale=(0.1, 0.3))
            if block == 0:
                net.conv(f"{base}shortcut_conv", 1, cin, cout)
                net.batchnorm(f"{base}shortcut_batchnorm", cout)
            cin = cout
    # BYOL's heads (byol_experiment.py); MLP layers are made in __call__, hence "/".
    for head in ("projector", "predictor"):
        net.linear(f"{head}/linear", cin if head == "projector" else 16, 32)
        net.batchnorm(f"{head}/batch_norm", 32)
        net.linear(f"{head}/linear_1", 32, 16, bias=False)
    net.linear("classifier", cin, 10)
    return net.params, net.state


"""The tensors are small: one thread is faster than two competing for busy cores."""


@pytest.fixture(scope="module")
def online() -> tuple[Params, dict[str, dict[str, np.ndarray]]]:
    return haiku_byol_resnet()


# --------------------------------------------------------------------------- reference


def _tf_same(images: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad like TF "SAME": output ceil(n / stride), extra pixel at the end."""
    pads = []
    for size in (images.shape[-1], images.shape[-2]):
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(images, pads, value=value)


def reference_features(
    params: Params, state: Mapping[str, Any], images: torch.Tensor
) -> torch.Tensor:
    """Haiku's ResNet v1 forward in eval mode, written directly on the Haiku weights."""

    def conv(x: torch.Tensor, name: str, stride: int) -> torch.Tensor:
        kernel = torch.from_numpy(params[PREFIX + name]["w"]).permute(3, 2, 0, 1)
        return F.conv2d(_tf_same(x, kernel.shape[-1], stride), kernel, stride=stride)

    def batchnorm(x: torch.Tensor, name: str) -> torch.Tensor:
        def channels(value: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(value).reshape(1, -1, 1, 1)

        values = params[PREFIX + name]
        mean = channels(state[f"{PREFIX}{name}/~/mean_ema"]["average"])
        var = channels(state[f"{PREFIX}{name}/~/var_ema"]["average"])
        inverse = channels(values["scale"]) * torch.rsqrt(var + EPS)
        return (x - mean) * inverse + channels(values["offset"])

    x = torch.relu(batchnorm(conv(images, "initial_conv", 2), "initial_batchnorm"))
    x = F.max_pool2d(_tf_same(x, 3, 2, value=float("-inf")), 3, 2)
    for group, count in enumerate(BLOCKS):
        for block in range(count):
            stride = 2 if group > 0 and block == 0 else 1
            base = f"block_group_{group}/~/block_{block}/~/"
            shortcut = x
            if block == 0:
                shortcut = batchnorm(
                    conv(x, f"{base}shortcut_conv", stride), f"{base}shortcut_batchnorm"
                )
            out = torch.relu(batchnorm(conv(x, f"{base}conv_0", 1), f"{base}batchnorm_0"))
            out = torch.relu(batchnorm(conv(out, f"{base}conv_1", stride), f"{base}batchnorm_1"))
            out = batchnorm(conv(out, f"{base}conv_2", 1), f"{base}batchnorm_2")
            x = torch.relu(shortcut + out)
    return x.mean(dim=(2, 3))


# --------------------------------------------------------------------------- pickling


@contextmanager
def importable_while_pickling(monkeypatch: pytest.MonkeyPatch, **objects: Any) -> Iterator[None]:
    """Make ``objects`` (by dotted name) importable, so pickle can reference them.

    The modules exist only inside the block; afterwards nothing named ``byol``,
    ``haiku``, ``optax`` or ``dill`` can be imported, as on a machine without them.
    """
    with monkeypatch.context() as patch:
        for dotted, value in objects.items():
            module_name, _, attribute = dotted.rpartition(".")
            parts = module_name.split(".")
            for depth in range(1, len(parts) + 1):
                name = ".".join(parts[:depth])
                if name not in sys.modules:
                    patch.setitem(sys.modules, name, types.ModuleType(name))
            setattr(sys.modules[module_name], attribute, value)
            value.__module__ = module_name
            value.__qualname__ = attribute
        yield
    for package in ("byol", "haiku", "optax", "dill"):
        assert importlib.util.find_spec(package) is None, f"{package} must not be importable"


def _namedtuple(dotted: str, fields: tuple[str, ...]) -> type:
    module, _, name = dotted.rpartition(".")
    return collections.namedtuple(name, fields, module=module)


class FlatMapping(Mapping[str, Any]):
    """Haiku's immutable params mapping; it pickles as ``FlatMapping(dict)``."""

    def __init__(self, mapping: Mapping[str, Any]) -> None:
        self._mapping = dict(mapping)

    def __getitem__(self, key: str) -> Any:
        return self._mapping[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._mapping)

    def __len__(self) -> int:
        return len(self._mapping)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self._mapping,)


def _create_array(*args: Any) -> Any:
    raise AssertionError("only referenced by the pickle, never called")


def _create_namedtuple(*args: Any) -> Any:
    raise AssertionError("only referenced by the pickle, never called")


class DillStylePickler(pickle.Pickler):
    """Writes what dill 0.3 writes for BYOL's state: namedtuple classes by value through
    ``dill._dill._create_namedtuple`` and arrays through ``dill._dill._create_array``."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            function, args, state = obj.__reduce__()
            return _create_array, (function, args, state, None)
        if isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields"):
            return _create_namedtuple, (obj.__name__, obj._fields, obj.__module__)
        return NotImplemented


def _experiment(
    online: tuple[Params, Any], state_class: type, wrap: Callable[[Any], Any], optimiser: Any
) -> dict[str, Any]:
    params, state = online
    # The target network differs from the online one, so loading it by mistake shows.
    target = dict(params)
    target[f"{PREFIX}initial_conv"] = {"w": params[f"{PREFIX}initial_conv"]["w"][::-1].copy()}
    experiment_state = state_class(
        online_params=wrap(params),
        target_params=wrap(target),
        online_state=wrap(state),
        target_state=wrap(state),
        opt_state=optimiser,
    )
    return {
        "step": 300_000,
        "rng": np.array([0, 42], dtype=np.uint32),
        "experiment_state": experiment_state,
    }


def write_by_reference(
    path: Path, online: tuple[Params, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Protocol 5: the experiment state references ``byol.byol_experiment``'s class."""
    state_class = _namedtuple("byol.byol_experiment._ByolExperimentState", FIELDS)
    lars_state = _namedtuple("byol.utils.optimizers.LarsState", ("momentum",))
    optimiser = lars_state(momentum={"w": np.zeros(3, dtype=np.float32)})
    checkpoint = _experiment(online, state_class, lambda tree: tree, optimiser)
    with importable_while_pickling(
        monkeypatch,
        **{
            "byol.byol_experiment._ByolExperimentState": state_class,
            "byol.utils.optimizers.LarsState": lars_state,
        },
    ):
        path.write_bytes(pickle.dumps(checkpoint, protocol=5))


def write_dill_style(
    path: Path, online: tuple[Params, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Protocol 2 as ``dill.dump(..., protocol=2)`` wrote it with numpy 1 and Haiku."""
    state_class = _namedtuple("byol.byol_experiment._ByolExperimentState", FIELDS)
    scale_state = _namedtuple("optax._src.transform.ScaleByScheduleState", ("count",))
    optimiser = (scale_state(count=np.array(3, dtype=np.int32)),)

    def wrap(tree: Mapping[str, Any]) -> FlatMapping:
        return FlatMapping({name: FlatMapping(values) for name, values in tree.items()})

    checkpoint = _experiment(online, state_class, wrap, optimiser)
    helpers = {
        "haiku._src.data_structures.FlatMapping": FlatMapping,
        "dill._dill._create_array": _create_array,
        "dill._dill._create_namedtuple": _create_namedtuple,
    }
    with importable_while_pickling(monkeypatch, **helpers), path.open("wb") as file:
        DillStylePickler(file, protocol=2).dump(checkpoint)
    # numpy 1 named its array helpers numpy.core.*; protocol 2 stores names as text.
    data = path.read_bytes()
    assert b"numpy._core.multiarray\n" in data
    path.write_bytes(data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("write", [write_dill_style, write_by_reference])
def test_official_checkpoint_matches_haiku_forward(
    tmp_path: Path,
    online: tuple[Params, Any],
    monkeypatch: pytest.MonkeyPatch,
    write: Callable[[Path, tuple[Params, Any], pytest.MonkeyPatch], None],
) -> None:
    path = tmp_path / "pretrain_res50x1.pkl"
    write(path, online, monkeypatch)

    loaded = load_backbone(path)

    assert loaded.adapter == "byol"
    assert loaded.spec == BackboneSpec("torchvision:resnet50", {"tf_same_padding": True})
    assert loaded.feature_dim == 2048
    assert loaded.preprocessing == Preprocessing()  # ImageNet mean / std, as BYOL
    assert isinstance(loaded.module.conv1, Conv2dSame)
    assert isinstance(loaded.module.maxpool, MaxPool2dSame)
    dropped = set(loaded.dropped)
    assert {
        "online_params/projector/linear/w",
        "online_params/predictor/linear_1/w",
        "online_params/classifier/b",
        "online_params.state/projector/batch_norm/~/mean_ema/average",
        "experiment_state.target_params",
        "experiment_state.target_state",
        "experiment_state.opt_state",
        "step",
        "rng",
    } <= dropped
    assert not any("res_net50" in key for key in dropped)

    params, state = online
    module = loaded.module.eval()
    symmetric = torchvision.models.resnet50(weights=None)
    symmetric.fc = torch.nn.Identity()
    symmetric.load_state_dict(module.state_dict())
    symmetric.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for size in (65, 64):
            images = torch.randn(2, 3, size, size)
            expected = reference_features(params, state, images)
            assert expected.abs().max() < 100  # a sane range, so the tolerance means something
            torch.testing.assert_close(module(images), expected)
        # At 64 px every strided layer sees an even input, where torchvision's symmetric
        # padding samples other pixels than "SAME": the comparison above is sensitive.
        assert not torch.allclose(symmetric(images), expected, atol=1e-2)


def test_bn_vectors_and_linear_eval_state(online: tuple[Params, Any]) -> None:
    """(C,) BatchNorm shapes (newer Haiku) and BYOL's linear-evaluation state convert alike."""
    params, state = online
    flat = {
        name: {
            key: value.reshape(-1) if key in ("scale", "offset") else value
            for key, value in values.items()
        }
        for name, values in params.items()
    }
    flat_state = {
        name: {key: value.reshape(-1) for key, value in values.items()}
        for name, values in state.items()
    }
    eval_state = _namedtuple("byol.eval_experiment._EvalExperimentState", EVAL_FIELDS)
    raw = {"experiment_state": eval_state(flat, {}, flat_state, None, ())}
    converted = convert_byol(raw, AdapterOptions())
    reference = convert_byol(
        {"experiment_state": {"online_params": params, "online_state": state}}, AdapterOptions()
    )
    assert converted.state_dict.keys() == reference.state_dict.keys()
    for key, value in reference.state_dict.items():
        assert torch.equal(converted.state_dict[key], value), key
    expected_keys = {
        key
        for key in torchvision.models.resnet50(weights=None).state_dict()
        if not key.startswith("fc.") and not key.endswith("num_batches_tracked")
    }
    assert set(converted.state_dict) == expected_keys
    assert "experiment_state.classif_params" in converted.dropped
    with pytest.raises(ValueError, match="projection_layers=1"):
        convert_byol(raw, AdapterOptions(projection_layers=1))


def test_resnet200x2_is_refused_with_its_architecture(tmp_path: Path) -> None:
    # Names and the stem's width matter; tiny channels keep the file small.
    params, state = haiku_byol_resnet(blocks=(3, 24, 36, 3), width=2, channels=(4, 4, 4, 4))
    params[f"{PREFIX}initial_conv"]["w"] = np.zeros((7, 7, 3, 128), dtype=np.float32)
    path = tmp_path / "pretrain_res200x2.pkl"
    path.write_bytes(
        pickle.dumps(
            {"step": 1, "experiment_state": {"online_params": params, "online_state": state}},
            protocol=2,
        )
    )
    with pytest.raises(CheckpointError, match=r"ResNet-200 \(width x2") as error:
        load_backbone(path)
    assert str(path) in str(error.value)


def test_truncated_pickle_names_the_file(tmp_path: Path, online: tuple[Params, Any]) -> None:
    params, state = online
    small = {name: values for name, values in params.items() if "block_group_0" in name}
    data = pickle.dumps(
        {"experiment_state": {"online_params": small, "online_state": state}}, protocol=2
    )
    path = tmp_path / "pretrain_res50x1.pkl"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as error:
        load_backbone(path)
    assert str(path) in str(error.value)
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match="not a pickle"):
        load_backbone(path)


def test_torchvision_named_byol_conversion_loads_without_same_padding(tmp_path: Path) -> None:
    """BYOL weights already renamed for torchvision (e.g. by byol-convert) lack counters."""
    torch.manual_seed(0)
    weights = {
        key: value
        for key, value in torchvision.models.resnet50(weights=None).state_dict().items()
        if not key.endswith("num_batches_tracked")
    }
    path = tmp_path / "pretrain_res50x1.pth.tar"
    torch.save(weights, path)
    loaded = load_backbone(path, backbone=BackboneSpec("torchvision:resnet50"))
    assert loaded.adapter == "torchvision"
    assert type(loaded.module.conv1) is torch.nn.Conv2d
    state_dict = loaded.module.state_dict()
    for key, value in weights.items():
        if not key.startswith("fc."):
            assert torch.equal(state_dict[key], value), key
