"""ViTs at the fine-tuning resolution: position embeddings resampled once, at load time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from mile_ssl.adapters import load_backbone
from mile_ssl.networks.backbones import BackboneSpec, build_backbone
from mile_ssl.networks.vit import GridResampling, resample_position_embedding, vit_spec_at
from mile_ssl.runs.finished_run import module_from_checkpoint, read_run_checkpoint
from tests.conftest import run_cli_in_process, write_image_folder

TINY_VIT = "vit_tiny_patch16_224"


def _tiny_vit_at(image_size: int) -> torch.nn.Module:
    module, _ = build_backbone(vit_spec_at(BackboneSpec(f"timm:{TINY_VIT}"), image_size))
    return module


def test_the_default_resampling_is_timms_own() -> None:
    torch.manual_seed(0)
    pos_embed = torch.randn(1, 1 + 14 * 14, 192)
    module = _tiny_vit_at(64)

    resampled = resample_position_embedding(pos_embed, module)

    expected = resample_abs_pos_embed(pos_embed, new_size=[4, 4], num_prefix_tokens=1)
    assert resampled.shape == module.pos_embed.shape == (1, 1 + 4 * 4, 192)
    assert torch.equal(resampled, expected)
    assert torch.equal(resampled[:, 0], pos_embed[:, 0])


def test_an_offset_scales_the_grid_as_dino_does() -> None:
    """DINO's interpolation: scale factor (new side + 0.1) / old side, no antialiasing."""
    torch.manual_seed(0)
    pos_embed = torch.randn(1, 1 + 14 * 14, 192)
    module = _tiny_vit_at(96)

    resampled = resample_position_embedding(pos_embed, module, GridResampling(0.1, False))

    grid = pos_embed[:, 1:].reshape(1, 14, 14, 192).permute(0, 3, 1, 2)
    scale = 6.1 / 14
    expected = F.interpolate(grid, scale_factor=(scale, scale), mode="bicubic")
    assert torch.equal(resampled[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 36, 192))
    by_size = resample_position_embedding(pos_embed, module, GridResampling(0.0, False))
    assert not torch.equal(resampled, by_size)


def test_a_size_that_is_not_a_multiple_of_the_patch_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"'data.image_size' \(100\).*patch size 16.*96 or 112"):
        vit_spec_at(BackboneSpec(f"timm:{TINY_VIT}"), 100)
    resnet = BackboneSpec("torchvision:resnet18")
    assert vit_spec_at(resnet, 100) is resnet
    assert vit_spec_at(BackboneSpec(f"timm:{TINY_VIT}"), 224).kwargs == {}


@pytest.fixture(scope="module")
def dino_vit_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DINO-layout teacher checkpoint of a ViT-Tiny/16 trained at 224 px."""
    torch.manual_seed(0)
    vit = timm.create_model(TINY_VIT, num_classes=0)
    torch.nn.init.normal_(vit.pos_embed, std=0.5)
    teacher = {f"backbone.{key}": value for key, value in vit.state_dict().items()}
    path = tmp_path_factory.mktemp("dino") / "dino_vit_tiny.pth"
    torch.save({"teacher": teacher}, path)
    return path


def test_loading_at_another_size_matches_dinos_interpolation(dino_vit_file: Path) -> None:
    loaded = load_backbone(dino_vit_file, image_size=64)

    assert loaded.spec.kwargs["img_size"] == 64
    saved = torch.load(dino_vit_file)["teacher"]["backbone.pos_embed"]
    expected = resample_position_embedding(saved, loaded.module, GridResampling(0.1, False))
    assert torch.equal(loaded.module.pos_embed, expected)
    features = loaded.module.eval()(torch.randn(2, 3, 64, 64))
    assert features.shape == (2, 192) and torch.isfinite(features).all()


@pytest.mark.parametrize("image_size", [64, 96])
def test_a_vit_fine_tunes_predicts_and_exports_at_its_image_size(
    tmp_path: Path, dino_vit_file: Path, image_size: int
) -> None:
    root = tmp_path / "images"
    for split in ("train", "val"):
        write_image_folder(root / split, per_class=4, size=image_size)
    data = [
        "data=folder",
        f"data.root={root}",
        f"data.image_size={image_size}",
        "data.batch_size=4",
        "data.num_workers=0",
    ]
    trained = run_cli_in_process(
        [
            "train",
            f"checkpoint.path={dino_vit_file}",
            *data,
            "trainer.max_steps=2",
            "mile.kt=1",
            "mile.ks=1",
            "trainer.progress_bar=false",
            "trainer.accelerator=cpu",
            "trainer.precision=32-true",
            "hydra.run.dir=run",
        ],
        tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    checkpoint_path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = read_run_checkpoint(checkpoint_path)
    assert checkpoint["mile_ssl"]["metadata"]["backbone"]["kwargs"]["img_size"] == image_size
    module = module_from_checkpoint(checkpoint)
    grid = image_size // 16
    assert module.student.backbone.pos_embed.shape == (1, 1 + grid * grid, 192)

    evaluated = run_cli_in_process(["eval", f"checkpoint={checkpoint_path}", "--json"], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    report = json.loads(evaluated.stdout)
    assert report["dataset"]["image_size"] == image_size
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert report["metrics"]["map"] == saved["map"] and report["metrics"]["top1"] == saved["top1"]

    predicted = run_cli_in_process(
        ["predict", str(root / "val"), f"checkpoint={checkpoint_path}", "--json"], tmp_path
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert all(result["predicted"] is not None for result in json.loads(predicted.stdout))

    exported = run_cli_in_process(
        ["export", f"checkpoint={checkpoint_path}", "--out", "exported"], tmp_path
    )
    assert exported.returncode == 0, exported.stderr[-2000:]
    model_card = json.loads((tmp_path / "exported" / "model.json").read_text())
    assert model_card["architecture"]["kwargs"]["img_size"] == image_size
    assert model_card["preprocessing"]["image_size"] == image_size
    recipe: dict[str, object] = {}
    exec(model_card["load"]["code"], recipe)  # noqa: S102 (the card's own recipe, as written)
    exported_model = recipe["model"]
    assert isinstance(exported_model, torch.nn.Module)
    images = torch.randn(2, 3, image_size, image_size)
    module.eval()
    with torch.no_grad():
        assert torch.allclose(exported_model.eval()(images), module.student(images), atol=1e-5)
