"""Range checks shared by the config dataclasses: one message shape for every key.

Each dataclass validates itself in ``__post_init__`` with these, so a value out of range
fails when the composed config is converted to objects, naming the key, what it must be
and what it was.
"""

from __future__ import annotations

from typing import Any


def require(condition: bool, key: str, expected: str, value: Any) -> None:
    """Refuse ``value`` for ``key`` unless ``condition`` holds.

    Args:
        condition: Whether the value is acceptable.
        key: The dotted config key, as the user writes it (``mile.rho``).
        expected: What the value must be, completing "must be ...".
        value: The value given.

    Raises:
        ValueError: Naming the key, the expectation and the value.
    """
    if not condition:
        raise ValueError(f"config key '{key}' must be {expected}, got {value!r}")


def require_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    """Refuse a value of ``key`` that is not one of ``choices``.

    Raises:
        ValueError: Naming the key, the choices and the value.
    """
    require(value in choices, key, f"one of {list(choices)}", value)
