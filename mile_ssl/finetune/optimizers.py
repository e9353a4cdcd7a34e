"""The SGD optimiser of a fine-tuned network: backbone and head as two parameter groups."""

from __future__ import annotations

from typing import Any

from torch.optim import SGD, Optimizer

from mile_ssl.config import OptimConfig
from mile_ssl.finetune.networks import Classifier


def group_settings(optim: OptimConfig) -> list[dict[str, Any]]:
    """SGD settings of the backbone and head parameter groups, in that order.

    ``initial_lr`` is the rate the schedule scales at every step (``optim.head_lr``
    defaults to ``optim.lr``).
    """
    head_lr = optim.head_lr if optim.head_lr is not None else optim.lr
    shared = {
        "momentum": optim.momentum,
        "nesterov": optim.nesterov and optim.momentum > 0,
        "weight_decay": optim.weight_decay,
    }
    return [
        {"lr": optim.lr, "initial_lr": optim.lr, **shared},
        {"lr": head_lr, "initial_lr": head_lr, **shared},
    ]


def make_optimizer(network: Classifier, optim: OptimConfig) -> Optimizer:
    """SGD over ``network``'s backbone and head groups."""
    parameters = (list(network.backbone.parameters()), list(network.head.parameters()))
    groups = [
        {"params": params, **settings}
        for params, settings in zip(parameters, group_settings(optim), strict=True)
    ]
    return SGD(groups, lr=optim.lr)
