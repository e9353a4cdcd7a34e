"""The solo-learn keys that map one to one onto mile_ssl's, and those that have no effect.

:data:`SETTINGS` and :data:`NOT_USED` are the table that
:func:`mile_ssl.solo.recipes.translate_solo_config` reads a recipe with; the checkpoint,
backbone, image folders and ``mile:`` section are its special cases. :class:`RecipeReader`
records which keys were read, so that every other key is reported rather than dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PRECISIONS = {
    "16": "16-mixed",
    "16-mixed": "16-mixed",
    "bf16": "bf16-mixed",
    "bf16-mixed": "bf16-mixed",
    "32": "32-true",
    "32-true": "32-true",
}
SCHEDULERS_AS_COSINE = ("warmup_cosine", "cosine")
DEFAULT_BATCH_SIZE = 256
"""solo-learn's ``optimizer.batch_size`` when a recipe leaves it out."""
DEFAULT_WARMUP_EPOCHS = 10
"""solo-learn's ``scheduler.warmup_epochs`` when a ``warmup_cosine`` recipe leaves it out."""
SOLO_OPTIMIZERS = {"sgd": "sgd", "lars": "sgd", "adamw": "adamw", "adam": "adamw"}
"""solo-learn's optimisers (``LinearModel._OPTIMIZERS``) and the ``optim.name`` each
trains as: LARS is SGD with a per-layer trust ratio, Adam is AdamW with L2 weight decay."""


class RecipeReader:
    """A recipe being translated: its values, and which of its keys have been read.

    Attributes:
        solo: The recipe.
        source: The file it came from, for messages.
        accelerator: The accelerator the run will use: the command line's, else the
            recipe's.
        read: The dotted keys read so far (a key covers the keys under it).
    """

    def __init__(self, solo: Mapping[str, Any], source: str | Path, accelerator: Any) -> None:
        self.solo = solo
        self.source = source
        self.accelerator = accelerator
        self.read: set[str] = set()

    def take(self, key: str) -> Any:
        """The value of the dotted ``key`` (``None`` if absent), marking it as read."""
        self.read.add(key)
        node: Any = self.solo
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node

    def unread(self) -> Iterator[str]:
        """The recipe's leaf keys that no part of the translation read."""
        for key, _ in _flatten(self.solo):
            if key not in self.read and not any(key.startswith(f"{read}.") for read in self.read):
                yield key

    def take_all(self, solo_key: str) -> Iterator[tuple[str, Any]]:
        """``(key, value)`` for ``solo_key``, or for each key under ``prefix.*`` not yet read."""
        if not solo_key.endswith(".*"):
            yield solo_key, self.take(solo_key)
            return
        prefix = solo_key.removesuffix(".*")
        read = set(self.read)
        for key, value in dict(self.take(prefix) or {}).items():
            if f"{prefix}.{key}" not in read:
                yield f"{prefix}.{key}", value


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{dotted}.")
        else:
            yield dotted, value


def _devices_count(devices: Any) -> int:
    if isinstance(devices, list | tuple):
        return len(devices)
    if isinstance(devices, int) and devices > 0:
        return devices
    return 1


def _as_is(value: Any, recipe: RecipeReader) -> Any:
    return value


def _positive(value: Any, recipe: RecipeReader) -> Any:
    return value if value is not None and float(value) > 0 else None


def _batch_size(value: Any, recipe: RecipeReader) -> int:
    return int(value or DEFAULT_BATCH_SIZE)


def _scaled_lr(lr: Any, recipe: RecipeReader) -> str | None:
    """solo-learn's rule: the recipe's rate is for 256 images, counted over all devices."""
    if lr is None:
        return None
    batch_size = _batch_size(recipe.take("optimizer.batch_size"), recipe)
    devices = _devices_count(recipe.take("devices"))
    nodes = int(recipe.take("num_nodes") or 1)
    scaled = float(lr) * batch_size * devices * nodes / 256
    log.info(
        "solo-learn's LR rule: lr %.6g x (batch %d x devices %d x nodes %d / 256) = %.6g",
        float(lr),
        batch_size,
        devices,
        nodes,
        scaled,
    )
    return f"{scaled:.6g}"


def _warmup(epochs: Any, recipe: RecipeReader) -> Any:
    """solo-learn warms up under ``warmup_cosine`` only, 10 epochs unless the recipe says."""
    if recipe.take("scheduler.name") != "warmup_cosine":
        return None
    return DEFAULT_WARMUP_EPOCHS if epochs is None else epochs


def trains_as(recipe: RecipeReader) -> str:
    """The ``optim.name`` the recipe's optimiser trains as (``sgd`` when it names none)."""
    return SOLO_OPTIMIZERS.get(str(recipe.take("optimizer.name")), "sgd")


def _optimizer(name: Any, recipe: RecipeReader) -> str | None:
    if name is None:
        return None
    if str(name) not in SOLO_OPTIMIZERS:
        raise ValueError(
            f"{recipe.source}: optimizer.name={name!r} is not one of solo-learn's optimizers "
            f"{sorted(SOLO_OPTIMIZERS)}"
        )
    return SOLO_OPTIMIZERS[str(name)]


def _nesterov(nesterov: Any, recipe: RecipeReader) -> Any:
    """solo-learn's SGD and LARS default to plain momentum (torch's); mile_ssl's to Nesterov."""
    if nesterov is None and trains_as(recipe) == "sgd":
        return False
    return nesterov


def _clip_grad_norm(value: Any, recipe: RecipeReader) -> Any:
    """Lightning's ``gradient_clip_val``, a ``Trainer`` argument solo-learn passes on.

    Lightning clips the global 2-norm unless ``gradient_clip_algorithm`` says
    ``value``; 0 or ``None`` is no clipping.
    """
    algorithm = recipe.take("gradient_clip_algorithm")
    if algorithm is not None and str(algorithm).lower() != "norm":
        return None
    return _positive(value, recipe)


def _devices(devices: Any, recipe: RecipeReader) -> Any:
    """solo-learn's list of GPU indices (``devices: [0]``) as a process count on the CPU.

    Lightning takes a list only for accelerators whose devices have indices; on the CPU
    it wants a count (a list is its ``TypeError``), so ``[0, 1]`` becomes ``2``: the
    same number of processes, and the same learning-rate scaling.
    """
    on_cpu = str(recipe.accelerator).lower() == "cpu"
    if not on_cpu or not isinstance(devices, list | tuple) or not devices:
        return devices
    log.info(
        "devices: %s are GPU indices; with accelerator=cpu that is trainer.devices=%d",
        list(devices),
        len(devices),
    )
    return len(devices)


def _precision(precision: Any, recipe: RecipeReader) -> str | None:
    if precision is None:
        return None
    if str(precision) not in PRECISIONS:
        raise ValueError(
            f"{recipe.source}: precision={precision!r} is not one of {sorted(PRECISIONS)}"
        )
    return PRECISIONS[str(precision)]


SETTINGS: tuple[tuple[str, str, Callable[[Any, RecipeReader], Any]], ...] = (
    ("data.num_workers", "data.num_workers", _as_is),
    ("data.fraction", "data.fraction", _positive),
    ("optimizer.batch_size", "data.batch_size", _batch_size),
    ("optimizer.name", "optim.name", _optimizer),
    ("optimizer.lr", "optim.lr", _scaled_lr),
    ("optimizer.weight_decay", "optim.weight_decay", _as_is),
    ("optimizer.layer_decay", "optim.layer_decay", _positive),
    ("optimizer.kwargs.momentum", "optim.momentum", _as_is),
    ("optimizer.kwargs.nesterov", "optim.nesterov", _nesterov),
    ("optimizer.kwargs.betas", "optim.betas", _as_is),
    ("gradient_clip_val", "optim.clip_grad_norm", _clip_grad_norm),
    ("backbone.kwargs.drop_path_rate", "backbone.drop_path_rate", _as_is),
    ("scheduler.warmup_epochs", "optim.warmup_epochs", _warmup),
    ("seed", "seed", _as_is),
    ("max_epochs", "trainer.max_epochs", _as_is),
    ("accelerator", "trainer.accelerator", _as_is),
    ("strategy", "trainer.strategy", _as_is),
    ("sync_batchnorm", "trainer.sync_batchnorm", _as_is),
    ("num_nodes", "trainer.num_nodes", _as_is),
    ("devices", "trainer.devices", _devices),
    ("precision", "trainer.precision", _precision),
)
"""(solo-learn key, mile_ssl key, transform): the keys that map one to one.

A transform takes the recipe's value (``None`` when absent) and the recipe; it returns
the mile_ssl value, or ``None`` to leave the mile_ssl key at its default.
"""

COSINE_TO_ZERO = "mile_ssl uses warm-up + cosine to zero"
NO_MIXING = "mile_ssl trains on unmixed images with hard labels (MILe's BCE): no {}"
FROZEN_BACKBONE = (
    "absent/false means a frozen backbone (linear probe) in solo-learn; MILe fine-tunes "
    "the whole network"
)

NOT_USED: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    (
        "optimizer.name",
        lambda name: name == "lars",
        "'lars' trains as SGD with its momentum: mile_ssl has no per-layer trust ratio",
    ),
    (
        "optimizer.name",
        lambda name: name == "adam",
        "'adam' trains as AdamW: weight decay is decoupled, not added to the gradient",
    ),
    ("optimizer.kwargs.*", lambda _: True, "no such option for mile_ssl's SGD or AdamW"),
    (
        "gradient_clip_algorithm",
        lambda algorithm: algorithm is not None and str(algorithm).lower() != "norm",
        "{!r}: mile_ssl clips the global norm only (optim.clip_grad_norm); no clipping",
    ),
    (
        "scheduler.name",
        lambda name: name not in (None, *SCHEDULERS_AS_COSINE),
        "{!r} replaced by warm-up + cosine",
    ),
    ("scheduler.lr_decay_steps", lambda value: value is not None, COSINE_TO_ZERO),
    ("scheduler.min_lr", lambda value: value is not None, COSINE_TO_ZERO),
    (
        "scheduler.warmup_start_lr",
        lambda value: value is not None and float(value) != 0,
        "mile_ssl's warm-up rises from 0 (optim.lr / warm-up steps at the first step)",
    ),
    ("scheduler.interval", lambda value: value is not None, COSINE_TO_ZERO),
    ("finetune", lambda finetune: not finetune, FROZEN_BACKBONE),
    ("label_smoothing", lambda value: bool(value), NO_MIXING.format("label smoothing")),
    ("mixup", lambda value: bool(value), NO_MIXING.format("mixup")),
    ("cutmix", lambda value: bool(value), NO_MIXING.format("cutmix")),
)
"""(solo-learn key, test of its value, reason): keys reported as not used when the test holds.

``prefix.*`` stands for each key under ``prefix`` that :data:`SETTINGS` does not map;
``{!r}`` in a reason is the value.
"""
