"""Read solo-learn's linear / fine-tuning YAML recipes as mile_ssl configurations.

solo-learn users keep their runs in YAML files such as ``scripts/linear/imagenet/byol.yaml``
(keys ``pretrained_feature_extractor``, ``backbone``, ``data``, ``optimizer``,
``scheduler``, ``max_epochs``, ``devices``...). :func:`translate_solo_config` turns one
into Hydra overrides of mile_ssl's own schema, so the run is validated and recorded like
any other; every key is either mapped, or reported as unsupported, never dropped
silently. A ``mile:`` section in the file sets MILe's own options.

:mod:`mile_ssl.solo.command_line` runs a recipe with solo-learn's command line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mile_ssl.config.overrides import MOVED_KEYS, STEPS_OVER_EPOCHS, override_key
from mile_ssl.solo.keys import NOT_USED, SETTINGS, RecipeReader, trains_as

log = logging.getLogger(__name__)

SOLO_MARKERS = ("pretrained_feature_extractor", "pretrain_method")
CIFAR_DATASETS = ("cifar10", "cifar100")
IGNORED = {
    "name": "run names come from the Hydra run directory",
    "wandb": "mile_ssl logs with CSV or TensorBoard (trainer.logger)",
    "checkpoint": "mile_ssl keeps last.ckpt and, with trainer.checkpoint_every_n_steps, more",
    "auto_resume": "resume explicitly with trainer.resume_from",
    "hydra": "mile_ssl sets its own run directory",
}
TABLE_KWARGS = frozenset(
    solo_key.removeprefix("backbone.kwargs.")
    for solo_key, _, _ in SETTINGS
    if solo_key.startswith("backbone.kwargs.")
)
"""Builder arguments the table maps to mile_ssl keys (``drop_path_rate``), not kwargs."""
LAYER_DECAY_NOTE = (
    "optimizer.layer_decay={}: mile_ssl scales each layer's rate by it, numbering layers as "
    "BEiT and MAE do (docs/vit_recipe.md); solo-learn computes these scales with timm's "
    "numbering (one factor higher, the last block at the full rate) but applies none of "
    "them (neither its optimiser nor its scheduler reads the groups' lr_scale), so its "
    "runs train every layer at one rate: optim.layer_decay=null does the same"
)


@dataclass
class Translation:
    """A solo-learn recipe as mile_ssl overrides.

    Attributes:
        overrides: Hydra overrides for ``mile-ssl train``.
        mapping: ``(solo-learn key, mile_ssl setting)`` pairs, for the log.
        unsupported: ``(solo-learn key, reason)`` pairs for keys that have no effect.
        warnings: Settings that change how the run behaves compared with solo-learn.
        needs_checkpoint: The recipe's ``pretrained_feature_extractor`` is unset
            (``None``, as published): the command line must give it.
    """

    overrides: list[str] = field(default_factory=list)
    mapping: list[tuple[str, str]] = field(default_factory=list)
    unsupported: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    needs_checkpoint: bool = False

    def set(self, solo_key: str, override: str, note: str = "") -> None:
        """Record that ``solo_key`` became ``override`` (``note`` says more, in the mapping)."""
        self.overrides.append(override)
        self.mapping.append((solo_key, f"{override} ({note})" if note else override))

    def skip(self, solo_key: str, reason: str) -> None:
        """Record that ``solo_key`` is not used, and why."""
        self.unsupported.append((solo_key, reason))

    def drop_overridden(self, keys: frozenset[str]) -> None:
        """Remove derived overrides of ``keys``, which the user sets on the command line.

        Setting ``trainer.max_steps`` also removes the ``trainer.max_epochs`` the recipe's
        ``max_epochs`` became (it would replace the steps), and likewise for warm-up.
        """
        replaced = set(keys)
        for given, derived in STEPS_OVER_EPOCHS:
            if given in keys:
                replaced.add(derived)
        self.overrides = [item for item in self.overrides if override_key(item) not in replaced]
        self.mapping = [
            (solo_key, f"{value} (replaced on the command line)")
            if override_key(value) in replaced
            else (solo_key, value)
            for solo_key, value in self.mapping
        ]

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
    """Load a solo-learn YAML file as Hydra would (``5e-4`` is a number, not a string).

    Raises:
        FileNotFoundError: If there is no such file.
        ValueError: If the file is not valid YAML or not a solo-learn recipe (naming it).
    """
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"solo-learn recipe not found: {path}")
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (yaml.YAMLError, ValueError) as exc:
        raise ValueError(f"cannot read solo-learn recipe {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a solo-learn recipe: it holds no mapping")
    recipe = {str(key): value for key, value in data.items()}
    if not is_solo_config(recipe):
        raise ValueError(
            f"{path} is not a solo-learn linear/fine-tune recipe: it has none of the keys "
            f"{list(SOLO_MARKERS)}"
        )
    return recipe


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


def translate_solo_config(
    solo: Mapping[str, Any], source: str | Path, accelerator: str | None = None
) -> Translation:
    """Map a solo-learn recipe onto mile_ssl's configuration.

    The keys that map one to one are :data:`~mile_ssl.solo.keys.SETTINGS`, those that
    have no effect :data:`~mile_ssl.solo.keys.NOT_USED`; the checkpoint and backbone, the
    image folders, the ``mile:`` section and ``defaults`` are the special cases. Any
    other key is reported as not used.

    Args:
        solo: The parsed YAML.
        source: The file it came from (relative paths in it are taken relative to the
            current directory, as solo-learn does).
        accelerator: The accelerator the command line sets (``trainer.accelerator``),
            which wins over the recipe's.

    Returns:
        The overrides, the mapping and the unsupported keys.

    Raises:
        ValueError: Naming the key, if a required value is missing or cannot be honoured.
    """
    recipe = RecipeReader(solo, source, accelerator or solo.get("accelerator"))
    translation = Translation()
    _checkpoint_and_backbone(recipe, translation)
    _image_folders(recipe, translation)
    for solo_key, mile_key, transform in SETTINGS:
        given = recipe.take(solo_key)
        value = transform(given, recipe)
        if value is not None:
            note = "solo-learn's default" if given is None else ""
            translation.set(solo_key, f"{mile_key}={_value(value)}", note)
    for solo_key, applies, reason in NOT_USED:
        for key, value in recipe.take_all(solo_key):
            if applies(value):
                translation.skip(key, reason.format(value))
    _optimizer_notes(recipe, translation)
    _mile_section(recipe, translation)
    _defaults(recipe, translation)
    for key in recipe.unread():
        translation.skip(key, IGNORED.get(key.split(".")[0], "not supported by mile_ssl"))
    return translation


def _checkpoint_and_backbone(recipe: RecipeReader, translation: Translation) -> None:
    """The pretrained checkpoint; the backbone from its run's ``args.json``, or the recipe's."""
    checkpoint = recipe.take("pretrained_feature_extractor")
    if checkpoint in (None, "None", "none", ""):
        translation.needs_checkpoint = True
        checkpoint = None
    else:
        translation.set(
            "pretrained_feature_extractor", f"checkpoint.path={_value(str(checkpoint))}"
        )
    method = recipe.take("pretrain_method")
    if method is not None:
        translation.mapping.append(
            ("pretrain_method", f"{method} (recorded; the adapter reads the file)")
        )
    backbone = recipe.take("backbone.name")
    kwargs = {
        key: value
        for key, value in dict(recipe.take("backbone.kwargs") or {}).items()
        if key not in TABLE_KWARGS
    }
    run_args = _run_args(checkpoint)
    if run_args is not None:
        _check_run_backbone(run_args, backbone, recipe.source)
        translation.mapping.append(("backbone.name", "taken from the run's args.json"))
        for key in kwargs:
            translation.skip(
                f"backbone.kwargs.{key}", "the architecture comes from the run's args.json"
            )
    elif backbone is not None:
        translation.set("backbone.name", f"backbone.name={_backbone_spec_name(str(backbone))}")
        for key, value in kwargs.items():
            translation.set(f"backbone.kwargs.{key}", f"+backbone.kwargs.{key}={_value(value)}")


def _optimizer_notes(recipe: RecipeReader, translation: Translation) -> None:
    """Where the optimiser the table set trains differently from solo-learn's.

    solo-learn applies no layer-wise rates (:data:`LAYER_DECAY_NOTE`). Its weight decay
    spares 1-D parameters (norms, biases) only with ``optimizer.exclude_bias_n_norm_wd``
    or ``layer_decay`` (which also spares the backbone's ``no_weight_decay()``);
    mile_ssl's AdamW always spares them and its SGD never does.
    """
    layer_decay = recipe.take("optimizer.layer_decay")
    if layer_decay is not None and float(layer_decay) > 0:
        translation.warnings.append(LAYER_DECAY_NOTE.format(layer_decay))
    exclude = recipe.take("optimizer.exclude_bias_n_norm_wd")
    spares = bool(exclude) or (layer_decay is not None and float(layer_decay) > 0)
    decays = float(recipe.take("optimizer.weight_decay") or 0) > 0
    optimizer = trains_as(recipe)
    if exclude and optimizer == "adamw":
        translation.mapping.append(
            ("optimizer.exclude_bias_n_norm_wd", "mile_ssl's AdamW never decays norms, biases")
        )
    elif exclude:
        translation.skip(
            "optimizer.exclude_bias_n_norm_wd",
            "mile_ssl's SGD decays every weight (its AdamW spares norms and biases)",
        )
    elif decays and spares != (optimizer == "adamw"):
        translation.warnings.append(
            f"optimizer.weight_decay: solo-learn's {recipe.take('optimizer.name')} "
            f"{'spares' if spares else 'decays'} norms and biases here; mile_ssl's "
            f"{optimizer} {'decays them' if optimizer == 'sgd' else 'never decays them'}"
        )


def _image_folders(recipe: RecipeReader, translation: Translation) -> None:
    """``data.train_path`` and ``val_path`` as a root and two folders; ``data.format``."""
    dataset = str(recipe.take("data.dataset") or "custom")
    if dataset in CIFAR_DATASETS:
        raise ValueError(
            f"{recipe.source}: data.dataset={dataset} reads torchvision's CIFAR archives; "
            "mile_ssl reads image folders (root/<class>/<image>): write the images to "
            "folders and set data.dataset: custom with train_path/val_path"
        )
    translation.mapping.append(("data.dataset", f"{dataset} (image folders)"))
    train_path, val_path = recipe.take("data.train_path"), recipe.take("data.val_path")
    if train_path is None or val_path is None:
        raise ValueError(f"{recipe.source}: data.train_path and data.val_path are required")
    train_abs, val_abs = os.path.abspath(str(train_path)), os.path.abspath(str(val_path))
    root = os.path.commonpath([train_abs, val_abs])
    translation.overrides.append("data=folder")
    translation.set("data.train_path", f"data.root={_value(root)}")
    translation.set("data.train_path", f"data.train_dir={_value(os.path.relpath(train_abs, root))}")
    translation.set("data.val_path", f"data.val_dir={_value(os.path.relpath(val_abs, root))}")
    data_format = recipe.take("data.format")
    if data_format == "dali":
        translation.set("data.format", "data.backend=dali")
    elif data_format not in (None, "image_folder"):
        translation.skip("data.format", f"{data_format!r} is read as image folders by torchvision")
        translation.warnings.append(
            f"data.format: {data_format} is not available in mile_ssl; the images are read "
            "as image folders with torchvision and PIL instead (same files, same labels)"
        )


def _mile_section(recipe: RecipeReader, translation: Translation) -> None:
    """The recipe's ``mile:`` section: MILe's own options, set as they are."""
    translation.overrides.append("method=mile")
    for key, value in dict(recipe.take("mile") or {}).items():
        moved = MOVED_KEYS.get(f"mile.{key}")
        if moved is not None:
            raise ValueError(
                f"{recipe.source}: mile.{key} moved to {moved}, which a solo-learn recipe "
                f"cannot set; give it on the command line ({moved}={_value(value)})"
            )
        translation.set(f"mile.{key}", f"mile.{key}={_value(value)}")


def _defaults(recipe: RecipeReader, translation: Translation) -> None:
    """solo-learn's config groups (``defaults: [wandb: ...]``), which mile_ssl does not have."""
    for entry in recipe.take("defaults") or []:
        if isinstance(entry, Mapping):
            for group in entry:
                if not str(group).startswith("override hydra"):
                    reason = IGNORED.get(str(group), "no such config group in mile_ssl")
                    translation.skip(f"defaults: {group}", reason)


SOLO_VITS = {
    f"vit_{size}": f"vit_{size}_patch16_224" for size in ("tiny", "small", "base", "large")
}
"""solo-learn's ViT names and the timm models they build (``solo/backbones/vit``)."""


def _backbone_spec_name(name: str) -> str:
    """solo-learn's backbone name as a mile_ssl ``backbone.name``."""
    if ":" in name:
        return name
    if name.startswith(("resnet", "wide_resnet")):
        return f"torchvision:{name}"
    return f"timm:{SOLO_VITS.get(name, name)}"


def _run_args(checkpoint: Any) -> dict[str, Any] | None:
    """The ``args.json`` of the run that wrote ``checkpoint`` (a file or its folder)."""
    from mile_ssl.adapters.solo_learn import ARGS_FILE, read_run_args

    if checkpoint is None:
        return None
    path = Path(str(checkpoint))
    return read_run_args(path / ARGS_FILE if path.is_dir() else path)


def _check_run_backbone(run_args: Mapping[str, Any], backbone: Any, source: str | Path) -> None:
    """Refuse a recipe whose ``backbone.name`` is not the pretrained run's backbone.

    solo-learn would load such a pair with ``strict=False`` and fine-tune mostly random
    weights; here it is an error that says which name to use.
    """
    from mile_ssl.adapters.solo_learn import backbone_name

    trained = backbone_name(run_args)
    if backbone is not None and trained is not None and str(backbone) != trained:
        raise ValueError(
            f"{source}: backbone.name={backbone} but the pretrained run's args.json says "
            f"{trained!r}; pass backbone.name={trained} on the command line"
        )
