"""Find unreadable image files before a run: a fast, parallel, cached scan.

A run replaces each image it cannot decode by another one of its class (see
:class:`~mile_ssl.data.folder.LabeledImageFolder`), so a few bad files cost nothing
but a line in ``bad_images.txt``. This scan (``mile-ssl check-data``) lists them all
up front, so they can be fixed before a long run starts.

What the default scan checks, per file: that it is not empty, that PIL identifies it
and reads its header (format, size), and, for JPEG, PNG and GIF, that it ends with the
format's end marker; a file without one (typically cut off by an interrupted copy) is
decoded in full to tell truncated from merely padded. Decoding only those keeps the scan
at a few header bytes per file; the price is that damage inside a file that looks
complete passes: corrupt compressed data (a PNG's IDAT chunks, a JPEG's scan), or a
file cut off and then given a new end marker. Training finds those when it decodes them.

The full scan (``decode=True``, ``mile-ssl check-data --decode``) decodes every file as
training does (:func:`~mile_ssl.data.images.load_rgb`), so it finds those as well, at
the cost of reading and decoding every byte.

Both scans are cached (:mod:`mile_ssl.data.scan_cache`): a second scan of an unchanged
tree reads no image at all.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from PIL import Image

from mile_ssl.config import DataConfig
from mile_ssl.data.images import (
    DECODE_ERRORS,
    UnreadableImageError,
    describe_decode_error,
    holds_image,
    is_image_file,
    load_rgb,
)
from mile_ssl.data.listing import list_unlabeled_images
from mile_ssl.data.scan_cache import (
    DECODE_SECTION,
    HEADER_SECTION,
    default_cache_path,
    read_cache,
    unchanged,
    write_cache,
)

log = logging.getLogger(__name__)

CHUNK = 256
"""Files per thread task: large enough to keep the pool's overhead small."""

_END_MARKERS = {
    "JPEG": b"\xff\xd9",
    "PNG": b"IEND\xaeB`\x82",
    "GIF": b";",
}
"""What a complete file of each format ends with (trailing padding is tolerated)."""

_PADDING = b"\x00\r\n \t"


@dataclass(frozen=True)
class ScanResult:
    """Outcome of a scan.

    Attributes:
        bad: ``(path, reason)`` of every unreadable file, sorted by path.
        checked: Files checked in all (read now or answered by the cache).
        from_cache: Of ``checked``, those answered by the cache without reading.
        cache: The cache file used, if any.
        decoded: Whether every file was decoded in full (else: the header scan).
    """

    bad: list[tuple[str, str]]
    checked: int
    from_cache: int
    cache: Path | None = None
    decoded: bool = False


def check_image(path: str | Path, decode: bool = False) -> str | None:
    """Why the image file ``path`` cannot be read, or ``None`` when it can.

    Reads the header, and the whole file only when its end marker is missing (see the
    module's description); ``decode=True`` decodes it in full whatever it looks like.
    """
    try:
        size = os.path.getsize(path)
    except OSError as error:
        return describe_decode_error(path, error)
    return _reason(path, size, decode)


def _reason(path: str | Path, size: int, decode: bool = False) -> str | None:
    """:func:`check_image` for a file of ``size`` bytes."""
    if size == 0:
        return "empty file (0 bytes)"
    if decode:
        return _decode_reason(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
            image_format = image.format
    except DECODE_ERRORS as error:
        return describe_decode_error(path, error)
    if width < 1 or height < 1:
        return f"image of {width} x {height} pixels"
    if _lacks_end_marker(path, image_format, size):
        try:
            load_rgb(path)
        except UnreadableImageError as error:
            return error.reason
    return None


def _decode_reason(path: str | Path) -> str | None:
    """Why decoding ``path`` in full fails, as training's would, or ``None``."""
    try:
        width, height = load_rgb(path).size
    except UnreadableImageError as error:
        return error.reason
    if width < 1 or height < 1:
        return f"image of {width} x {height} pixels"
    return None


def _lacks_end_marker(path: str | Path, image_format: str | None, size: int) -> bool:
    marker = _END_MARKERS.get(image_format or "")
    if marker is None:
        return False
    with open(path, "rb") as handle:
        handle.seek(max(0, size - 64))
        tail = handle.read().rstrip(_PADDING)
    return not tail.endswith(marker)


def _check_many(
    paths: Sequence[str], decode: bool = False
) -> list[tuple[str, int, int, str | None]]:
    """``(path, size, mtime_ns, reason)`` of each file (size -1: it could not be stat'ed)."""
    results: list[tuple[str, int, int, str | None]] = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError as error:
            results.append((path, -1, -1, describe_decode_error(path, error)))
            continue
        reason = _reason(path, stat.st_size, decode)
        results.append((path, stat.st_size, stat.st_mtime_ns, reason))
    return results


def scan_images(
    paths: Iterable[str | Path],
    cache: Path | None = None,
    workers: int | None = None,
    *,
    decode: bool = False,
) -> ScanResult:
    """Check every file of ``paths`` (see :func:`check_image`), in parallel threads.

    Args:
        paths: Image files.
        cache: JSON cache file (created if missing); ``None`` reads every file.
        workers: Threads (default: 4 per CPU, at most 32, as the header scan mostly
            waits for the disk; one per CPU when decoding, which PIL does without
            holding the interpreter).
        decode: Decode every file in full instead of the header scan.

    Returns:
        The unreadable files with reasons, and how many files were checked.
    """
    section = DECODE_SECTION if decode else HEADER_SECTION
    files = sorted(dict.fromkeys(os.path.abspath(path) for path in paths))
    cached = read_cache(cache, section) if cache is not None else {}
    bad: list[tuple[str, str]] = []
    to_read: list[str] = []
    from_cache = 0
    for path in files:
        entry = cached.get(path)
        if entry is not None and unchanged(path, entry):
            from_cache += 1
            if entry[2] is not None:
                bad.append((path, str(entry[2])))
        else:
            to_read.append(path)
    cpus = os.cpu_count() or 1
    threads = workers or (cpus if decode else min(32, 4 * cpus))
    size = CHUNK // 16 if decode else CHUNK
    chunks = [to_read[start : start + size] for start in range(0, len(to_read), size)]
    if to_read:
        log.info(
            "%s %d image files (%d known from the cache)",
            "decoding" if decode else "checking",
            len(to_read),
            from_cache,
        )
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for results in pool.map(partial(_check_many, decode=decode), chunks):
            for path, size, mtime, reason in results:
                if reason is not None:
                    bad.append((path, reason))
                if size >= 0:
                    cached[path] = [size, mtime, reason]
    if cache is not None and to_read:
        write_cache(cache, cached, section)
    return ScanResult(sorted(bad), len(files), from_cache, cache, decode)


def _images_below(folder: Path) -> list[str]:
    """Image files below ``folder``, at any depth (the datasets' test of a file name)."""
    return [
        os.path.join(walked, name)
        for walked, _, names in os.walk(folder, followlinks=True)
        for name in names
        if is_image_file(name)
    ]


def data_files(config: DataConfig) -> list[str]:
    """Every image file a run of ``config`` may read: training, validation, unlabeled.

    Raises:
        ValueError: For ``data=digits``, which reads no files.
        FileNotFoundError: Naming a missing training or validation folder.
    """
    if config.name not in ("folder", "imagenet") or config.root is None:
        raise ValueError(
            f"data.name={config.name} reads no image files; check a folder with "
            "data=folder (or data=imagenet) data.root=DIR"
        )
    root = Path(config.root)
    files: list[str] = []
    for key, sub in (("data.train_dir", config.train_dir), ("data.val_dir", config.val_dir)):
        folder = root / sub
        if not folder.is_dir():
            raise FileNotFoundError(f"{key}: folder {folder} does not exist")
        files += _images_below(folder)
    if config.unlabeled_root is not None or config.unlabeled_list is not None:
        files += [
            str(path)
            for path in list_unlabeled_images(config.unlabeled_root, config.unlabeled_list)
        ]
    return files


def scan_data(
    config: DataConfig,
    *,
    cache: Path | None = None,
    use_cache: bool = True,
    workers: int | None = None,
    decode: bool = False,
) -> ScanResult:
    """Check the training, validation and unlabeled images of ``config``.

    Args:
        config: Data settings (``data=folder`` or ``data=imagenet``).
        cache: Cache file; default :func:`default_cache_path` of ``data.root``.
        use_cache: ``False`` reads every file and leaves the cache alone.
        workers: Threads (see :func:`scan_images`).
        decode: Decode every file in full (see the module's description).

    Raises:
        ValueError: For a dataset without image files (``data=digits``).
        FileNotFoundError: Naming a missing data folder.
    """
    files = data_files(config)
    assert config.root is not None
    cache_file = (cache or default_cache_path(config.root)) if use_cache else None
    return scan_images(files, cache_file, workers, decode=decode)


def format_scan(result: ScanResult, config: DataConfig) -> str:
    """The report of a scan: counts, then one line per unreadable file with the reason."""
    how = "decoded" if result.decoded else "checked the headers of"
    summary = (
        f"{how} {result.checked} image files under {config.root}: "
        f"{result.checked - len(result.bad)} readable, {len(result.bad)} unreadable"
    )
    if result.cache is not None and result.from_cache:
        summary += f" ({result.from_cache} answered by the cache {result.cache})"
    elif result.cache is not None:
        summary += f" (results cached in {result.cache})"
    if not result.decoded:
        summary += "; --decode also finds damage inside files that look complete"
    if not result.bad:
        return summary
    lines = [summary, "unreadable:"]
    lines += [f"  {path}: {reason}" for path, reason in result.bad]
    lines.append(
        "Replace or delete them. Until then, training serves another image of the same "
        "class for each (and stops if more than data.max_bad_fraction="
        f"{config.max_bad_fraction:g} of the training images are unreadable)."
    )
    return "\n".join(lines)


def empty_class_folders(config: DataConfig) -> list[str]:
    """Training class folders without images (training refuses them by default)."""
    assert config.root is not None
    train = Path(config.root) / config.train_dir
    return sorted(
        entry.name for entry in train.iterdir() if entry.is_dir() and not holds_image(entry)
    )


def check_data_report(config: DataConfig, decode: bool = False) -> tuple[str, int]:
    """What ``mile-ssl check-data`` prints, and its exit status.

    Besides the unreadable files, the report names training class folders without
    images, which stop training unless ``data.allow_empty_classes=true``.

    Args:
        config: Data settings.
        decode: Decode every file in full (``--decode``) instead of the header scan.

    Returns:
        The report, and ``0`` when every file is readable (and no empty class folder
        would stop training), else ``1``.

    Raises:
        ValueError: For a dataset without image files (``data=digits``).
        FileNotFoundError: Naming a missing data folder.
    """
    result = scan_data(config, decode=decode)
    text = format_scan(result, config)
    empty = empty_class_folders(config)
    if not empty:
        return text, 1 if result.bad else 0
    shown = ", ".join(empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
    if config.allow_empty_classes:
        text += f"\n{len(empty)} class folder(s) without images, left out of training: {shown}"
        return text, 1 if result.bad else 0
    text += (
        f"\n{len(empty)} training class folder(s) have no images: {shown}; training stops "
        "on them: add images, remove the folders, or set data.allow_empty_classes=true"
    )
    return text, 1
