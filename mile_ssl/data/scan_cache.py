"""The image scan's cache: each file's result, kept while the file is unchanged.

Each file's result is stored with its size and modification time, so a second scan of
an unchanged tree reads no image at all; the header scan and the full decode keep
separate results, so that a header check never answers for a full decode (nor the
other way round). The cache is one JSON file,
``<data.root>/.mile_ssl_image_check.json`` when the data root is writable (it then moves
and is deleted with the data), else ``~/.cache/mile_ssl/image_check/<hash of the root>.json``
(``$XDG_CACHE_HOME`` is honoured) for read-only datasets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CACHE_NAME = ".mile_ssl_image_check.json"
"""File name of the cache inside a writable data root."""

CACHE_VERSION = 1
"""Format version of the cache; a cache of another version is ignored."""

HEADER_SECTION = "files"
"""The cache's results of the header scan."""

DECODE_SECTION = "decoded"
"""The cache's results of the full decode: a separate section, never read as the
header scan's (whose results an older mile_ssl also writes under ``files``)."""


def default_cache_path(root: str | Path) -> Path:
    """Where the scan of the data below ``root`` keeps its cache.

    ``root/.mile_ssl_image_check.json`` if ``root`` is writable, else a file named by
    the hash of ``root``'s absolute path under ``$XDG_CACHE_HOME/mile_ssl/image_check``
    (default ``~/.cache``).
    """
    root = Path(root)
    if root.is_dir() and os.access(root, os.W_OK):
        return root / CACHE_NAME
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(str(root.absolute()).encode()).hexdigest()[:16]
    return base / "mile_ssl" / "image_check" / f"{digest}.json"


def _read_sections(path: Path) -> dict[str, dict[str, list[Any]]]:
    """Every section of the cache (name -> absolute path -> [size, mtime_ns, reason])."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        log.warning("ignoring the image-check cache %s (%s)", path, error)
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    return {
        name: entries
        for name in (HEADER_SECTION, DECODE_SECTION)
        if isinstance(entries := data.get(name), dict)
    }


def read_cache(path: Path, section: str = HEADER_SECTION) -> dict[str, list[Any]]:
    """The entries of one scan's section of the cache; empty if unusable."""
    return _read_sections(path).get(section, {})


def write_cache(path: Path, files: dict[str, list[Any]], section: str = HEADER_SECTION) -> None:
    """Replace one section of the cache atomically, keeping the other one.

    A cache that cannot be written is only a warning.
    """
    temporary: str | None = None
    try:
        sections = _read_sections(path) | {section: files}
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=f"{CACHE_NAME}.", dir=path.parent)
        with os.fdopen(descriptor, "w") as handle:
            json.dump({"version": CACHE_VERSION, **sections}, handle)
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide it from the data's other users
        os.replace(temporary, path)
    except OSError as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        log.warning(
            "cannot write the image-check cache %s (%s); the next scan reads again", path, error
        )


def unchanged(path: str, entry: Any) -> bool:
    """Whether the cache ``entry`` was made for the current version of ``path``."""
    if not isinstance(entry, list) or len(entry) != 3:
        return False
    try:
        stat = os.stat(path)
    except OSError:
        return False
    return [stat.st_size, stat.st_mtime_ns] == entry[:2]
