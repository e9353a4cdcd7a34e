"""Self-supervised pretraining on the digit grids with lightly's SimCLR parts.

This produces the kind of checkpoint mile_ssl exists to fine-tune, offline and in a
minute of CPU time, so the demo and the benchmarks can start from a real SSL backbone.
The method itself is lightly's (projection head, NT-Xent loss, multi-view transform);
only the wiring lives here.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from mile_ssl.adapters import save_backbone_checkpoint
from mile_ssl.data.digits import IMAGE_SIZE, DigitGridConfig, DigitGridDataset, make_digit_grids
from mile_ssl.extras import extra_imports
from mile_ssl.networks.backbones import BackboneSpec, build_backbone
from mile_ssl.networks.preprocessing import Preprocessing

with extra_imports("demo", "SimCLR pretraining on the digit grids"):
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms.multi_view_transform import MultiViewTransform


def digit_views(preprocessing: Preprocessing) -> MultiViewTransform:
    """Two augmented views per grid: crop-and-resize, small shifts, noise.

    Colour and flips are left out: digits are grey and a flipped digit is another glyph.
    """
    view = v2.Compose(
        [
            v2.RandomResizedCrop(IMAGE_SIZE, scale=(0.5, 1.0), ratio=(0.8, 1.25), antialias=True),
            v2.RandomAffine(degrees=10, translate=(0.1, 0.1)),
            v2.GaussianNoise(sigma=0.1),
            v2.Normalize(list(preprocessing.mean), list(preprocessing.std)),
        ]
    )
    return MultiViewTransform([view, view])


class _ViewsOnly(Dataset[list[torch.Tensor]]):
    """Images of a labelled dataset as augmented views; labels are not used."""

    def __init__(self, dataset: DigitGridDataset, transform: MultiViewTransform) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        return [torch.as_tensor(view) for view in self.transform(self.dataset[index]["image"])]


class SimCLRPretrainer(L.LightningModule):
    """SimCLR (Chen et al., 2020) assembled from lightly modules.

    Args:
        backbone: Network to pretrain.
        feature_dim: Width of its pooled features.
        lr: Adam learning rate.
        temperature: NT-Xent temperature.
    """

    def __init__(
        self, backbone: nn.Module, feature_dim: int, lr: float = 2e-3, temperature: float = 0.2
    ) -> None:
        super().__init__()
        self.backbone = backbone.to(memory_format=torch.channels_last)
        self.projection = SimCLRProjectionHead(feature_dim, feature_dim, 64)
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=True)
        self.lr = lr

    def training_step(self, views: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        """NT-Xent between the projections of the two views."""
        first, second = (
            self.projection(self.backbone(view.contiguous(memory_format=torch.channels_last)))
            for view in views
        )
        loss = self.criterion(first, second)
        self.log("pretrain/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam, which needs no tuning for a short pretraining run."""
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=1e-6)


def pretrain_digits_simclr(
    output_path: str | Path,
    spec: BackboneSpec,
    *,
    steps: int = 300,
    batch_size: int = 256,
    seed: int = 0,
    precision: str = "bf16-mixed",
    progress_bar: bool = True,
) -> Path:
    """Pretrain ``spec`` with SimCLR on the training digit grids and save its backbone.

    Only the training pool of digit images is used, so the validation grids stay unseen.

    Args:
        output_path: Checkpoint file to write (mile_ssl backbone format).
        spec: Backbone architecture.
        steps: Optimiser steps.
        batch_size: Grids per step (two views each).
        seed: Seed of the grids and of the run.
        precision: Lightning precision.
        progress_bar: Show a progress bar.

    Returns:
        ``output_path``.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    preprocessing = Preprocessing()
    train_grids, _ = make_digit_grids(DigitGridConfig(num_val=0, seed=seed))
    dataset = _ViewsOnly(DigitGridDataset(train_grids), digit_views(preprocessing))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)
    backbone, feature_dim = build_backbone(spec)
    model = SimCLRPretrainer(backbone, feature_dim)
    trainer = L.Trainer(
        max_steps=steps,
        max_epochs=-1,
        accelerator="auto",
        devices=1,
        precision=precision,  # type: ignore[arg-type]
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
    )
    trainer.fit(model, loader)
    return save_backbone_checkpoint(
        output_path,
        model.backbone.to(memory_format=torch.contiguous_format),
        spec,
        preprocessing,
        metadata={
            "method": "simclr (lightly)",
            "dataset": "digit grids",
            "steps": steps,
            "seed": seed,
        },
    )
