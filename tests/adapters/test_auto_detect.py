"""``adapter="auto"``: exactly one adapter recognises each upstream layout, and failures say why.

Each layout is written with its real key names, nesting and shapes; the tensors are
stored as one element each (``expand``), since detection and strict loading only look at
names and shapes. Feature equality is checked per format in the other test files.
"""

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torchvision
from torch import Tensor, nn

from mile_ssl.adapters import (
    CheckpointError,
    CheckpointMismatchError,
    ConvertedCheckpoint,
    save_backbone_checkpoint,
)
from mile_ssl.adapters.inspect import describe_checkpoint, format_description
from mile_ssl.adapters.registry import (
    load_backbone,
    matching_adapters,
    read_checkpoint,
    register_adapter,
    resolve_checkpoint_path,
    unregister_adapter,
    unwrap,
)
from mile_ssl.backbones import BackboneSpec, build_backbone
from mile_ssl.preprocessing import Preprocessing

pytestmark = pytest.mark.usefixtures("one_thread")


def _filler(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.zeros((), dtype=dtype).expand(shape)


def _shapes_of(build: Callable[[], nn.Module]) -> dict[str, Tensor]:
    """A model's state dict as fillers, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = build()
    return {key: _filler(value.shape, value.dtype) for key, value in model.state_dict().items()}


def _headless(arch: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        model = torchvision.models.get_model(arch, weights=None)
        model.fc = nn.Identity()
        return model

    return build


def _prefixed(prefix: str, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}{key}": value for key, value in state_dict.items()}


def _heads(prefix: str, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Tensor]:
    return {f"{prefix}{key}": _filler(shape) for key, shape in shapes.items()}


R18 = _shapes_of(_headless("resnet18"))
R50 = _shapes_of(_headless("resnet50"))
R18_CIFAR = R18 | {"conv1.weight": _filler((64, 3, 3, 3))}
MLP = {"0.weight": (2048, 2048), "0.bias": (2048,), "2.weight": (128, 2048), "2.bias": (128,)}
PROJECTOR = {"0.weight": (2048, 512), "1.weight": (2048,), "3.weight": (256, 2048)}
Writer = Callable[[Path], Path]


def _save(raw: Mapping[str, Any], path: Path) -> Path:
    torch.save(dict(raw), path)
    return path


def torchvision_example(tmp: Path) -> Path:
    full = _shapes_of(lambda: torchvision.models.resnet18())
    raw = {"epoch": 90, "arch": "resnet18", "state_dict": _prefixed("module.", full)}
    return _save(raw, tmp / "checkpoint.pth.tar")


def mile_ssl_backbone(tmp: Path) -> Path:
    spec = BackboneSpec("tiny_resnet", {"widths": [4, 8]})
    module, _ = build_backbone(spec)
    return save_backbone_checkpoint(tmp / "backbone.pt", module, spec, Preprocessing())


def moco(version: int) -> Writer:
    def write(tmp: Path) -> Path:
        head: dict[str, tuple[int, ...]] = {"fc.0.weight": (2048, 2048), "fc.2.weight": (128, 2048)}
        if version == 1:
            head = {"fc.weight": (128, 2048), "fc.bias": (128,)}
        query = R50 | _heads("", head)
        state = _prefixed("module.encoder_q.", query) | _prefixed("module.encoder_k.", query)
        state |= {"module.queue": _filler((128, 65536)), "module.queue_ptr": torch.zeros(1)}
        return _save({"epoch": 200, "arch": "resnet50", "state_dict": state}, tmp / "moco.pth.tar")

    return write


def mocov3(tmp: Path) -> Path:
    base = R50 | _heads(
        "fc.", {"0.weight": (4096, 2048), "1.weight": (4096,), "3.weight": (256, 4096)}
    )
    state = _prefixed("module.base_encoder.", base) | _prefixed("module.momentum_encoder.", base)
    state |= _heads("module.predictor.", {"0.weight": (4096, 256), "3.weight": (256, 4096)})
    raw = {"epoch": 300, "arch": "resnet50", "state_dict": state, "scaler": {"scale": 1.0}}
    return _save(raw, tmp / "r-50-300ep.pth.tar")


def swav(multi: bool) -> Writer:
    def write(tmp: Path) -> Path:
        heads = {"projection_head.0.weight": (2048, 2048), "projection_head.1.weight": (2048,)}
        heads["projection_head.3.weight"] = (128, 2048)
        if multi:
            heads |= {f"prototypes.prototypes{i}.weight": (3000, 128) for i in range(3)}
        else:
            heads["prototypes.weight"] = (3000, 128)
        state = _prefixed("module.", R50 | _heads("", heads))
        raw: dict[str, Any] = {"epoch": 400, "state_dict": state} if multi else state
        return _save(raw, tmp / "swav_800ep_pretrain.pth.tar")

    return write


def _solo_state(backbone: Mapping[str, Tensor], prefix: str = "backbone.") -> dict[str, Tensor]:
    state = _prefixed(prefix, backbone) | _heads("projector.", PROJECTOR)
    state |= _prefixed("momentum_backbone.", backbone) | _heads(
        "predictor.", {"0.weight": (256, 256)}
    )
    return state | _heads("classifier.", {"weight": (10, 512), "bias": (10,)})


def solo_learn(prefix: str, args: dict[str, Any], folder: bool) -> Writer:
    def write(tmp: Path) -> Path:
        run = tmp / "trained_models" / "byol" / "abcd1234"
        run.mkdir(parents=True)
        (run / "args.json").write_text(json.dumps(args))
        raw = {"epoch": 999, "global_step": 1, "pytorch-lightning_version": "2.0.2"}
        cifar = args.get("data", {}).get("dataset") == "cifar10"
        state = _solo_state(R18_CIFAR if cifar else R18, prefix)
        path = _save(raw | {"state_dict": state}, run / "byol-abcd1234-ep=999.ckpt")
        return run if folder else path

    return write


SOLO_ARGS = {
    "method": "byol",
    "backbone": {"name": "resnet18", "kwargs": {}},
    "data": {"dataset": "cifar10"},
}
SOLO_LEGACY_ARGS = {"method": "simclr", "encoder": "resnet18", "dataset": "imagenet100"}


def lightly_sequential(tmp: Path) -> Path:
    with torch.device("meta"):
        children = list(torchvision.models.resnet18().children())[:-1]
    backbone = {
        key: _filler(v.shape, v.dtype) for key, v in nn.Sequential(*children).state_dict().items()
    }
    state = _prefixed("backbone.", backbone) | _heads(
        "projection_head.layers.", {"0.weight": (512, 512)}
    )
    return _save(state, tmp / "simclr.pth")


def lightly_benchmark(tmp: Path) -> Path:
    state = _prefixed("backbone.", R18) | _heads(
        "projection_head.layers.", {"0.weight": (2048, 512)}
    )
    state |= _prefixed("teacher_backbone.", R18)
    state |= _heads(
        "online_classifier.classification_head.", {"weight": (1000, 512), "bias": (1000,)}
    )
    raw = {
        "epoch": 99,
        "global_step": 1,
        "state_dict": state,
        "hyper_parameters": {"num_classes": 1000},
    }
    return _save(raw, tmp / "epoch=99-step=1.ckpt")


def mmselfsup(tmp: Path) -> Path:
    state = _prefixed("backbone.", R50) | _heads("neck.mlp.", MLP)
    state |= _prefixed("target_net.module.0.", R50) | {"queue": _filler((128, 65536))}
    raw = {
        "meta": {"epoch": 200, "mmengine_version": "0.7.0"},
        "state_dict": state,
        "message_hub": {},
    }
    return _save(raw, tmp / "mocov2_resnet50_8xb32-coslr-200e_in1k.pth")


def vissl(classy: bool) -> Writer:
    def write(tmp: Path) -> Path:
        trunk = _prefixed("_feature_blocks.", R50)
        heads = _heads("0.clf.0.", {"weight": (1000, 2048), "bias": (1000,)})
        model = {"trunk": trunk, "heads": heads}
        raw: dict[str, Any] = (
            {
                "phase_idx": 1,
                "classy_state_dict": {"train": True, "base_model": {"model": model, "meta": {}}},
            }
            if classy
            else {"model_state_dict": trunk}
        )
        return _save(raw, tmp / "model_final_checkpoint_phase199.torch")

    return write


DINO_HEAD = {
    "mlp.0.weight": (2048, 384),
    "mlp.4.weight": (256, 2048),
    "last_layer.weight_g": (65536, 1),
}


def dino(vit: bool) -> Writer:
    def write(tmp: Path) -> Path:
        if vit:
            backbone = _shapes_of(lambda: timm.create_model("vit_small_patch16_224", num_classes=0))
            teacher = _prefixed("backbone.", backbone) | _heads("head.", DINO_HEAD)
        else:
            teacher = _prefixed("module.backbone.", R50) | _heads("module.head.", DINO_HEAD)
        student = teacher if not vit else _prefixed("module.", teacher)
        raw = {"student": student, "teacher": teacher, "epoch": 100, "optimizer": {}}
        return _save(raw, tmp / "checkpoint.pth")

    return write


LAYOUTS: dict[str, tuple[str, Writer]] = {
    "torchvision-imagenet-example": ("torchvision", torchvision_example),
    "mile_ssl-backbone": ("mile_ssl", mile_ssl_backbone),
    "mocov1": ("mocov2", moco(1)),
    "mocov2": ("mocov2", moco(2)),
    "mocov3-resnet50": ("mocov3", mocov3),
    "swav-release": ("swav", swav(multi=False)),
    "deepclusterv2-training": ("swav", swav(multi=True)),
    "solo-learn-ckpt": ("solo_learn", solo_learn("backbone.", SOLO_ARGS, folder=False)),
    "solo-learn-run-folder": ("solo_learn", solo_learn("backbone.", SOLO_ARGS, folder=True)),
    "solo-learn-legacy-encoder": (
        "solo_learn",
        solo_learn("encoder.", SOLO_LEGACY_ARGS, folder=False),
    ),
    "lightly-sequential": ("lightly", lightly_sequential),
    "lightly-benchmark": ("lightly", lightly_benchmark),
    "mmselfsup": ("mmselfsup", mmselfsup),
    "vissl-classy-state-dict": ("vissl", vissl(classy=True)),
    "vissl-model-state-dict": ("vissl", vissl(classy=False)),
    "dino-resnet50": ("dino", dino(vit=False)),
    "dino-vit-small": ("dino", dino(vit=True)),
}


@pytest.mark.parametrize(
    ("layout", "expected"), [(name, adapter) for name, (adapter, _) in LAYOUTS.items()]
)
def test_auto_detects_exactly_one_adapter_and_describes(
    tmp_path: Path, layout: str, expected: str
) -> None:
    path = LAYOUTS[layout][1](tmp_path)
    file = resolve_checkpoint_path(path)
    assert matching_adapters(read_checkpoint(file)) == [expected]

    description = describe_checkpoint(path)
    assert description["format"] == expected
    assert description["path"] == str(file)
    assert description["parameters"] > 0
    assert sum(description["kept"].values()) == description["tensors"]
    assert json.loads(json.dumps(description)) == description
    text = format_description(description)
    assert f"format         {expected}" in text
    assert description["backbone"]["name"] in text


@pytest.fixture
def registered() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        unregister_adapter(name)


def test_ambiguous_file_lists_candidates_with_evidence(
    tmp_path: Path, registered: list[str]
) -> None:
    path = moco(2)(tmp_path)
    register_adapter(
        "test_moco_clone", detect=lambda raw: "arch" in raw, signature="any file with an 'arch' key"
    )(lambda raw, options: ConvertedCheckpoint(state_dict=unwrap(raw)))
    registered.append("test_moco_clone")
    with pytest.raises(CheckpointError, match="several checkpoint adapters") as info:
        load_backbone(path)
    message = str(info.value)
    assert str(path) in message
    assert "['mocov2', 'test_moco_clone']" in message
    assert "test_moco_clone: any file with an 'arch' key" in message
    assert "mocov2: 'state_dict' with a ResNet under 'module.encoder_q.'" in message
    assert "'module.encoder_q.': 320" in message and "'module.queue'" in message
    # Naming the adapter always works.
    assert load_backbone(path, adapter="mocov2").adapter == "mocov2"


def test_unknown_format_lists_evidence_and_candidates(tmp_path: Path) -> None:
    path = tmp_path / "mystery.pt"
    torch.save(
        {
            "step": 5,
            "weights": {
                "enc.blocks.0.weight": torch.zeros(2),
                "enc.blocks.1.weight": torch.zeros(2),
            },
        },
        path,
    )
    with pytest.raises(CheckpointError, match="no checkpoint adapter recognises") as info:
        load_backbone(path)
    message = str(info.value)
    assert str(path) in message
    assert "'step' (int), 'weights' (mapping of 2)" in message
    assert "state dict under 'weights': 2 tensors" in message and "'enc.blocks.': 2" in message
    for adapter in ("mocov2", "swav", "solo_learn", "lightly", "mmselfsup", "vissl", "dino"):
        assert f"    {adapter}: " in message


def test_empty_dict_is_named(tmp_path: Path) -> None:
    path = tmp_path / "empty.pth"
    torch.save({}, path)
    with pytest.raises(CheckpointError, match="no checkpoint adapter recognises") as info:
        load_backbone(path)
    assert str(path) in str(info.value)
    assert "empty mapping" in str(info.value)


def test_truncated_file_is_named(tmp_path: Path) -> None:
    path = moco(2)(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read .* corrupted") as info:
        load_backbone(path)
    assert str(path) in str(info.value)


def test_wrong_architecture_names_file_and_prefix(tmp_path: Path) -> None:
    args = {"method": "byol", "backbone": {"name": "resnet50"}, "data": {"dataset": "imagenet"}}
    path = solo_learn("backbone.", args, folder=False)(tmp_path)  # resnet18 weights
    with pytest.raises(
        CheckpointMismatchError, match="does not match backbone 'torchvision:resnet50'"
    ) as info:
        load_backbone(path)
    message = str(info.value)
    assert str(path) in message
    assert "taken from keys under 'backbone.'" in message
    assert "shape mismatches" in message and "missing keys" in message
