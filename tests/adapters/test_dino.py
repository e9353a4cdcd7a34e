"""DINO training checkpoints (facebookresearch/dino layout), ResNet-50 and ViT-S/16."""

import argparse
from pathlib import Path

import pytest
import torch
import torchvision
from torch import Tensor, nn

from mile_ssl.adapters import AdapterOptions, CheckpointError
from mile_ssl.adapters.dino import convert_dino, detect_dino
from mile_ssl.adapters.loading import load_backbone
from mile_ssl.networks.backbones import BackboneSpec
from mile_ssl.networks.preprocessing import Preprocessing


def _filler(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.float32) -> Tensor:
    """A tensor of the right shape stored as one element: for parts the test never runs."""
    return torch.zeros((), dtype=dtype).expand(shape)


def _dino_head(prefix: str, in_dim: int) -> dict[str, Tensor]:
    """``DINOHead``'s keys: a 3-layer MLP and the weight-normalised last layer."""
    shapes = {
        "mlp.0.weight": (2048, in_dim),
        "mlp.0.bias": (2048,),
        "mlp.2.weight": (2048, 2048),
        "mlp.2.bias": (2048,),
        "mlp.4.weight": (256, 2048),
        "mlp.4.bias": (256,),
        "last_layer.weight_g": (65536, 1),
        "last_layer.weight_v": (65536, 256),
    }
    return {f"{prefix}{key}": _filler(shape) for key, shape in shapes.items()}


def _network(prefix: str, backbone: dict[str, Tensor], in_dim: int) -> dict[str, Tensor]:
    """A ``MultiCropWrapper`` state dict under ``prefix`` (``module.`` when DDP-wrapped)."""
    return {f"{prefix}backbone.{key}": value for key, value in backbone.items()} | _dino_head(
        f"{prefix}head.", in_dim
    )


def _save(path: Path, teacher: dict[str, Tensor], student: dict[str, Tensor]) -> Path:
    torch.save(
        {
            "student": student,
            "teacher": teacher,
            "optimizer": {"state": {}, "param_groups": []},
            "epoch": 100,
            "dino_loss": {"center": torch.zeros(1, 65536)},
        },
        path,
    )
    return path


def test_resnet50_teacher_is_loaded(tmp_path: Path) -> None:
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50()
    resnet.fc = nn.Identity()  # MultiCropWrapper's doing: no classifier in the file
    generator = torch.Generator().manual_seed(1)
    for layer in resnet.modules():
        if isinstance(layer, nn.BatchNorm2d):
            assert layer.running_var is not None
            layer.running_var.uniform_(0.5, 2.0, generator=generator)
    resnet.eval()
    teacher = _network("module.", resnet.state_dict(), 2048)
    student = {key: _filler(value.shape, value.dtype) for key, value in teacher.items()}
    path = _save(tmp_path / "checkpoint.pth", teacher, student)

    loaded = load_backbone(path)
    assert loaded.adapter == "dino"
    assert loaded.spec == BackboneSpec("torchvision:resnet50")
    assert loaded.preprocessing == Preprocessing()
    assert loaded.expected_prefix == "teacher.module.backbone."
    assert "teacher.module.head.last_layer.weight_v" in loaded.dropped
    assert "student.module.backbone.conv1.weight" in loaded.dropped
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded.module.eval()(images), resnet(images))


class DinoAttention(nn.Module):
    """Multi-head self-attention as in DINO's ``vision_transformer.py``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        weights = ((q @ k.transpose(-2, -1)) * (dim // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, dim))


class DinoMlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim * 4)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim * 4, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DinoBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = DinoAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = DinoMlp(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DinoPatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)


class DinoViT(nn.Module):
    """DINO's ``VisionTransformer`` (``vit_small``: width 384, 12 blocks, 6 heads), whose
    forward returns the normalised class token."""

    def __init__(self, dim: int = 384, depth: int = 12, heads: int = 6, patch: int = 16) -> None:
        super().__init__()
        self.patch_embed = DinoPatchEmbed(dim, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (224 // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(DinoBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Identity()

    def forward(self, images: Tensor) -> Tensor:
        x = self.patch_embed.proj(images).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]


def test_vit_small_teacher_loads_into_timm(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vit = DinoViT().eval()
    with torch.no_grad():
        for name, parameter in vit.named_parameters():
            if name.endswith("bias") or "norm" in name:
                parameter.normal_(0.0 if name.endswith("bias") else 1.0, 0.05)
    teacher = _network("", vit.state_dict(), 384)  # the ViT teacher is not DDP-wrapped
    student = {f"module.{key}": _filler(value.shape) for key, value in teacher.items()}
    path = _save(tmp_path / "checkpoint.pth", teacher, student)

    loaded = load_backbone(path)
    assert loaded.adapter == "dino"
    assert loaded.spec == BackboneSpec("timm:vit_small_patch16_224")
    assert loaded.feature_dim == 384
    assert loaded.expected_prefix == "teacher.backbone."
    assert "student.module.backbone.cls_token" in loaded.dropped
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded.module.eval()(images), vit(images))


def test_student_is_used_without_teacher_and_detection() -> None:
    t = torch.zeros(1)
    assert detect_dino({"teacher": {"backbone.cls_token": t}})
    assert detect_dino({"student": {"module.backbone.conv1.weight": t}})
    assert not detect_dino({"teacher": {"conv1.weight": t}})
    assert not detect_dino({"state_dict": {"backbone.conv1.weight": t}})
    converted = convert_dino(
        {"student": {"module.backbone.x": t, "module.head.y": t}}, AdapterOptions()
    )
    assert list(converted.state_dict) == ["x"]
    assert converted.dropped == ("student.module.head.y",)


def test_full_checkpoint_with_args_is_refused_for_safety(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pth"
    torch.save(
        {
            "teacher": {"backbone.cls_token": torch.zeros(1)},
            "args": argparse.Namespace(arch="vit_small"),
        },
        path,
    )
    with pytest.raises(CheckpointError, match="refused for safety") as info:
        load_backbone(path)
    assert str(path) in str(info.value)
