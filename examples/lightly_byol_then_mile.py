"""Pretrain a small BYOL with lightly, then fine-tune it with MILe, in your own Lightning code.

Everything here is user code: the BYOL module is assembled from lightly's parts as in
lightly's examples, and fine-tuning uses ``mile_ssl.MILeModule`` inside a plain
``lightning.Trainer`` with whatever callbacks and loggers you like. The data are
mile_ssl's embedded digit grids, so the script runs offline on a CPU in a few minutes:

    python examples/lightly_byol_then_mile.py --pretrain-steps 300 --finetune-steps 1200
"""

from __future__ import annotations

import argparse
import copy

import lightning as L
import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mile_ssl import MethodConfig, MileConfig, MILeModule, OptimConfig
from mile_ssl.commands.pretrain import digit_views
from mile_ssl.data.digits import DigitGridConfig, DigitGridDataset, make_digit_grids
from mile_ssl.networks.backbones import TinyResNet
from mile_ssl.networks.preprocessing import Preprocessing


class BYOL(L.LightningModule):
    """BYOL (Grill et al., 2020) from lightly's heads, loss and momentum helpers."""

    def __init__(self, backbone: nn.Module, feature_dim: int, max_steps: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(feature_dim, 256, 64)
        self.prediction_head = BYOLPredictionHead(64, 256, 64)
        self.backbone_momentum = copy.deepcopy(backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()
        self.max_steps = max_steps

    def _online(self, images: torch.Tensor) -> torch.Tensor:
        return self.prediction_head(self.projection_head(self.backbone(images)))

    def _target(self, images: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(self.backbone_momentum(images)).detach()

    def training_step(self, views: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        momentum = cosine_schedule(self.global_step, self.max_steps, 0.99, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m=momentum)
        update_momentum(self.projection_head, self.projection_head_momentum, m=momentum)
        first, second = views
        loss = 0.5 * (
            self.criterion(self._online(first), self._target(second))
            + self.criterion(self._online(second), self._target(first))
        )
        self.log("byol_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            [
                *self.backbone.parameters(),
                *self.projection_head.parameters(),
                *self.prediction_head.parameters(),
            ],
            lr=2e-3,
        )


class TwoViews(Dataset[list[torch.Tensor]]):
    """The grids' images as two augmented views each (labels unused in pretraining)."""

    def __init__(self, dataset: DigitGridDataset) -> None:
        self.dataset = dataset
        self.views = digit_views(Preprocessing())

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        return [torch.as_tensor(view) for view in self.views(self.dataset[index]["image"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--finetune-steps", type=int, default=1200)
    parser.add_argument("--num-train", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precision", default="bf16-mixed")
    args = parser.parse_args()
    L.seed_everything(0)
    train_grids, val_grids = make_digit_grids(
        DigitGridConfig(num_train=args.num_train, num_val=max(64, args.num_train // 5))
    )

    # 1. Self-supervised pretraining with lightly.
    backbone = TinyResNet(widths=(16, 32, 64))
    byol = BYOL(backbone, backbone.feature_dim, args.pretrain_steps)
    L.Trainer(
        max_steps=args.pretrain_steps,
        precision=args.precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    ).fit(
        byol,
        DataLoader(
            TwoViews(DigitGridDataset(train_grids)),
            batch_size=args.batch_size,
            shuffle=True,
            drop_last=True,
        ),
    )

    # 2. MILe fine-tuning of the pretrained backbone, in an ordinary Trainer.
    normalize = Preprocessing()
    mean = torch.tensor(normalize.mean).view(3, 1, 1)
    std = torch.tensor(normalize.std).view(3, 1, 1)
    train = DigitGridDataset(train_grids, transform=lambda image: (image - mean) / std)
    val = DigitGridDataset(val_grids, transform=lambda image: (image - mean) / std)
    module = MILeModule(
        byol.backbone,
        backbone.feature_dim,
        num_classes=10,
        method=MethodConfig("mile"),
        mile=MileConfig(
            kt=max(1, args.finetune_steps // 12), ks=max(1, args.finetune_steps // 12), rho=0.1
        ),
        optim=OptimConfig(lr=0.1, warmup_steps=min(50, args.finetune_steps // 10)),
    )
    trainer = L.Trainer(
        max_steps=args.finetune_steps,
        precision=args.precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        val_check_interval=args.finetune_steps,
        check_val_every_n_epoch=None,
    )
    trainer.fit(
        module,
        DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True),
        DataLoader(val, batch_size=256),
    )
    metrics = module.validation_metrics
    print(
        "MILe from lightly BYOL: "
        + ", ".join(f"{name} {100 * metrics[name]:.1f}" for name in ("top1", "f1@0.25", "map"))
    )


if __name__ == "__main__":
    main()
