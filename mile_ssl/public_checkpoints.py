"""Named public SSL checkpoints: ``checkpoint.name=mocov2_800ep`` finds, fetches and checks.

The registry is data (``public_checkpoints.yaml`` in this package): for each checkpoint
the official URL, file name, adapter, architecture, the source's own linear-evaluation
top-1, its license and, where the source publishes one, its SHA-256. Plugins add entries
through the entry-point group ``mile_ssl.checkpoints`` (a callable returning entries as
mappings, or a module whose import registers them with :func:`register_checkpoints`).

Files are cached under ``$MILE_SSL_CACHE``, else torch.hub's checkpoint folder
(``$TORCH_HOME/hub/checkpoints``). A download goes to ``<file>.part``, resumes from it
after an interruption (HTTP ``Range``), and is renamed to its final name only after its
hash checks out. For a file whose hash the source does not publish, the first download's
SHA-256 is recorded beside it (``<file>.sha256``) and later uses are checked against it.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.metadata
import json
import logging
import os
import sys
import urllib.request
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "mile_ssl.checkpoints"
CACHE_VARIABLE = "MILE_SSL_CACHE"
CHUNK = 1 << 20
TIMEOUT_S = 30


@dataclass(frozen=True)
class PublicCheckpoint:
    """One public checkpoint.

    Attributes:
        name: Registry name (``checkpoint.name``).
        method: The SSL method, as its authors name it.
        architecture: The backbone, as :class:`mile_ssl.networks.backbones.BackboneSpec` names it.
        epochs: Pretraining epochs, where the source states them.
        file_name: Name of the file, also in the cache.
        adapter: The adapter that reads it.
        urls: Where to download it (tried in order); empty when there is no direct
            download (SimCLR: the TF checkpoint must be converted, see ``notes``).
        linear_top1: ImageNet linear-evaluation top-1 (%) the source reports.
        license: The license the source states for the weights.
        sha256: The SHA-256 the source publishes, if any.
        md5_prefix: The leading hex digits of the MD5 the source publishes, if any.
        source: The page that publishes the checkpoint.
        notes: How to obtain it when there is no direct download.
    """

    name: str
    method: str
    architecture: str
    epochs: int | None
    file_name: str
    adapter: str
    urls: tuple[str, ...] = ()
    linear_top1: float | None = None
    license: str = ""
    sha256: str | None = None
    md5_prefix: str | None = None
    source: str = ""
    notes: str = ""


@dataclass
class _Registry:
    entries: dict[str, PublicCheckpoint] = field(default_factory=dict)
    loaded: bool = False


_REGISTRY = _Registry()


def register_checkpoints(entries: Iterable[Mapping[str, Any]]) -> None:
    """Add entries (mappings with :class:`PublicCheckpoint`'s fields) to the registry.

    Raises:
        ValueError: If a name is taken, or an entry lacks a field or has an unknown one.
    """
    for entry in entries:
        data = dict(entry)
        data["urls"] = tuple(data.get("urls") or ())
        try:
            checkpoint = PublicCheckpoint(**data)
        except TypeError as error:
            raise ValueError(f"public checkpoint entry {entry.get('name')!r}: {error}") from None
        if checkpoint.name in _REGISTRY.entries:
            raise ValueError(f"public checkpoint {checkpoint.name!r} is already registered")
        _REGISTRY.entries[checkpoint.name] = checkpoint


def public_checkpoints() -> dict[str, PublicCheckpoint]:
    """Every registered checkpoint by name: the shipped ones, then plugins'."""
    if not _REGISTRY.loaded:
        _REGISTRY.loaded = True
        shipped = resources.files("mile_ssl").joinpath("public_checkpoints.yaml").read_text()
        register_checkpoints(yaml.safe_load(shipped))
        _load_plugins()
    return dict(_REGISTRY.entries)


def _load_plugins() -> None:
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            target = entry_point.load()
            if callable(target):
                register_checkpoints(target())
        except Exception as error:
            warnings.warn(
                f"public checkpoint plugin {entry_point.name!r} ({entry_point.value}) failed "
                f"to load and is ignored: {type(error).__name__}: {error}",
                RuntimeWarning,
                stacklevel=2,
            )


def get_public_checkpoint(name: str) -> PublicCheckpoint:
    """The entry called ``name``.

    Raises:
        ValueError: Naming the known checkpoints.
    """
    entries = public_checkpoints()
    if name not in entries:
        raise ValueError(
            f"unknown checkpoint.name={name!r}; known: {sorted(entries)} "
            "(mile-ssl checkpoints lists them)"
        )
    return entries[name]


def cache_dir() -> Path:
    """``$MILE_SSL_CACHE``, else torch.hub's checkpoint folder (honours ``$TORCH_HOME``)."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE])
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_path(checkpoint: PublicCheckpoint) -> Path:
    """Where ``checkpoint`` is (or will be) cached."""
    return cache_dir() / checkpoint.file_name


def _digests(path: Path) -> tuple[str, str]:
    """SHA-256 and MD5 of a file, read once in chunks."""
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            sha256.update(chunk)
            md5.update(chunk)
    return sha256.hexdigest(), md5.hexdigest()


def sha256_of(path: Path) -> str:
    """SHA-256 of a file."""
    return _digests(path)[0]


def _recorded_hash(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def expected_hash(checkpoint: PublicCheckpoint, path: Path) -> str | None:
    """The published hash, else the one recorded at the first download, else ``None``."""
    if checkpoint.sha256:
        return checkpoint.sha256
    recorded = _recorded_hash(path)
    return recorded.read_text().split()[0] if recorded.is_file() else None


def resolve_public_checkpoint(name: str, download: bool = True) -> Path:
    """The local file of the public checkpoint ``name``, downloading it if needed.

    Raises:
        ValueError: For an unknown name, a checkpoint without a direct download, a file
            whose hash does not match, or a failed download (naming the URL and where to
            put the file by hand).
    """
    checkpoint = get_public_checkpoint(name)
    path = cached_path(checkpoint)
    if path.is_file():
        expected = expected_hash(checkpoint, path)
        if expected is not None and sha256_of(path) != expected:
            raise ValueError(
                f"cached {path} does not match the SHA-256 {expected} of {name}; delete it "
                "to download it again"
            )
        return path
    if not checkpoint.urls:
        raise ValueError(
            f"{name} has no direct download: {checkpoint.notes} Put the converted file at "
            f"{path} or pass checkpoint.path=FILE"
        )
    if not download:
        raise ValueError(f"{name} is not cached at {path}")
    errors = []
    for url in checkpoint.urls:
        try:
            _download(url, path, expected_hash(checkpoint, path), checkpoint.md5_prefix)
        except (OSError, http.client.HTTPException) as error:
            errors.append(f"{url}: {error}")
            continue
        return path
    raise ValueError(
        f"cannot download {name} ({'; '.join(errors)}). Download it by hand from "
        f"{checkpoint.urls[0]} and put it at {path} (or pass checkpoint.path=FILE)"
    )


def _download(url: str, path: Path, expected: str | None, md5_prefix: str | None) -> None:
    """Fetch ``url`` into ``path`` through ``path.part``, resuming a partial transfer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    offset = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        resumed = offset and response.status == 206
        total = int(response.headers.get("Content-Length") or 0) + (offset if resumed else 0)
        mode = "ab" if resumed else "wb"
        log.info(
            "downloading %s to %s%s", url, path, f" (resuming at {offset} bytes)" if resumed else ""
        )
        with partial.open(mode) as handle, _progress(total, offset if resumed else 0) as bar:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                handle.write(chunk)
                bar.update(len(chunk))
    received = partial.stat().st_size
    if total and received < total:
        raise ConnectionError(
            f"transfer interrupted after {received} of {total} bytes (kept as {partial}; "
            "the next try resumes it)"
        )
    digest, md5 = _digests(partial)
    if (expected is not None and digest != expected) or not md5.startswith(md5_prefix or ""):
        partial.unlink()
        wanted = f"SHA-256 {expected}" if expected else f"an MD5 starting {md5_prefix}"
        raise ValueError(
            f"{url} gave a file with SHA-256 {digest} and MD5 {md5}, expected {wanted}; it "
            "was not kept"
        )
    os.replace(partial, path)
    if expected is None:
        _recorded_hash(path).write_text(f"{digest}  {path.name}\n")
        log.info("%s has no published hash: recorded SHA-256 %s for later uses", path, digest)


def _progress(total: int, done: int) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total or None,
        initial=done,
        unit="B",
        unit_scale=True,
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
    )


def format_public_checkpoints(as_json: bool = False) -> str:
    """The registry as a table (name, method, architecture, epochs, top-1, cached) or JSON."""
    entries = public_checkpoints()
    if as_json:
        return json.dumps([asdict(entry) for entry in entries.values()], indent=2)
    lines = [f"{'name':24}{'method':16}{'arch':24}{'epochs':>7}{'linear top-1':>14}  cached"]
    for entry in entries.values():
        cached = "yes" if cached_path(entry).is_file() else "no"
        if not entry.urls and cached == "no":
            cached = "no (convert: see --json notes)"
        top1 = f"{entry.linear_top1:.1f}" if entry.linear_top1 is not None else "-"
        epochs = str(entry.epochs) if entry.epochs is not None else "-"
        lines.append(
            f"{entry.name:24}{entry.method:16}{entry.architecture:24}{epochs:>7}"
            f"{top1:>14}  {cached}"
        )
    return "\n".join(lines)
