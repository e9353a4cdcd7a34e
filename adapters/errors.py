"""The errors of checkpoint loading, shared by reading, conversion and loading.

They live apart from every step so that each step can raise them, and a caller can catch
them, without importing the others. Both are :class:`ValueError` subclasses: a file that
cannot be used is a bad value handed in by the user, not a bug.
"""

from __future__ import annotations

SHOWN = 5
"""How many offending keys an error message lists; enough to see the pattern."""


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file and the reason."""


class CheckpointMismatchError(CheckpointError):
    """The converted state dict does not match the backbone key for key and shape for shape."""
