"""Read solo-learn's linear / fine-tuning YAML recipes as mile_ssl configurations.

solo-learn users keep their runs in YAML files such as ``scripts/linear/imagenet/byol.yaml``
(keys ``pretrained_feature_extractor``, ``backbone``, ``data``, ``optimizer``,
``scheduler``, ``max_epochs``, ``devices``...). :func:`translate_solo_config` turns one
into Hydra overrides of mile_ssl's own schema, so the run is validated and recorded like
any other; every key is either mapped, or reported as unsupported, never dropped
silently. A ``mile:`` section in the file sets MILe's own options.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

SOLO_MARKERS = ("pretrained_feature_extractor", "pretrain_method")
CIFAR_DATASETS = ("cifar10", "cifar100")
PRECISIONS = {
    "16": "16-mixed",
    "16-mixed": "16-mixed",
    "bf16": "bf16-mixed",
    "bf16-mixed": "bf16-mixed",
    "32": "32-true",
    "32-true": "32-true",
}
SCHEDULERS_AS_COSINE = ("warmup_cosine", "cosine", "none")
IGNORED = {
    "name": "run names come from the Hydra run directory",
    "wandb": "mile_ssl logs with CSV or TensorBoard (trainer.logger)",
    "checkpoint": "mile_ssl keeps last.ckpt and, with trainer.checkpoint_every_n_steps, more",
    "auto_resume": "resume explicitly with trainer.resume_from",
    "hydra": "mile_ssl sets its own run directory",
}


@dataclass
class Translation:
    """A solo-learn recipe as mile_ssl overrides.

    Attributes:
        overrides: Hydra overrides for ``mile-ssl train``.
        mapping: ``(solo-learn key, mile_ssl setting)`` pairs, for the log.
        unsupported: ``(solo-learn key, reason)`` pairs for keys that have no effect.
    """

    overrides: list[str] = field(default_factory=list)
    mapping: list[tuple[str, str]] = field(default_factory=list)
    unsupported: list[tuple[str, str]] = field(default_factory=list)

    def set(self, solo_key: str, override: str) -> None:
        """Record that ``solo_key`` became ``override``."""
        self.overrides.append(override)
        self.mapping.append((solo_key, override))

    def skip(self, solo_key: str, reason: str) -> None:
        """Record that ``solo_key`` is not used, and why."""
        self.unsupported.append((solo_key, reason))

    def report(self) -> str:
        """The mapping and the unsupported keys as readable lines."""
        lines = [f"  {key} -> {value}" for key, value in self.mapping]
        if self.unsupported:
            lines.append("not used:")
            lines += [f"  {key}: {reason}" for key, reason in self.unsupported]
        return "\n".join(lines)


def is_solo_config(data: Mapping[str, Any]) -> bool:
    """Whether a YAML mapping looks like a solo-learn linear / fine-tune recipe."""
    return any(marker in data for marker in SOLO_MARKERS)


def read_solo_config(path: str | Path) -> dict[str, Any]:
    """Load a solo-learn YAML file.

    Raises:
        ValueError: If the file is not a solo-learn recipe (naming the file).
    """
    path = Path(path)
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not is_solo_config(data):
        raise ValueError(
            f"{path} is not a solo-learn linear/fine-tune recipe: it has none of the keys "
            f"{list(SOLO_MARKERS)}"
        )
    return data


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{dotted}.")
        else:
            yield dotted, value


def _value(value: Any) -> str:
    """A value in Hydra override syntax."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(_value(item) for item in value) + "]"
    if isinstance(value, str):
        return f"'{value}'" if any(char in value for char in " ,=[]{}'\"") else value
    return str(value)


def _devices_count(devices: Any) -> int:
    if isinstance(devices, list | tuple):
        return len(devices)
    if isinstance(devices, int) and devices > 0:
        return devices
    return 1


def translate_solo_config(solo: Mapping[str, Any], source: str | Path) -> Translation:
    """Map a solo-learn recipe onto mile_ssl's configuration.

    Args:
        solo: The parsed YAML.
        source: The file it came from (relative paths in it are taken relative to the
            current directory, as solo-learn does).

    Returns:
        The overrides, the mapping and the unsupported keys.

    Raises:
        ValueError: Naming the key, if a required value is missing or cannot be honoured.
    """
    translation = Translation()
    handled: set[str] = set()

    def take(key: str) -> Any:
        handled.add(key)
        node: Any = solo
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node

    checkpoint = take("pretrained_feature_extractor")
    if checkpoint in (None, "None", "none", ""):
        raise ValueError(
            f"{source}: 'pretrained_feature_extractor' must name the pretrained checkpoint "
            "that mile_ssl fine-tunes"
        )
    translation.set("pretrained_feature_extractor", f"checkpoint.path={_value(str(checkpoint))}")
    method = take("pretrain_method")
    if method is not None:
        translation.mapping.append(
            ("pretrain_method", f"{method} (recorded; the adapter reads the file)")
        )

    dataset = str(take("data.dataset") or "custom")
    backbone = take("backbone.name")
    backbone_kwargs = take("backbone.kwargs") or {}
    args_json = Path(str(checkpoint)).parent / "args.json"
    translation.overrides.append("backbone=from_checkpoint")
    if args_json.exists() or Path(str(checkpoint)).is_dir():
        translation.mapping.append(("backbone.name", "taken from the run's args.json"))
    elif backbone is not None:
        family = "torchvision" if str(backbone).startswith(("resnet", "wide_resnet")) else "timm"
        translation.set("backbone.name", f"backbone.name={family}:{backbone}")
        for key, value in dict(backbone_kwargs).items():
            translation.set(f"backbone.kwargs.{key}", f"+backbone.kwargs.{key}={_value(value)}")
    handled.add("backbone.kwargs")

    if dataset in CIFAR_DATASETS:
        raise ValueError(
            f"{source}: data.dataset={dataset} reads torchvision's CIFAR archives; mile_ssl "
            "reads image folders (root/<class>/<image>): write the images to folders and "
            "set data.dataset: custom with train_path/val_path"
        )
    translation.mapping.append(("data.dataset", f"{dataset} (image folders)"))
    train_path, val_path = take("data.train_path"), take("data.val_path")
    if train_path is None or val_path is None:
        raise ValueError(f"{source}: data.train_path and data.val_path are required")
    train_abs, val_abs = os.path.abspath(str(train_path)), os.path.abspath(str(val_path))
    root = os.path.commonpath([train_abs, val_abs])
    translation.overrides.append("data=folder")
    translation.set("data.train_path", f"data.root={_value(root)}")
    translation.set("data.train_path", f"data.train_dir={_value(os.path.relpath(train_abs, root))}")
    translation.set("data.val_path", f"data.val_dir={_value(os.path.relpath(val_abs, root))}")
    data_format = take("data.format")
    if data_format not in (None, "image_folder"):
        translation.skip("data.format", f"{data_format!r} is read as image folders by torchvision")
    workers = take("data.num_workers")
    if workers is not None:
        translation.set("data.num_workers", f"data.num_workers={workers}")
    fraction = take("data.fraction")
    if fraction is not None and float(fraction) > 0:
        translation.set("data.fraction", f"data.fraction={fraction}")

    optimizer = take("optimizer.name")
    if optimizer not in (None, "sgd"):
        translation.skip("optimizer.name", f"{optimizer!r}: mile_ssl trains with SGD (optim.*)")
    batch_size = int(take("optimizer.batch_size") or 256)
    translation.set("optimizer.batch_size", f"data.batch_size={batch_size}")
    devices = take("devices")
    nodes = int(take("num_nodes") or 1)
    lr = take("optimizer.lr")
    if lr is not None:
        scale = batch_size * _devices_count(devices) * nodes / 256
        scaled = float(lr) * scale
        translation.set("optimizer.lr", f"optim.lr={scaled:.6g}")
        log.info(
            "solo-learn's LR rule: lr %.6g x (batch %d x devices %d x nodes %d / 256) = %.6g",
            float(lr),
            batch_size,
            _devices_count(devices),
            nodes,
            scaled,
        )
    weight_decay = take("optimizer.weight_decay")
    if weight_decay is not None:
        translation.set("optimizer.weight_decay", f"optim.weight_decay={weight_decay}")
    for key, value in dict(take("optimizer.kwargs") or {}).items():
        if key in ("momentum", "nesterov"):
            translation.set(f"optimizer.kwargs.{key}", f"optim.{key}={_value(value)}")
        else:
            translation.skip(f"optimizer.kwargs.{key}", "no such option for mile_ssl's SGD")

    scheduler = take("scheduler.name")
    if scheduler is not None and scheduler not in SCHEDULERS_AS_COSINE:
        translation.skip("scheduler.name", f"{scheduler!r} replaced by warm-up + cosine")
    for key in ("lr_decay_steps", "min_lr", "warmup_start_lr", "interval"):
        if take(f"scheduler.{key}") is not None:
            translation.skip(f"scheduler.{key}", "mile_ssl uses warm-up + cosine to zero")
    warmup = take("scheduler.warmup_epochs")
    if warmup is not None and scheduler == "warmup_cosine":
        translation.set("scheduler.warmup_epochs", f"optim.warmup_epochs={warmup}")

    max_epochs = take("max_epochs")
    if max_epochs is not None:
        translation.set("max_epochs", f"trainer.max_epochs={max_epochs}")
    for key in ("accelerator", "strategy", "sync_batchnorm", "num_nodes"):
        value = take(key)
        if value is not None:
            translation.set(key, f"trainer.{key}={_value(value)}")
    if devices is not None:
        translation.set("devices", f"trainer.devices={_value(devices)}")
    precision = take("precision")
    if precision is not None:
        if str(precision) not in PRECISIONS:
            raise ValueError(
                f"{source}: precision={precision!r} is not one of {sorted(PRECISIONS)}"
            )
        translation.set("precision", f"trainer.precision={PRECISIONS[str(precision)]}")
    finetune = take("finetune")
    if not finetune:
        translation.skip(
            "finetune",
            "absent/false means a frozen backbone (linear probe) in solo-learn; MILe fine-tunes "
            "the whole network",
        )

    translation.overrides.append("method=mile")
    for key, value in dict(take("mile") or {}).items():
        translation.set(f"mile.{key}", f"mile.{key}={_value(value)}")
    handled.add("mile")

    defaults = solo.get("defaults") or []
    handled.add("defaults")
    for entry in defaults:
        if isinstance(entry, Mapping):
            for group in entry:
                if not str(group).startswith("override hydra"):
                    reason = IGNORED.get(str(group), "no such config group in mile_ssl")
                    translation.skip(f"defaults: {group}", reason)

    for key, _ in _flatten(solo):
        top = key.split(".")[0]
        if key in handled or top in ("mile",) or any(key.startswith(h + ".") for h in handled):
            continue
        translation.skip(key, IGNORED.get(top, "not supported by mile_ssl"))
    return translation
