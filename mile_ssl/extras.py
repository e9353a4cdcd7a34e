"""Optional dependencies (pip extras), and the one message a missing one gives.

The core install fine-tunes, evaluates, predicts and exports. The rest is opt-in:
``demo`` (lightly, scikit-learn, matplotlib: the embedded demo, the digit-grid data and
the plots), ``tensorboard`` and ``wandb`` (those loggers) and ``dali`` (the
``data.backend=dali`` decoder). Code using one imports it through :func:`extra_imports`
or :func:`import_extra`, so that a machine without it gets a :class:`MissingExtraError`
naming the setting that needs it and the pip command that installs it; the command line
shows it as one message with exit status 2, as other user errors.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Literal

Extra = Literal["demo", "tensorboard", "dali", "wandb"]
"""The extras of ``pyproject.toml``'s ``[project.optional-dependencies]`` that code uses."""


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is not installed (or cannot be imported).

    An ``ImportError`` for code that guards optional imports the usual way, and a
    ``ValueError`` for the command line, which reports value errors as user errors: the
    setting that needs the extra is the user's choice.
    """


def install_command(extra: Extra) -> str:
    """The pip command that installs ``extra``."""
    return f"pip install 'mile-ssl[{extra}]'"


@contextmanager
def extra_imports(extra: Extra, needed_by: str, otherwise: str = "") -> Iterator[None]:
    """Turn an ``ImportError`` in the block into a :class:`MissingExtraError`.

    Args:
        extra: The extra that installs the block's imports.
        needed_by: What needs them, as the user names it (``data=digits``,
            ``trainer.logger=tensorboard``, ``mile-ssl demo``).
        otherwise: A way around it to add to the message (``set data.backend=...``).

    Raises:
        MissingExtraError: Naming ``needed_by``, the missing module and the pip command.
    """
    try:
        yield
    except MissingExtraError:
        raise
    except ImportError as error:
        message = f"{needed_by} needs the '{extra}' extra ({error}): {install_command(extra)}"
        raise MissingExtraError(f"{message}, or {otherwise}" if otherwise else message) from error


def import_extra(module: str, extra: Extra, needed_by: str, otherwise: str = "") -> ModuleType:
    """Import ``module`` of an extra, as :func:`extra_imports` does for a block.

    Args:
        module: Dotted module name (``nvidia.dali``).
        extra: The extra that installs it.
        needed_by: What needs it, as the user names it.
        otherwise: A way around it to add to the message.

    Returns:
        The module.

    Raises:
        MissingExtraError: If it cannot be imported.
    """
    with extra_imports(extra, needed_by, otherwise):
        return importlib.import_module(module)
