"""mmselfsup / mmpretrain checkpoints ({'meta', 'state_dict'}), loaded end to end."""

from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from mile_ssl.adapters import AdapterOptions
from mile_ssl.adapters.loading import load_backbone
from mile_ssl.adapters.mmselfsup import convert_mmselfsup, detect_mmselfsup
from mile_ssl.adapters.registry import matching_adapters
from mile_ssl.networks.backbones import BackboneSpec
from mile_ssl.networks.preprocessing import Preprocessing


def _filler(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.float32) -> Tensor:
    """A tensor of the right shape stored as one element: for parts the test never runs."""
    return torch.zeros((), dtype=dtype).expand(shape)


def test_mocov2_resnet50_backbone_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50()
    resnet.fc = nn.Identity()  # mmpretrain's ResNet has no classifier: the head is separate
    generator = torch.Generator().manual_seed(1)
    for layer in resnet.modules():
        if isinstance(layer, nn.BatchNorm2d):
            assert layer.running_var is not None
            layer.running_var.uniform_(0.5, 2.0, generator=generator)
    resnet.eval()
    backbone = resnet.state_dict()
    neck = {"mlp.0.weight": (2048, 2048), "mlp.0.bias": (2048,), "mlp.2.weight": (128, 2048)}
    neck["mlp.2.bias"] = (128,)
    state_dict = {f"backbone.{key}": value for key, value in backbone.items()}
    state_dict |= {f"neck.{key}": _filler(shape) for key, shape in neck.items()}
    # mmselfsup 1.x MoCo: the momentum encoder is CosineEMA(Sequential(backbone, neck)).
    state_dict |= {
        f"target_net.module.0.{k}": _filler(v.shape, v.dtype) for k, v in backbone.items()
    }
    state_dict |= {f"target_net.module.1.{k}": _filler(shape) for k, shape in neck.items()}
    state_dict |= {"target_net.steps": torch.tensor(0), "queue": _filler((128, 65536))}
    state_dict["queue_ptr"] = torch.zeros(1, dtype=torch.long)
    path = tmp_path / "mocov2_resnet50_8xb32-coslr-200e_in1k_20220825-b6d23c86.pth"
    torch.save(
        {
            "meta": {
                "mmengine_version": "0.7.0",
                "epoch": 200,
                "iter": 1000800,
                "seed": 0,
                "experiment_name": "mocov2_resnet50_8xb32-coslr-200e_in1k",
                "dataset_meta": {},
                "config": "model = dict(type='MoCo', backbone=dict(type='ResNet', depth=50))",
            },
            "state_dict": state_dict,
            "message_hub": {"log_scalars": {}, "runtime_info": {"epoch": 200}},
        },
        path,
    )

    loaded = load_backbone(path)
    assert loaded.adapter == "mmselfsup"
    assert loaded.spec == BackboneSpec("torchvision:resnet50")
    assert loaded.preprocessing == Preprocessing()
    assert loaded.expected_prefix == "backbone."
    assert {"neck.mlp.0.weight", "target_net.module.0.conv1.weight", "queue"} <= set(loaded.dropped)
    assert not any(key.startswith("backbone.") for key in loaded.dropped)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded.module.eval()(images), resnet(images))


def test_detection_and_legacy_moco_layout() -> None:
    t = torch.zeros(1)
    # mmselfsup 0.x MoCo: the backbone appears twice (backbone.* and encoder_q.0.*).
    legacy = {
        "meta": {"mmselfsup_version": "0.9.0"},
        "state_dict": {
            "backbone.conv1.weight": t,
            "encoder_q.0.conv1.weight": t,
            "encoder_k.0.conv1.weight": t,
        },
    }
    assert matching_adapters(legacy) == ["mmselfsup"]
    converted = convert_mmselfsup(legacy, AdapterOptions())
    assert list(converted.state_dict) == ["conv1.weight"]
    assert converted.dropped == ("encoder_q.0.conv1.weight", "encoder_k.0.conv1.weight")
    assert not detect_mmselfsup({"state_dict": {"backbone.conv1.weight": t}})
    assert not detect_mmselfsup({"meta": {}, "state_dict": {"conv1.weight": t}})
