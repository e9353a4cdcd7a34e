"""Checkpoint files in the layouts the upstream projects write, for tests across modules.

Each writer puts one file (or a run folder) with the upstream key names, nesting and
shapes into a folder and returns its path. Tensors are stored as one element each
(``expand``): detection and strict loading look at names and shapes only, so files stay
tiny; feature equality with each upstream model is checked in ``tests/adapters``.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torchvision
from torch import Tensor, nn

from mile_ssl.adapters import save_backbone_checkpoint
from mile_ssl.networks.backbones import BackboneSpec, build_backbone
from mile_ssl.networks.preprocessing import Preprocessing
from mile_ssl.networks.simclrv2_resnet import SimCLRv2ResNet


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


def plain_resnet50(tmp: Path) -> Path:
    """``torch.save(resnet50-without-fc.state_dict())``: Barlow Twins, VICReg, DINO backbone."""
    return _save(R50, tmp / "resnet50.pth")


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


def _solo_state(
    backbone: Mapping[str, Tensor], prefix: str, classifier: bool, feature_dim: int
) -> dict[str, Tensor]:
    state = _prefixed(prefix, backbone) | _heads("projector.", PROJECTOR)
    state |= _prefixed("momentum_backbone.", backbone) | _heads(
        "predictor.", {"0.weight": (256, 256)}
    )
    if not classifier:
        return state
    return state | _heads("classifier.", {"weight": (10, feature_dim), "bias": (10,)})


def solo_learn_run(
    tmp: Path,
    backbone: Mapping[str, Tensor],
    args: dict[str, Any],
    prefix: str = "backbone.",
    classifier: bool = True,
    feature_dim: int = 512,
    run_id: str = "offline-ab12cd34",
    epoch: int = 399,
) -> Path:
    """A solo-learn run folder: ``trained_models/<method>/<id>/`` with args.json and a .ckpt.

    Returns:
        The checkpoint file, ``<method>-<id>-ep=<epoch>.ckpt``.
    """
    method = str(args.get("method", "byol"))
    run = tmp / "trained_models" / method / run_id
    run.mkdir(parents=True)
    (run / "args.json").write_text(json.dumps(args))
    raw = {"epoch": epoch, "global_step": 1, "pytorch-lightning_version": "2.0.2"}
    state = _solo_state(backbone, prefix, classifier, feature_dim)
    return _save(raw | {"state_dict": state}, run / f"{method}-{run_id}-ep={epoch}.ckpt")


def solo_learn(prefix: str, args: dict[str, Any], folder: bool, classifier: bool = True) -> Writer:
    def write(tmp: Path) -> Path:
        cifar = args.get("data", {}).get("dataset") == "cifar10"
        path = solo_learn_run(tmp, R18_CIFAR if cifar else R18, args, prefix, classifier)
        return path.parent if folder else path

    return write


def vit_shapes(name: str, img_size: int) -> dict[str, Tensor]:
    """A timm ViT's headless state dict as fillers, for ``img_size`` inputs."""
    return _shapes_of(lambda: timm.create_model(name, num_classes=0, img_size=img_size))


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


def simclrv2(width: int, selective_kernel: bool) -> Writer:
    """A PyTorch conversion of SimCLR-v2 (``r50_{width}x_sk{0,1}.pth``): resnet and head."""

    def write(tmp: Path) -> Path:
        with torch.device("meta"):
            model = SimCLRv2ResNet(
                depth=50,
                width_multiplier=width,
                selective_kernel=selective_kernel,
                projection_layers=3,
            )
        state = {key: _filler(v.shape, v.dtype) for key, v in model.state_dict().items()}
        resnet = {key: value for key, value in state.items() if not key.startswith("head.")}
        features = 2048 * width
        resnet |= {"fc.weight": _filler((1000, features)), "fc.bias": _filler((1000,))}
        head = {k[len("head.") :]: v for k, v in state.items() if k.startswith("head.")}
        path = tmp / f"r50_{width}x_sk{int(selective_kernel)}.pth"
        torch.save({"resnet": resnet, "head": head}, path)
        return path

    return write


def _haiku(name: str) -> str:
    """torchvision ResNet module name -> BYOL's Haiku module name."""
    if name in ("conv1", "bn1"):
        return {"conv1": "initial_conv", "bn1": "initial_batchnorm"}[name]
    found = re.fullmatch(r"layer(\d)\.(\d+)\.(conv|bn|downsample\.)(\d)", name)
    assert found is not None, name
    group, block, kind, index = found.groups()
    prefix = f"block_group_{int(group) - 1}/~/block_{block}/~/"
    if kind == "downsample.":
        return prefix + ("shortcut_conv" if index == "0" else "shortcut_batchnorm")
    return prefix + f"{'conv' if kind == 'conv' else 'batchnorm'}_{int(index) - 1}"


def byol(tmp: Path) -> Path:
    """A pickle of BYOL's layout: Haiku names, HWIO kernels, numpy arrays, EMA states."""
    params: dict[str, dict[str, np.ndarray]] = {}
    state: dict[str, dict[str, Any]] = {}
    with torch.device("meta"):
        resnet50 = torchvision.models.resnet50()
    path = tmp / "pretrain_res50x1.pkl"
    for module_name, module in resnet50.named_modules():
        if not isinstance(module, torch.nn.Conv2d | torch.nn.BatchNorm2d):
            continue
        haiku = f"res_net50/~/{_haiku(module_name)}"
        if isinstance(module, torch.nn.Conv2d):
            out_c, in_c, height, width = module.weight.shape
            params[haiku] = {"w": np.zeros((height, width, in_c, out_c), np.float32)}
        else:
            channels = module.num_features
            params[haiku] = {
                "scale": np.ones((1, 1, 1, channels), np.float32),
                "offset": np.zeros((1, 1, 1, channels), np.float32),
            }
            for statistic in ("mean_ema", "var_ema"):
                state[f"{haiku}/~/{statistic}"] = {
                    "average": np.ones((1, 1, 1, channels), np.float32),
                    "hidden": np.ones((1, 1, 1, channels), np.float32),
                    "counter": np.array(1000, np.int32),
                }
    params["projector/linear"] = {"w": np.zeros((2048, 16), np.float32)}
    experiment_state = {
        "online_params": params,
        "online_state": state,
        "target_params": {},
        "target_state": {},
        "opt_state": (),
    }
    with path.open("wb") as handle:
        pickle.dump(
            {"step": 5000, "rng": np.zeros(2, np.uint32), "experiment_state": experiment_state},
            handle,
        )
    return path


LAYOUTS: dict[str, tuple[str, Writer]] = {
    "torchvision-imagenet-example": ("torchvision", torchvision_example),
    "mile_ssl-backbone": ("mile_ssl", mile_ssl_backbone),
    "torchvision-plain-state-dict": ("torchvision", plain_resnet50),
    "mocov1": ("mocov2", moco(1)),
    "mocov2": ("mocov2", moco(2)),
    "mocov3-resnet50": ("mocov3", mocov3),
    "swav-release": ("swav", swav(multi=False)),
    "deepclusterv2-training": ("swav", swav(multi=True)),
    "solo-learn-ckpt": ("solo_learn", solo_learn("backbone.", SOLO_ARGS, folder=False)),
    "solo-learn-run-folder": ("solo_learn", solo_learn("backbone.", SOLO_ARGS, folder=True)),
    "solo-learn-run-without-classifier": (
        "solo_learn",
        solo_learn("backbone.", SOLO_ARGS, folder=False, classifier=False),
    ),
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
    "simclrv2-r50-1x-sk0": ("simclrv2", simclrv2(1, selective_kernel=False)),
    "simclrv2-r50-1x-sk1": ("simclrv2", simclrv2(1, selective_kernel=True)),
    "simclrv2-r50-2x-sk0": ("simclrv2", simclrv2(2, selective_kernel=False)),
    "simclrv2-r50-2x-sk1": ("simclrv2", simclrv2(2, selective_kernel=True)),
    "byol-haiku-pickle": ("byol", byol),
}
"""Every layout, named, with the adapter that must recognise it."""


def _sequential(arch: str) -> dict[str, Tensor]:
    """``nn.Sequential(*list(resnet.children())[:-1]).state_dict()`` as fillers."""
    return _shapes_of(lambda: nn.Sequential(*list(_headless(arch)().children())[:-1]))


def lightly_tutorial(tmp: Path) -> Path:
    """lightly's SimCLR tutorial: ``{'resnet18_parameters': backbone.state_dict()}``."""
    return _save({"resnet18_parameters": _sequential("resnet18")}, tmp / "model.pth")


def hand_saved(wrapper: str | None, prefix: str, state_dict: Mapping[str, Tensor]) -> Writer:
    """``torch.save({wrapper: {prefix + key: ...}, 'epoch': 7}, ...)``, or the bare state dict."""

    def write(tmp: Path) -> Path:
        network = _prefixed(prefix, state_dict)
        raw = network if wrapper is None else {wrapper: network, "epoch": 7}
        return _save(raw, tmp / "hand_saved.pth")

    return write


LAYOUTS |= {
    "lightly-tutorial": ("hand_saved", lightly_tutorial),
    "hand-saved-model": ("torchvision", hand_saved("model", "", R18)),
    "hand-saved-state-dict-encoder": ("hand_saved", hand_saved("state_dict", "encoder.", R18)),
    "hand-saved-net-module-model": ("hand_saved", hand_saved("net", "module.model.", R18)),
    "hand-saved-sequential": ("hand_saved", hand_saved(None, "", _sequential("resnet18"))),
}
"""Files as people save them by hand; those a named format's adapter recognises keep it."""
