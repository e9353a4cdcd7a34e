"""Cached checkpoint files checked against the hashes their source publishes, hashed once.

A file in the checkpoint cache may have been downloaded, put there by hand, or replaced
since; it is checked before every use. Hashing 100-300 MB takes seconds, so the result
is kept beside the file in ``<file>.verified`` with the file's size, modification time
and inode, and the file is hashed again only when one of them changes (a file copied or
moved over it, or written again). A file whose source publishes
no hash is checked against the SHA-256 of its first use (``<file>.sha256``). A file
that does not match is refused unless the user accepts it deliberately, which the
``.verified`` record then remembers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from mile_ssl.atomic_files import write_text_atomically

log = logging.getLogger(__name__)

CHUNK = 1 << 20
VERIFIED_SUFFIX = ".verified"
"""Beside a cached file: its hashes for its size and modification time, and whether the
user accepted it although it does not match."""
RECORDED_SUFFIX = ".sha256"
"""Beside a cached file without a published hash: the SHA-256 of its first use."""


class CachedFileMismatchError(ValueError):
    """A cached checkpoint file is not the one its source publishes."""


@dataclass(frozen=True)
class PublishedHash:
    """What the source of a file publishes to check it by.

    Attributes:
        sha256: The full SHA-256, if published.
        md5_prefix: The leading hex digits of the MD5, if published.
        source: Where they are published, for messages.
    """

    sha256: str | None = None
    md5_prefix: str | None = None
    source: str = ""


@dataclass(frozen=True)
class _Verified:
    """What ``<file>.verified`` remembers of a file, valid while size, time and inode hold."""

    size: int
    mtime_ns: int
    inode: int
    sha256: str
    md5: str
    accepted: bool = False


def _digests(path: Path) -> tuple[str, str]:
    """SHA-256 and MD5 of a file, read once in chunks."""
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            sha256.update(chunk)
            md5.update(chunk)
    return sha256.hexdigest(), md5.hexdigest()


def sidecar(path: Path, suffix: str) -> Path:
    """The file beside ``path`` named ``path``'s name plus ``suffix``."""
    return path.with_name(path.name + suffix)


def _verified(path: Path) -> _Verified:
    """The file's hashes: from its ``.verified`` record if size, time and inode still match."""
    stat = path.stat()
    try:
        record = _Verified(**json.loads(sidecar(path, VERIFIED_SUFFIX).read_text()))
        if (record.size, record.mtime_ns, record.inode) == (
            stat.st_size,
            stat.st_mtime_ns,
            stat.st_ino,
        ):
            return record
    except (OSError, ValueError, TypeError):
        pass  # no record yet, or an unreadable one: hash the file
    log.info("checking the hash of %s (once: the result is kept beside it)", path)
    sha256, md5 = _digests(path)
    record = _Verified(stat.st_size, stat.st_mtime_ns, stat.st_ino, sha256, md5)
    _remember(path, record)
    return record


def _remember(path: Path, record: _Verified) -> None:
    """Write ``record`` beside ``path``, if the cache can be written."""
    try:
        write_text_atomically(sidecar(path, VERIFIED_SUFFIX), json.dumps(asdict(record)) + "\n")
    except OSError as error:
        log.debug("cannot record the hash of %s: %s", path, error)


def _recorded_sha256(path: Path) -> str | None:
    recorded = sidecar(path, RECORDED_SUFFIX)
    return recorded.read_text().split()[0] if recorded.is_file() else None


def _mismatch(path: Path, record: _Verified, published: PublishedHash) -> str | None:
    """How ``record``'s hashes differ from what is known of the file; ``None``: they agree."""
    source = f" (from {published.source})" if published.source else ""
    if published.sha256 and record.sha256 != published.sha256:
        return f"its SHA-256 is {record.sha256} where the catalogue has {published.sha256}{source}"
    if published.md5_prefix and not record.md5.startswith(published.md5_prefix):
        return f"its MD5 is {record.md5} where the catalogue has {published.md5_prefix}...{source}"
    recorded = _recorded_sha256(path)
    if recorded and record.sha256 != recorded:
        return (
            f"its SHA-256 is {record.sha256} where its first use recorded {recorded} "
            f"({sidecar(path, RECORDED_SUFFIX).name})"
        )
    return None


def verify_cached_file(
    path: Path, name: str, published: PublishedHash, *, force: bool = False
) -> bool:
    """Check the cached file ``path`` of checkpoint ``name`` against ``published``.

    A file with no published hash and none recorded gets its SHA-256 recorded, against
    which later uses are checked.

    Args:
        path: The cached file.
        name: The checkpoint's catalogue name, for the message.
        published: The hashes its source publishes.
        force: Accept a file that does not match, and remember that it was accepted.

    Returns:
        Whether the file was accepted although it does not match (said in a warning).

    Raises:
        CachedFileMismatchError: Naming the file and both hashes, if it does not match
            and was never accepted.
    """
    record = _verified(path)
    mismatch = _mismatch(path, record, published)
    if mismatch is None:
        if not (published.sha256 or published.md5_prefix) and _recorded_sha256(path) is None:
            record_first_use(path, record.sha256)
        return False
    if record.accepted or force:
        if not record.accepted:
            _remember(path, _Verified(**{**asdict(record), "accepted": True}))
        log.warning("using %s, accepted with --force although %s", path, mismatch)
        return True
    raise CachedFileMismatchError(
        f"cached {path} is not {name}: {mismatch}. Delete it to download it again, or use "
        f"it anyway with: mile-ssl checkpoints --download {name} --force"
    )


def record_first_use(path: Path, sha256: str) -> None:
    """Record ``sha256`` as the hash later uses of ``path`` are checked against."""
    try:
        sidecar(path, RECORDED_SUFFIX).write_text(f"{sha256}  {path.name}\n")
    except OSError as error:
        log.debug("cannot record the hash of %s: %s", path, error)
        return
    log.info("%s has no published hash: recorded SHA-256 %s for later uses", path, sha256)


def adopt_download(fetched: Path, path: Path, name: str, published: PublishedHash) -> None:
    """Keep the downloaded ``fetched`` as ``path`` if it matches ``published``.

    Raises:
        CachedFileMismatchError: Naming both hashes, if it does not; it is deleted.
    """
    try:
        record = _verified(fetched)
        mismatch = _mismatch(path, record, published)
        if mismatch is not None:
            raise CachedFileMismatchError(
                f"the download of {name} is not {name}: {mismatch}; it was not kept"
            )
        os.replace(fetched, path)
        _remember(path, record)
    finally:
        fetched.unlink(missing_ok=True)
        sidecar(fetched, VERIFIED_SUFFIX).unlink(missing_ok=True)
    if not (published.sha256 or published.md5_prefix) and _recorded_sha256(path) is None:
        record_first_use(path, record.sha256)
