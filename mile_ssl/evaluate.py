"""Evaluate a fine-tuned run's checkpoint: rebuild the network from it, run validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from mile_ssl.adapters.reading import read_checkpoint
from mile_ssl.backbones import BackboneSpec, build_backbone
from mile_ssl.config import DataConfig, MethodConfig, MileConfig, OptimConfig
from mile_ssl.data.datamodule import data_loader
from mile_ssl.data.sources import validation_set
from mile_ssl.method import CHECKPOINT_KEY, MILeModule
from mile_ssl.preprocessing import Preprocessing


def read_run_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint written by a mile_ssl run (tensors only, no code).

    Raises:
        FileNotFoundError: If there is no such file.
        ValueError: If the file is unreadable, truncated or corrupt (naming it), or was
            not written by :class:`MILeModule`.
    """
    checkpoint = read_checkpoint(Path(path))
    if CHECKPOINT_KEY not in checkpoint or "metadata" not in checkpoint[CHECKPOINT_KEY]:
        raise ValueError(f"{path} is not a checkpoint of a mile_ssl fine-tuning run")
    return checkpoint


def module_from_checkpoint(checkpoint: dict[str, Any]) -> MILeModule:
    """Rebuild the fine-tuned module, with its weights, from a run checkpoint."""
    state = checkpoint[CHECKPOINT_KEY]
    backbone_meta = state["metadata"]["backbone"]
    backbone, feature_dim = build_backbone(
        BackboneSpec(backbone_meta["name"], dict(backbone_meta["kwargs"]))
    )
    module = MILeModule(
        backbone,
        feature_dim,
        int(state["num_classes"]),
        method=MethodConfig(**state["method"]),
        mile=MileConfig(**state["mile"]),
        optim=OptimConfig(**state["optim"]),
        metadata=state["metadata"],
    )
    module.load_state_dict(checkpoint["state_dict"], strict=True)
    module.completed_steps = int(state["completed_steps"])
    return module


def evaluate_checkpoint(
    path: str | Path, data: DataConfig, *, precision: str = "32-true", accelerator: str = "auto"
) -> dict[str, float]:
    """All validation metrics of the student saved in ``path``, on ``data``'s validation set.

    Args:
        path: Lightning checkpoint of a mile_ssl run.
        data: Which validation set to use.
        precision: Lightning precision of the evaluation.
        accelerator: Lightning accelerator.
    """
    checkpoint = read_run_checkpoint(path)
    module = module_from_checkpoint(checkpoint)
    preprocessing = Preprocessing.from_dict(module.metadata["preprocessing"])
    # The validation set alone: the training folder is neither indexed nor needed.
    loader = data_loader(
        data, validation_set(data, preprocessing, module.metadata.get("class_names"))
    )
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,  # type: ignore[arg-type]
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.validate(module, dataloaders=loader, verbose=False)
    return dict(module.validation_metrics)
