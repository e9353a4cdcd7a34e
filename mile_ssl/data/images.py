"""Reading image files: the project's one decoder, its errors, and finding image files.

Every image of the package is decoded by :func:`load_rgb` (or, for training crops, by
:mod:`mile_ssl.data.augment`, which fails the same way), so that every code path decodes
alike and names the file it could not read.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
"""File endings (any case) taken as images when folders are searched."""

DECODE_ERRORS: tuple[type[Exception], ...] = (
    OSError,  # includes UnidentifiedImageError, truncated data, missing files
    SyntaxError,  # some PIL plugins reject malformed headers with it
    ValueError,
    EOFError,
    IndexError,
    struct.error,
    Image.DecompressionBombError,
)
"""What PIL raises for a file that is not a decodable image (empty, truncated, not an
image, corrupt, or a decompression bomb). Anything else is a bug and propagates."""

_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
"""Single-channel modes that hold 16-bit samples (``I`` is what 16-bit data becomes
after some conversions; values are taken as 0..65535)."""


class UnreadableImageError(ValueError):
    """An image file that cannot be decoded.

    A ``ValueError`` so that, if it reaches the command line, it is reported as a user
    error naming the file.

    Attributes:
        path: The file.
        reason: Why it cannot be read, in words (e.g. ``empty file (0 bytes)``).
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: cannot be read as an image ({reason})")
        self.path = str(path)
        self.reason = reason


def describe_decode_error(path: str | Path, error: BaseException) -> str:
    """Why ``path`` could not be decoded, in words a user can act on."""
    if isinstance(error, FileNotFoundError):
        return "file does not exist"
    try:
        size = os.path.getsize(path)
    except OSError:
        size = None
    if size == 0:
        return "empty file (0 bytes)"
    if isinstance(error, UnidentifiedImageError):
        return "not an image file PIL can read"
    if isinstance(error, Image.DecompressionBombError):
        return f"too many pixels (PIL's decompression-bomb limit): {error}"
    message = str(error) or type(error).__name__
    if "truncated" in message.lower():
        return f"truncated file: {message}"
    return f"{type(error).__name__}: {message}"


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB, with 16-bit samples scaled down instead of clipped.

    PIL opens 16-bit greyscale files (PNG, TIFF) in mode ``I;16`` / ``I``, and its
    ``convert("RGB")`` clips those values at 255, which turns almost every pixel white.
    Here they are divided by 256 (``value >> 8``) first. 16-bit RGB(A) and grey+alpha
    files are already reduced to 8 bits by PIL when opened.
    """
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64)
        eight_bit = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(eight_bit).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode the image file ``path`` as 8-bit RGB; the project's only image loader.

    Everything that reads image files (training, validation, unlabeled images,
    ``predict``) goes through here, so every code path decodes alike (16-bit files
    included, see :func:`to_rgb`) and fails alike.

    Raises:
        UnreadableImageError: Naming the file and why, if it is missing, empty,
            truncated, not an image or otherwise not decodable.
    """
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except DECODE_ERRORS as error:
        raise UnreadableImageError(path, describe_decode_error(path, error)) from error


_SUFFIX_TUPLE = tuple(sorted(IMAGE_SUFFIXES))


def is_image_file(name: str | Path) -> bool:
    """Whether ``name`` ends in one of :data:`IMAGE_SUFFIXES` (any case).

    The test torchvision's ``ImageFolder`` applies, which decided the sample order of
    earlier runs; keeping it keeps their indices valid for a resume.
    """
    return str(name).lower().endswith(_SUFFIX_TUPLE)


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Image files named in ``inputs``: files as given, folders searched recursively.

    Folder contents are sorted so that results come in a stable order; a file reached
    twice is listed once.

    Raises:
        FileNotFoundError: Naming an input that does not exist.
        ValueError: Naming a folder without images, or if no input was given.
    """
    found: dict[Path, None] = {}
    for entry in inputs:
        path = Path(entry)
        if path.is_dir():
            found.update(dict.fromkeys(_images_under(path)))
        elif path.is_file():
            found[path] = None
        else:
            raise FileNotFoundError(f"image or folder not found: {path}")
    if not found:
        raise ValueError("no images given: pass image files or folders")
    return list(found)


NOT_FOUND = "no such file or folder"
"""Why :func:`find_inputs` could not use an input that does not exist."""

BROKEN_LINK = "broken symbolic link"
"""Start of why :func:`find_inputs` could not use a link whose target does not exist."""


def find_inputs(inputs: Iterable[str | Path]) -> list[tuple[Path, str | None]]:
    """Image files named in ``inputs``, each with why it cannot be used, if it cannot.

    As :func:`collect_images`, but an input that does not exist, or a symbolic link
    whose target does not exist (given, or found in a folder), is listed with the
    reason (:data:`NOT_FOUND`, or :data:`BROKEN_LINK` and its target) instead of
    stopping the search or being passed over.

    Raises:
        ValueError: Naming a folder without images (broken links count as images), or
            if no input was given.
    """
    found: dict[Path, str | None] = {}
    for entry in inputs:
        path = Path(entry)
        if path.is_dir():
            images = _images_under(path, broken_links=True)
            found.update((image, _missing_reason(image)) for image in images)
        else:
            found[path] = _missing_reason(path)
    if not found:
        raise ValueError("no images given: pass image files or folders")
    return list(found.items())


def _images_under(folder: Path, broken_links: bool = False) -> list[Path]:
    """Image files at any depth under ``folder``, sorted, hidden ones left out.

    Args:
        folder: The folder to search.
        broken_links: Also list symbolic links to image names whose target is gone.

    Raises:
        ValueError: Naming the folder, if it holds no image.
    """
    images = sorted(
        child
        for child in folder.rglob("*")
        if (child.is_file() or (broken_links and _is_broken_link(child)))
        and child.suffix.lower() in IMAGE_SUFFIXES
        and not child.name.startswith(".")
    )
    if not images:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {folder}")
    return images


def _is_broken_link(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def _missing_reason(path: Path) -> str | None:
    """Why the file ``path`` cannot be used because it is not there, or ``None``."""
    if path.is_file():
        return None
    if _is_broken_link(path):
        return f"{BROKEN_LINK} to {os.readlink(path)}, which does not exist"
    return "not a regular file" if path.exists() else NOT_FOUND


def holds_image(folder: str | Path) -> bool:
    """Whether ``folder`` holds an image file at any depth (stops at the first)."""
    for _, _, names in os.walk(folder, followlinks=True):
        if any(is_image_file(name) for name in names):
            return True
    return False


def absolute_path(path: str | Path) -> str:
    """The normalised absolute form of ``path``, for comparing paths of two runs."""
    return os.path.normpath(os.path.abspath(os.path.expanduser(str(path))))
