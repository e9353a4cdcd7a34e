"""solo-learn recipes with solo-learn's command line: ``--config-path DIR --config-name R``.

:func:`expand_solo_command` takes the recipe and the command line after it, applies the
overrides of solo-learn keys (``pretrained_feature_extractor=PATH``,
``data.train_path=DIR``, ``++key=value``...) to the recipe before translating it
(:func:`mile_ssl.solo.recipes.translate_solo_config`), and puts mile_ssl overrides
(``trainer.max_steps=2``...) last, so that what the user typed wins over any value the
translation derives.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.types import Override, OverrideType

from mile_ssl.config.overrides import override_key
from mile_ssl.solo.recipes import (
    Translation,
    is_solo_config,
    read_solo_config,
    translate_solo_config,
)

log = logging.getLogger("mile_ssl")

MILE_ROOTS = frozenset({"method", "mile", "distill", "optim", "trainer", "experiment", "hydra"})
"""Top-level keys only mile_ssl has: overrides under them are never solo-learn's."""


@dataclass
class SoloCommand:
    """``mile-ssl train --config-path DIR --config-name RECIPE [OVERRIDES]`` taken apart.

    Attributes:
        recipe: The recipe file.
        translation: The recipe, with the solo-learn overrides applied, as mile_ssl
            overrides (derived values the command line replaces removed).
        arguments: The arguments for ``mile-ssl train``: the translation's overrides,
            then the command line's mile_ssl overrides and flags, which win.
    """

    recipe: Path
    translation: Translation
    arguments: list[str]


def find_solo_recipe(args: Sequence[str]) -> tuple[Path | None, list[str]]:
    """The solo-learn recipe named by ``--config-path/--config-name``, and the other args.

    Returns:
        ``(None, args)`` when the arguments name no solo-learn recipe (a mile_ssl config
        directory is left to Hydra).
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config-path", "-cp")
    parser.add_argument("--config-name", "-cn")
    known, rest = parser.parse_known_args(list(args))
    directory, name = known.config_path, known.config_name
    if directory is None or name is None:
        return None, list(args)
    path = Path(directory) / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    if not path.is_file():
        return None, list(args)
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not is_solo_config(data):
        return None, list(args)
    return path, rest


def _is_solo_override(override: Override, recipe: Mapping[str, Any]) -> bool:
    """Whether a command-line override addresses the recipe (solo-learn's keys).

    As in solo-learn: a key of the recipe, or a new key added with ``+``/``++``. A
    group choice (``data=folder``) and keys only mile_ssl has are mile_ssl overrides.
    """
    key = override.key_or_group
    if key.split(".")[0] in MILE_ROOTS:
        return False
    if override.type in (OverrideType.ADD, OverrideType.FORCE_ADD):
        return True
    node: Any = recipe
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return not isinstance(node, Mapping) or override.type is OverrideType.DEL


def _apply(recipe: dict[str, Any], override: Override) -> None:
    """Set (or delete) one dotted key of the recipe, as Hydra would."""
    *parents, leaf = override.key_or_group.split(".")
    node = recipe
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    if override.type is OverrideType.DEL:
        node.pop(leaf, None)
    else:
        node[leaf] = override.value()


def expand_solo_command(
    recipe: Path, args: Sequence[str], require_checkpoint: bool = True
) -> SoloCommand:
    """Translate a recipe with the command line given after it, as solo-learn reads both.

    Args:
        recipe: The recipe named by ``--config-path/--config-name``.
        args: The rest of the command line: solo-learn overrides
            (``pretrained_feature_extractor=PATH``, ``max_epochs=2``, ``++seed=1``),
            mile_ssl overrides (``trainer.max_steps=2``, ``data.image_size=64``) and
            Hydra flags (``-m``, ``--cfg job``), in any order.
        require_checkpoint: Fail when neither the recipe nor the command line names
            the pretrained checkpoint (training needs it; a translated config file can
            leave it for later).

    Raises:
        ValueError: Naming the recipe and key: a sweep over a solo-learn key, or a
            recipe whose checkpoint is still ``None`` and no command-line value for it.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from mile_ssl.config.overrides import quote_paths_with_equals

    solo = read_solo_config(recipe)
    parser = OverridesParser.create()
    mile_args: list[str] = []
    accelerator: str | None = None  # the command line's, which decides what devices means
    for arg in quote_paths_with_equals(args):
        if arg.startswith("-") or "=" not in arg:
            mile_args.append(arg)
            continue
        override = parser.parse_overrides([arg])[0]
        if not _is_solo_override(override, solo):
            mile_args.append(arg)
            if override.key_or_group == "trainer.accelerator":
                value = override.value()
                accelerator = value if isinstance(value, str) else None
        elif override.is_sweep_override():
            raise ValueError(
                f"{arg}: sweeping a solo-learn key of {recipe} is not supported; sweep the "
                "mile_ssl key it maps to (mile-ssl from-solo shows the mapping)"
            )
        else:
            _apply(solo, override)
    translation = translate_solo_config(solo, recipe, accelerator)
    given = frozenset(
        override_key(arg) for arg in mile_args if "=" in arg and not arg.startswith("-")
    )
    translation.drop_overridden(given)
    missing = translation.needs_checkpoint and not given & {"checkpoint.path", "checkpoint"}
    if require_checkpoint and missing:
        raise ValueError(
            f"{recipe}: pretrained_feature_extractor is None; pass the pretrained checkpoint "
            "on the command line, as with solo-learn: pretrained_feature_extractor=PATH"
        )
    return SoloCommand(recipe, translation, [*translation.overrides, *mile_args])


def expand_solo_recipe(args: Sequence[str]) -> list[str]:
    """``mile-ssl train`` arguments with a solo-learn recipe replaced by its overrides.

    A recipe given as the primary config becomes the overrides it means (the
    translation is logged); other arguments pass as they are.
    """
    recipe, rest = find_solo_recipe(args)
    if recipe is None:
        return list(args)
    command = expand_solo_command(recipe, rest)
    _log_translation(recipe, command.translation)
    return command.arguments


def _log_translation(path: Path, translation: Translation) -> None:
    log.info("solo-learn recipe %s:\n%s", path, translation.report())
    for warning in translation.warnings:
        log.warning("%s: %s", path, warning)
    if translation.unsupported:
        log.warning(
            "keys of %s that mile_ssl does not use: %s",
            path,
            ", ".join(key for key, _ in translation.unsupported),
        )
