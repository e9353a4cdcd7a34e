"""The errors of checkpoint loading, shared by reading, conversion and loading.

They live apart from every step so that each step can raise them, and a caller can catch
them, without importing the others. All are :class:`ValueError` subclasses: a file that
cannot be used is a bad value handed in by the user, not a bug. The spelling of the
settings their hints name (:class:`SettingSyntax`) lives here for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass

SHOWN = 5
"""How many offending keys an error message lists; enough to see the pattern."""


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file and the reason."""


class CheckpointMismatchError(CheckpointError):
    """The converted state dict does not match the backbone key for key and shape for shape."""


class NonFiniteWeightsError(CheckpointError):
    """A tensor the backbone would load holds NaN or infinity: fine-tuning cannot recover."""


@dataclass(frozen=True)
class SettingSyntax:
    """How a command lets its user choose the adapter and the architecture of a checkpoint.

    Errors of loading end with a hint to set one of them, and a hint in another
    command's spelling is rejected by the command that printed it: ``train`` and
    ``eval`` take Hydra overrides (``checkpoint.adapter=NAME``), ``inspect`` takes
    options (``--adapter NAME``). The loader is told which, and quotes it.

    Attributes:
        adapter: The setting choosing the adapter, ``{}`` standing for its name.
        backbone: The setting naming the architecture, ``{}`` standing for its name.
        backbone_unset: How the architecture is left to the file, in words.
        backbone_kwarg: The setting of one builder argument (``{}`` for its name, then
            its value), or ``None`` where the command takes none.
    """

    adapter: str
    backbone: str
    backbone_unset: str
    backbone_kwarg: str | None = None


OVERRIDES = SettingSyntax(
    adapter="checkpoint.adapter={}",
    backbone="backbone.name={}",
    backbone_unset="backbone=auto, the default",
    backbone_kwarg="+backbone.kwargs.{}={}",
)
"""The Hydra overrides of ``train`` and ``eval``."""

INSPECT_OPTIONS = SettingSyntax(
    adapter="--adapter {}", backbone="--backbone {}", backbone_unset="without --backbone"
)
"""The options of ``mile-ssl inspect``."""
