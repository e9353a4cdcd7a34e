"""Command-line overrides as the user meant them, before Hydra composes them.

Four corrections, each for a mistake Hydra would report badly or not at all: a key that
moved to another group (Hydra would only say the old one does not exist), a misspelt key
(Hydra suggests adding it with ``+``; :mod:`mile_ssl.config.keys` names the key meant), a value
holding ``=`` (Hydra's grammar refuses it unquoted), and steps given on the command line
next to a recipe that counts in epochs (the recipe's epochs would silently win).
"""

from __future__ import annotations

from collections.abc import Sequence

from mile_ssl.config.keys import refuse_unknown_key

MOVED_KEYS = {
    "mile.strong_student_view": "data.strong_student_view",
    "mile.unlabeled_ratio": "data.unlabeled_ratio",
}
"""Old key -> its new name. Both drive the baselines too, so they are data options."""


def refuse_moved_key(key: str) -> None:
    """Refuse a key that was renamed, naming the key to use instead.

    Args:
        key: A dotted config key, with or without Hydra's ``+``/``++``/``~`` prefix.

    Raises:
        ValueError: If ``key`` moved.
    """
    bare = key.lstrip("+~")
    if bare in MOVED_KEYS:
        raise ValueError(f"config key '{bare}' moved to '{MOVED_KEYS[bare]}'; set that instead")


STEPS_OVER_EPOCHS = (
    ("trainer.max_steps", "trainer.max_epochs"),
    ("optim.warmup_steps", "optim.warmup_epochs"),
)
"""(key, key it would be replaced by): a preset's epochs must not override typed steps."""


def normalise_overrides(overrides: Sequence[str]) -> list[str]:
    """Command-line overrides as the user meant them.

    A key that moved is refused, naming its new name (:data:`MOVED_KEYS`), and a key the
    schema lacks, naming the closest (:func:`~mile_ssl.config.keys.refuse_unknown_key`). Values
    holding ``=`` are quoted (:func:`quote_paths_with_equals`), and steps given on
    the command line win over epochs a preset or recipe sets: ``trainer.max_steps=2``
    with ``experiment=imagenet/mocov2_1pct`` (which sets ``trainer.max_epochs``) trains
    two steps, because ``trainer.max_epochs=null`` is added unless the user sets it too.
    """
    quoted = quote_paths_with_equals(overrides)
    keys = [override_key(override) for override in quoted]
    for key in keys:
        refuse_moved_key(key)
    for override in quoted:
        refuse_unknown_key(override)
    added = [
        f"{epochs}=null"
        for steps, epochs in STEPS_OVER_EPOCHS
        if steps in keys and epochs not in keys
    ]
    return [*quoted, *added]


HYDRA_VALUE_FLAGS = frozenset(
    {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn"}
    | {"--config-dir", "-cd", "--experimental-rerun", "--info", "-i"}
)
"""Hydra's command-line flags that take the next word as their value."""


def overrides_first(args: Sequence[str]) -> list[str]:
    """``args`` with the overrides before Hydra's flags, in their order.

    Hydra reads all overrides as one positional argument: an override after a flag, as
    one added to ``mile-ssl train trainer.max_steps=2 --cfg job`` would be, is refused as
    an unrecognised argument.
    """
    overrides: list[str] = []
    flags: list[str] = []
    for index, arg in enumerate(args):
        value = index > 0 and args[index - 1] in HYDRA_VALUE_FLAGS
        is_override = "=" in arg and not arg.startswith("-") and not value
        (overrides if is_override else flags).append(arg)
    return [*overrides, *flags]


def override_key(override: str) -> str:
    """The dotted key of a Hydra override string (``+a.b=1`` -> ``a.b``)."""
    return override.partition("=")[0].lstrip("+~")


def quote_paths_with_equals(overrides: Sequence[str]) -> list[str]:
    """Quote override values that hold ``=``, which Hydra's grammar refuses unquoted.

    Checkpoint names often contain ``=`` (solo-learn's ``byol-<id>-ep=399.ckpt``,
    Lightning's ``epoch=99-step=1.ckpt``); ``checkpoint.path=run/epoch=99.ckpt`` is
    meant as one path, so it is passed to Hydra as ``checkpoint.path='run/epoch=99.ckpt'``.
    Overrides Hydra parses as they are, and flags, are left alone.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    quoted = []
    for override in overrides:
        key, separator, value = override.partition("=")
        if override.startswith("-") or "=" not in value or value[:1] in ("'", '"'):
            quoted.append(override)
            continue
        try:
            parser.parse_overrides([override])
        except OverrideParseException:
            escaped = value.replace("'", "\\'")
            override = f"{key}{separator}'{escaped}'"
        quoted.append(override)
    return quoted
