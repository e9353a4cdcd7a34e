"""DINOv2, MAE and iBOT backbone files: detected, converted and computing their features.

The files are written in the released layouts with timm's own modules (DINOv2's names are
timm's plus ``mask_token``/``register_tokens``), and the features are compared with timm's
own conversion where timm has one (DINOv2 with registers), else with the resampling the
format's code defines.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn

from mile_ssl.adapters import load_backbone
from mile_ssl.adapters.dinov2 import RESAMPLING
from mile_ssl.networks.vit import resample_position_embedding
from mile_ssl.runs.finished_run import read_run_checkpoint
from tests.conftest import TINY_NETWORK, run_cli_in_process, write_image_folder


def _randomised(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every tensor random (LayerScale, tokens, norms included)."""
    generator = torch.Generator().manual_seed(0)
    return {
        key: torch.randn(value.shape, generator=generator) * 0.2
        for key, value in model.state_dict().items()
    }


@pytest.fixture(scope="module")
def dinov2_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``dinov2_vits14_pretrain.pth`` and its ``_reg4`` sibling, in the released layout."""
    folder = tmp_path_factory.mktemp("dinov2")
    backbone = _randomised(timm.create_model("vit_small_patch14_dinov2", num_classes=0))
    backbone["mask_token"] = torch.randn(1, 384) * 0.2
    torch.save(backbone, folder / "dinov2_vits14_pretrain.pth")
    with_registers = dict(backbone, register_tokens=torch.randn(1, 4, 384) * 0.2)
    torch.save(with_registers, folder / "dinov2_vits14_reg4_pretrain.pth")
    return {
        "plain": folder / "dinov2_vits14_pretrain.pth",
        "reg4": folder / "dinov2_vits14_reg4_pretrain.pth",
    }


def test_dinov2_at_its_own_size_is_timms_dinov2_vit(dinov2_files: dict[str, Path]) -> None:
    loaded = load_backbone(dinov2_files["plain"], image_size=518)

    assert loaded.adapter == "dinov2"
    assert loaded.spec.name == "timm:vit_small_patch14_dinov2" and loaded.spec.kwargs == {}
    assert loaded.dropped == ("mask_token",)
    reference = timm.create_model("vit_small_patch14_dinov2", num_classes=0)
    saved = torch.load(dinov2_files["plain"])
    reference.load_state_dict({k: v for k, v in saved.items() if k != "mask_token"})
    images = torch.randn(1, 3, 518, 518)
    with torch.no_grad():
        assert torch.equal(loaded.module.eval()(images), reference.eval()(images))


def test_dinov2_at_224_resamples_its_positions_as_dinov2_does(
    dinov2_files: dict[str, Path],
) -> None:
    """The first DINOv2 models scale the grid by (16 + 0.1) / 37 without antialiasing."""
    loaded = load_backbone(dinov2_files["plain"], image_size=224)

    assert loaded.spec.kwargs == {"img_size": 224}
    saved = torch.load(dinov2_files["plain"])["pos_embed"]
    expected = resample_position_embedding(saved, loaded.module, RESAMPLING[False])
    assert loaded.module.pos_embed.shape == (1, 1 + 16 * 16, 384)
    assert torch.equal(loaded.module.pos_embed, expected)
    assert torch.equal(loaded.module.pos_embed[:, 0], saved[:, 0])


def test_dinov2_with_registers_equals_timms_own_conversion(dinov2_files: dict[str, Path]) -> None:
    """timm converts and resamples DINOv2-reg files exactly as DINOv2 computes them."""
    loaded = load_backbone(dinov2_files["reg4"], image_size=224)

    assert loaded.spec.name == "timm:vit_small_patch14_reg4_dinov2"
    reference = timm.create_model("vit_small_patch14_reg4_dinov2", num_classes=0, img_size=224)
    reference.load_state_dict(checkpoint_filter_fn(torch.load(dinov2_files["reg4"]), reference))
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(loaded.module.eval()(images), reference.eval()(images), atol=1e-6)


def test_a_dinov2_file_trains_with_one_command(
    tmp_path: Path, dinov2_files: dict[str, Path]
) -> None:
    root = tmp_path / "images"
    for split in ("train", "val"):
        write_image_folder(root / split, per_class=4, size=56)
    network = [item for item in TINY_NETWORK if not item.startswith(("checkpoint", "backbone"))]
    result = run_cli_in_process(
        [
            "train",
            f"checkpoint.path={dinov2_files['reg4']}",
            *network,
            "data=folder",
            f"data.root={root}",
            "data.image_size=56",
            "data.batch_size=4",
            "data.num_workers=0",
            "trainer.max_steps=2",
            "method=sigmoid",
            "hydra.run.dir=run",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = read_run_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    backbone = checkpoint["mile_ssl"]["metadata"]["backbone"]
    assert backbone["name"] == "timm:vit_small_patch14_reg4_dinov2"
    assert backbone["kwargs"]["img_size"] == 56


@pytest.fixture(scope="module")
def vit_tiny() -> dict[str, torch.Tensor]:
    return _randomised(timm.create_model("vit_tiny_patch16_224", num_classes=0))


def test_mae_encoder_is_fine_tuned_through_global_pooling_and_fc_norm(
    tmp_path: Path, vit_tiny: dict[str, torch.Tensor]
) -> None:
    """The layout of a MAE training checkpoint: the encoder beside the decoder."""
    decoder = {"mask_token": torch.zeros(1, 1, 128), "decoder_embed.weight": torch.zeros(128, 192)}
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": {**vit_tiny, **decoder}}, path)

    loaded = load_backbone(path)

    assert loaded.adapter == "mae"
    assert loaded.spec.kwargs == {"global_pool": "avg"}
    assert set(loaded.dropped) == {
        "model.norm.weight",
        "model.norm.bias",
        "model.mask_token",
        "model.decoder_embed.weight",
    }
    reference = timm.create_model("vit_tiny_patch16_224", num_classes=0, global_pool="avg")
    missing, unexpected = reference.load_state_dict(vit_tiny, strict=False)
    assert set(missing) == {"fc_norm.weight", "fc_norm.bias"}
    assert set(unexpected) == {"norm.weight", "norm.bias"}
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded.module.eval()(images), reference.eval()(images))


def test_ibot_teacher_backbone_is_timms_vit(
    tmp_path: Path, vit_tiny: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "checkpoint_teacher.pth"
    torch.save({"state_dict": vit_tiny}, path)

    loaded = load_backbone(path)

    assert loaded.adapter == "ibot"
    assert loaded.spec.name == "timm:vit_tiny_patch16_224"
    reference = timm.create_model("vit_tiny_patch16_224", num_classes=0)
    reference.load_state_dict(vit_tiny)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded.module.eval()(images), reference.eval()(images))
