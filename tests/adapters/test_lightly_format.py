"""Models built with lightly: the Sequential-backbone pattern and the benchmark modules."""

import copy
from pathlib import Path

import pytest
import torch
import torchvision
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead, SimCLRProjectionHead
from torch import nn

from mile_ssl.adapters import AdapterOptions, CheckpointError
from mile_ssl.adapters.architectures import sequential_to_torchvision
from mile_ssl.adapters.lightly_format import convert_lightly, detect_lightly
from mile_ssl.adapters.loading import load_backbone
from mile_ssl.networks.backbones import BackboneSpec
from mile_ssl.networks.preprocessing import Preprocessing

IMAGES = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _trained_resnet18() -> nn.Module:
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18()
    generator = torch.Generator().manual_seed(1)
    for layer in resnet.modules():
        if isinstance(layer, nn.BatchNorm2d):
            assert layer.running_mean is not None and layer.running_var is not None
            layer.running_mean.normal_(0.0, 0.1, generator=generator)
            layer.running_var.uniform_(0.5, 2.0, generator=generator)
    return resnet.eval()


class SimCLR(nn.Module):
    """lightly's documented SimCLR: the ResNet's children without ``fc`` as backbone."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        self.backbone = nn.Sequential(*list(resnet.children())[:-1])
        self.projection_head = SimCLRProjectionHead(512, 512, 128)


class OnlineLinearClassifier(nn.Module):
    """The parameters of ``lightly.utils.benchmarking.OnlineLinearClassifier``."""

    def __init__(self, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.classification_head = nn.Linear(feature_dim, num_classes)


class BYOLBenchmark(nn.Module):
    """The module tree of lightly's ``benchmarks/imagenet/resnet50/byol.py``."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        resnet.fc = nn.Identity()
        self.backbone = resnet
        self.projection_head = BYOLProjectionHead(512, 1024, 256)
        self.prediction_head = BYOLPredictionHead(256, 1024, 256)
        self.teacher_backbone = copy.deepcopy(resnet)
        self.teacher_projection_head = BYOLProjectionHead(512, 1024, 256)
        self.online_classifier = OnlineLinearClassifier(512, 1000)


def test_sequential_backbone_loads_as_torchvision(tmp_path: Path) -> None:
    model = SimCLR(_trained_resnet18()).eval()
    state_dict = model.state_dict()
    assert "backbone.4.0.conv1.weight" in state_dict
    path = tmp_path / "simclr.pth"
    torch.save(state_dict, path)

    loaded = load_backbone(path)
    assert loaded.adapter == "lightly"
    assert loaded.spec == BackboneSpec("torchvision:resnet18")
    assert loaded.preprocessing == Preprocessing()
    assert loaded.dropped == tuple(key for key in state_dict if key.startswith("projection_head."))
    with torch.no_grad():
        expected = model.backbone(IMAGES).flatten(1)
        torch.testing.assert_close(loaded.module.eval()(IMAGES), expected)


def test_benchmark_checkpoint_loads_backbone(tmp_path: Path) -> None:
    model = BYOLBenchmark(_trained_resnet18()).eval()
    with torch.no_grad():
        for parameter in model.teacher_backbone.parameters():
            parameter.zero_()
    path = tmp_path / "epoch=99-step=500400.ckpt"
    torch.save(
        {
            "epoch": 99,
            "global_step": 500400,
            "pytorch-lightning_version": "2.1.0",
            "state_dict": model.state_dict(),
            "hyper_parameters": {"batch_size_per_device": 128, "num_classes": 1000},
            "optimizer_states": [],
            "lr_schedulers": [],
        },
        path,
    )
    loaded = load_backbone(path)
    assert loaded.adapter == "lightly"
    assert loaded.spec == BackboneSpec("torchvision:resnet18")
    assert "teacher_backbone.conv1.weight" in loaded.dropped
    assert "online_classifier.classification_head.weight" in loaded.dropped
    with torch.no_grad():
        torch.testing.assert_close(loaded.module.eval()(IMAGES), model.backbone(IMAGES))


def test_sequential_renaming_and_unknown_child() -> None:
    t = torch.zeros(1)
    renamed = sequential_to_torchvision({"0.weight": t, "1.bias": t, "7.1.bn2.weight": t})
    assert list(renamed) == ["conv1.weight", "bn1.bias", "layer4.1.bn2.weight"]
    with pytest.raises(ValueError, match="'backbone.9.weight': child 9"):
        sequential_to_torchvision({"9.weight": t}, "backbone.")


def test_bad_sequential_index_names_file(tmp_path: Path) -> None:
    path = tmp_path / "custom.pth"
    t = torch.zeros(1)
    torch.save(
        {"backbone.0.weight": t, "backbone.9.weight": t, "projection_head.layers.0.weight": t}, path
    )
    with pytest.raises(CheckpointError, match="cannot convert") as info:
        load_backbone(path)
    assert str(path) in str(info.value)
    assert "child 9" in str(info.value)


def test_detection_leaves_other_backbone_formats_alone() -> None:
    t = torch.zeros(1)
    assert detect_lightly({"backbone.0.weight": t})
    assert detect_lightly({"state_dict": {"backbone.conv1.weight": t, "online_classifier.x": t}})
    assert not detect_lightly({"backbone.conv1.weight": t})
    assert not detect_lightly(
        {"state_dict": {"backbone.conv1.weight": t, "classifier.weight": t, "projection_head.x": t}}
    )
    assert not detect_lightly({"meta": {}, "state_dict": {"backbone.0.weight": t}})
    with pytest.raises(
        ValueError,
        match="not supported by the 'lightly' adapter.*set checkpoint.projection_layers=0",
    ):
        convert_lightly({"backbone.0.weight": t}, AdapterOptions(projection_layers=1))
