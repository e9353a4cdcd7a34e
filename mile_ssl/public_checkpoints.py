"""Named public SSL checkpoints: ``checkpoint.name=mocov2_800ep`` finds, fetches and checks.

The registry is data (``public_checkpoints.yaml`` in this package): for each checkpoint
the official URL, file name, adapter, architecture, the source's own linear-evaluation
top-1, its license and, where the source publishes one, its SHA-256 or an MD5 prefix.
Plugins add entries through the entry-point group ``mile_ssl.checkpoints`` (a callable
returning entries as mappings, or a module whose import registers them with
:func:`register_checkpoints`).

Files are cached under ``$MILE_SSL_CACHE``, else torch.hub's checkpoint folder
(``$TORCH_HOME/hub/checkpoints``). A download goes to ``<file>.part``, resumes from it
after an interruption (HTTP ``Range``), and is renamed to its final name only after its
hash checks out.

A cached file, downloaded or put there by hand, is checked against the catalogue before
every use and by ``mile-ssl checkpoints`` (:mod:`mile_ssl.checkpoint_cache`, which hashes
each file once): the published SHA-256 or MD5 prefix, else the SHA-256 of its first use.
A file that does not match is refused, naming it and both hashes, unless the user
accepts it deliberately: ``mile-ssl checkpoints --download NAME --force``.
"""

from __future__ import annotations

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

from mile_ssl.checkpoint_cache import (
    CachedFileMismatchError,
    PublishedHash,
    adopt_download,
    sidecar,
    verify_cached_file,
)

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "mile_ssl.checkpoints"
CACHE_VARIABLE = "MILE_SSL_CACHE"
CHUNK = 1 << 20
TIMEOUT_S = 30
FORCE_HELP = (
    "with --download NAME: use the cached file although its hash differs from the "
    "catalogue's; remembered beside the file, so that checkpoint.name=NAME trains from it too"
)
"""``mile-ssl checkpoints --force``: the one deliberate way to trust a mismatching file."""


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


def _published(checkpoint: PublicCheckpoint) -> PublishedHash:
    return PublishedHash(checkpoint.sha256, checkpoint.md5_prefix, checkpoint.source)


def cache_status(checkpoint: PublicCheckpoint) -> tuple[str, str | None]:
    """Whether ``checkpoint`` is cached, and the mismatch if there is one.

    Returns:
        ``yes``, ``no``, ``MISMATCH`` or ``yes (accepted with --force)``; and for a
        mismatch the message naming the file and both hashes.
    """
    path = cached_path(checkpoint)
    if not path.is_file():
        return "no", None
    try:
        accepted = verify_cached_file(path, checkpoint.name, _published(checkpoint))
    except CachedFileMismatchError as error:
        return "MISMATCH", str(error)
    return ("yes (accepted with --force)" if accepted else "yes"), None


def resolve_public_checkpoint(name: str, download: bool = True, *, force: bool = False) -> Path:
    """The local file of the public checkpoint ``name``, checked, downloading it if needed.

    Args:
        name: The catalogue name.
        download: Fetch the file when it is not cached.
        force: Accept a cached file whose hash does not match, from now on (see
            :func:`~mile_ssl.checkpoint_cache.verify_cached_file`).

    Raises:
        ValueError: For an unknown name, a checkpoint without a direct download, a file
            whose hash does not match (naming it and both hashes), or a failed download
            (naming the URL and where to put the file by hand).
    """
    checkpoint = get_public_checkpoint(name)
    path = cached_path(checkpoint)
    if path.is_file():
        verify_cached_file(path, name, _published(checkpoint), force=force)
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
            _download(url, path, checkpoint)
        except (OSError, http.client.HTTPException) as error:
            errors.append(f"{url}: {error}")
            continue
        return path
    raise ValueError(
        f"cannot download {name} ({'; '.join(errors)}). Download it by hand from "
        f"{checkpoint.urls[0]} and put it at {path} (it is checked on first use), or pass "
        "checkpoint.path=FILE"
    )


def _download(url: str, path: Path, checkpoint: PublicCheckpoint) -> None:
    """Fetch ``url`` into ``path`` through ``<path>.part``, resuming a partial transfer.

    Own code, not ``torch.hub.download_url_to_file``: that deletes its partial file on
    any failure, so a cut 100-300 MB transfer starts again from zero, and without a hash
    it keeps a transfer the server cut short (most of these files publish no hash).

    Raises:
        CachedFileMismatchError: Naming both hashes, if the file is not the checkpoint
            (it is not kept).
        OSError: If the transfer fails or ends early (the part received is kept).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = sidecar(path, ".part")
    offset = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        resumed = offset and response.status == 206
        total = int(response.headers.get("Content-Length") or 0) + (offset if resumed else 0)
        log.info("downloading %s to %s%s", url, path, f" from byte {offset}" if resumed else "")
        with (
            partial.open("ab" if resumed else "wb") as handle,
            _progress(total, offset if resumed else 0) as bar,
        ):
            for chunk in iter(lambda: response.read(CHUNK), b""):
                handle.write(chunk)
                bar.update(len(chunk))
    received = partial.stat().st_size
    if total and received < total:
        raise ConnectionError(
            f"transfer interrupted after {received} of {total} bytes (kept as {partial}; "
            "the next try resumes it)"
        )
    adopt_download(partial, path, checkpoint.name, _published(checkpoint))


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
    """The registry as a table (name, method, architecture, epochs, top-1, cached) or JSON.

    A cached file is checked against the catalogue (see :func:`verify_cached`): one that
    does not match is listed as ``MISMATCH`` and named, with both hashes, in a warning.
    """
    entries = public_checkpoints()
    statuses = {name: cache_status(entry) for name, entry in entries.items()}
    for _, problem in statuses.values():
        if problem is not None:
            log.warning("%s", problem)
    if as_json:
        return json.dumps(
            [asdict(entry) | {"cached": statuses[name][0]} for name, entry in entries.items()],
            indent=2,
        )
    lines = [f"{'name':24}{'method':16}{'arch':24}{'epochs':>7}{'linear top-1':>14}  cached"]
    for name, entry in entries.items():
        cached = statuses[name][0]
        if not entry.urls and cached == "no":
            cached = "no (convert: see --json notes)"
        top1 = f"{entry.linear_top1:.1f}" if entry.linear_top1 is not None else "-"
        epochs = str(entry.epochs) if entry.epochs is not None else "-"
        lines.append(
            f"{entry.name:24}{entry.method:16}{entry.architecture:24}{epochs:>7}"
            f"{top1:>14}  {cached}"
        )
    return "\n".join(lines)
