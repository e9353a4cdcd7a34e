"""The optimiser's parameter groups: layer-wise rates, weight decay, recipes, clipping."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn

from mile_ssl.config import MethodConfig, OptimConfig, compose_train_config
from mile_ssl.finetune import SupervisedModule
from mile_ssl.finetune.networks import Classifier
from mile_ssl.finetune.optimizers import make_optimizer
from mile_ssl.networks.backbones import TinyResNet
from tests.conftest import one_step_trainer

LR, HEAD_LR, DECAY = 1e-3, 1e-2, 0.65


def _rates(network: Classifier, optim: OptimConfig) -> dict[str, tuple[float, float]]:
    """Every parameter's (learning rate, weight decay) in the optimiser built for it."""
    optimizer = make_optimizer(network, optim)
    by_tensor = {
        id(parameter): (group["initial_lr"], group["weight_decay"])
        for group in optimizer.param_groups
        for parameter in group["params"]
    }
    return {name: by_tensor[id(parameter)] for name, parameter in network.named_parameters()}


def _vit(**kwargs: object) -> Classifier:
    """timm's ViT-Ti/16 with its 12 blocks, built for 32-px inputs with 8-px patches."""
    backbone = timm.create_model(
        "vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=8, **kwargs
    )
    return Classifier(backbone, 192, 5)


def beit_layer_id(name: str, num_layers: int = 12) -> int:
    """BEiT's ``get_num_layer_for_vit`` / MAE's ``get_layer_id_for_vit``, restated."""
    if name.startswith(("backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed")):
        return 0
    found = re.match(r"backbone\.blocks\.(\d+)\.", name)
    return int(found.group(1)) + 1 if found else num_layers + 1


def test_layer_decay_gives_each_block_the_rate_of_beit_and_mae() -> None:
    network = _vit()
    rates = _rates(network, OptimConfig(name="adamw", lr=LR, head_lr=HEAD_LR, layer_decay=DECAY))
    # The table for a 12-block ViT at decay 0.65: lr x 0.65 ** (13 - layer id).
    expected_by_layer = {layer: LR * DECAY ** (13 - layer) for layer in range(14)}
    assert expected_by_layer[0] == pytest.approx(3.697e-6, rel=1e-3)  # patch embedding, tokens
    assert expected_by_layer[1] == pytest.approx(5.688e-6, rel=1e-3)  # blocks.0
    assert expected_by_layer[12] == pytest.approx(6.5e-4)  # blocks.11
    assert expected_by_layer[13] == LR  # the final norm
    for name, (lr, _) in rates.items():
        layer = beit_layer_id(name)
        base = HEAD_LR if name.startswith("head.") else LR  # the head's own rate, undecayed
        expected = base if name.startswith("head.") else expected_by_layer[layer]
        assert lr == pytest.approx(expected, rel=1e-12), name
    assert rates["backbone.blocks.5.attn.qkv.weight"][0] == pytest.approx(LR * DECAY**7)
    assert len({lr for lr, _ in rates.values()}) == 15  # 14 layers and the head's rate


def test_layer_decay_numbers_resnet_stages() -> None:
    """stem = 0, layer1..layer4 = 1..4, head = 5; tiny_resnet's stages alike."""
    backbone = torchvision.models.resnet18()
    backbone.fc = nn.Identity()
    rates = _rates(Classifier(backbone, 512, 3), OptimConfig(lr=LR, layer_decay=0.5))
    assert rates["backbone.conv1.weight"][0] == pytest.approx(LR * 0.5**5)
    assert rates["backbone.bn1.bias"][0] == pytest.approx(LR * 0.5**5)
    for stage in range(1, 5):
        assert rates[f"backbone.layer{stage}.0.conv1.weight"][0] == pytest.approx(
            LR * 0.5 ** (5 - stage)
        )
    assert rates["head.weight"][0] == LR
    assert {decay for _, decay in rates.values()} == {1e-4}  # SGD decays every weight

    tiny = _rates(
        Classifier(TinyResNet(widths=(8, 16)), 16, 3), OptimConfig(lr=LR, layer_decay=0.5)
    )
    assert tiny["backbone.conv1.weight"][0] == pytest.approx(LR * 0.5**3)
    assert tiny["backbone.stages.0.0.conv1.weight"][0] == pytest.approx(LR * 0.5**2)
    assert tiny["backbone.stages.1.0.conv1.weight"][0] == pytest.approx(LR * 0.5)


def test_adamw_decays_no_norm_bias_or_token() -> None:
    network = _vit(reg_tokens=4)
    rates = _rates(network, OptimConfig(name="adamw", weight_decay=0.05))
    exempt = {
        name
        for name, parameter in network.named_parameters()
        if parameter.ndim <= 1 or name.endswith(("token", "pos_embed"))
    }
    assert {"backbone.cls_token", "backbone.reg_token", "backbone.pos_embed"} <= exempt
    assert {"backbone.norm.weight", "backbone.blocks.0.norm1.bias", "head.bias"} <= exempt
    for name, (_, decay) in rates.items():
        assert decay == (0.0 if name in exempt else 0.05), name
    assert rates["backbone.patch_embed.proj.weight"][1] == 0.05
    assert rates["head.weight"][1] == 0.05
    assert type(make_optimizer(network, OptimConfig(name="adamw"))).__name__ == "AdamW"


def test_sgd_recipe_keeps_two_groups_decaying_every_weight() -> None:
    """The ResNet recipe as optimisers were saved before per-layer groups existed."""
    network = Classifier(TinyResNet(widths=(8, 16)), 16, 3)
    optimizer = make_optimizer(network, OptimConfig(lr=0.2, head_lr=1.0))
    assert isinstance(optimizer, torch.optim.SGD)
    backbone, head = optimizer.param_groups
    assert len(backbone["params"]) == len(list(network.backbone.parameters()))
    assert len(head["params"]) == 2
    assert (backbone["initial_lr"], head["initial_lr"]) == (0.2, 1.0)
    assert backbone["weight_decay"] == head["weight_decay"] == 1e-4
    assert backbone["momentum"] == 0.9 and backbone["nesterov"] is True


def test_layer_decay_refuses_a_backbone_without_layers() -> None:
    network = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), 4, 2)
    with pytest.raises(ValueError, match=r"'optim\.layer_decay'.*Sequential"):
        make_optimizer(network, OptimConfig(layer_decay=0.7))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.name=adam", "optim.name"),
        ("optim.layer_decay=0", "optim.layer_decay"),
        ("optim.layer_decay=1.5", "optim.layer_decay"),
        ("optim.clip_grad_norm=0", "optim.clip_grad_norm"),
        ("optim.betas=[0.9]", "optim.betas"),
        ("backbone.drop_path_rate=1.0", "backbone.drop_path_rate"),
    ],
)
def test_out_of_range_values_name_their_key(override: str, key: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"'{key}'")):
        compose_train_config([override])


def _one_step_update(clip: float | None, tmp_path: Path, scaled: bool = False) -> float:
    """The global norm of the weight change of one real training step at lr 1 (plain SGD).

    ``scaled``: fp16 mixed precision with a gradient scaler (loss x 2**16), as on a GPU.
    """
    torch.manual_seed(0)
    optim = OptimConfig(lr=1.0, momentum=0.0, nesterov=False, weight_decay=0.0, clip_grad_norm=clip)
    module = SupervisedModule(
        TinyResNet(widths=(8, 16)), 16, 4, method=MethodConfig("softmax"), optim=optim
    )
    before = [parameter.detach().clone() for parameter in module.student.parameters()]
    generator = torch.Generator().manual_seed(1)
    batch = {
        "image": 5 * torch.randn(8, 3, 16, 16, generator=generator),
        "label": torch.arange(8) % 4,
    }
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    trainer = one_step_trainer(
        tmp_path,
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)] if scaled else None,
    )
    trainer.fit(module, torch.utils.data.DataLoader([batch], batch_size=None))
    after = list(module.student.parameters())
    changes = [(a.detach() - b).pow(2).sum() for a, b in zip(after, before, strict=True)]
    return math.sqrt(float(sum(changes)))


@pytest.mark.parametrize("scaled", [False, True], ids=["fp32", "fp16_gradient_scaler"])
def test_clipping_bounds_the_gradient_norm_of_a_training_step(scaled: bool, tmp_path: Path) -> None:
    """At lr 1 without momentum the update is the gradient: its norm is the clipped norm,
    also when the loss is scaled (clipping comes after unscaling, or it would be 2**16
    times smaller)."""
    unclipped = _one_step_update(None, tmp_path / "a", scaled)
    assert unclipped > 0.1
    clipped = _one_step_update(0.01, tmp_path / "b", scaled)
    assert clipped == pytest.approx(0.01, rel=1e-3)
