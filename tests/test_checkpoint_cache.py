"""A checkpoint found in the cache is checked against the catalogue, once, and refused
naming both hashes unless the user accepts it with ``mile-ssl checkpoints --force``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mile_ssl import checkpoint_cache
from mile_ssl import public_checkpoints as hub
from mile_ssl.checkpoint_cache import CachedFileMismatchError
from mile_ssl.commands.train import initial_backbone
from mile_ssl.config import compose_train_config
from mile_ssl.public_checkpoints import register_checkpoints, resolve_public_checkpoint
from tests.conftest import TINY_NETWORK, run_cli_in_process, write_image_folder
from tests.layouts import moco

WRONG_PREFIX = "a04e12f8"
"""The catalogue's MD5 prefix of the test entry, which the file in the cache lacks."""


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The shipped registry plus this test's entries, and a cache of its own (returned)."""
    hub.public_checkpoints()
    saved = dict(hub._REGISTRY.entries)
    monkeypatch.setenv("MILE_SSL_CACHE", str(tmp_path / "cache"))
    yield tmp_path / "cache"
    hub._REGISTRY.entries.clear()
    hub._REGISTRY.entries.update(saved)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def _placed_by_hand(cache: Path, tmp_path: Path, md5_prefix: str | None) -> tuple[str, Path]:
    """A MoCo v2 file put in the cache under an entry's name; the entry's name and the file.

    ``md5_prefix=None`` gives the entry the file's own prefix, i.e. the right file.
    """
    made = moco(2)(tmp_path)
    cache.mkdir(parents=True, exist_ok=True)
    path = made.replace(cache / "moco_hand.pth.tar")
    entry: dict[str, Any] = {
        "name": "moco_hand",
        "method": "MoCo v2",
        "architecture": "torchvision:resnet50",
        "epochs": 800,
        "file_name": path.name,
        "adapter": "mocov2",
        "urls": ["http://127.0.0.1:9/moco.pth.tar"],
        "md5_prefix": md5_prefix or _md5(path)[:8],
        "source": "the test's catalogue",
    }
    register_checkpoints([entry])
    return "moco_hand", path


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


def test_a_wrong_cached_file_is_refused_with_both_hashes(registry: Path, tmp_path: Path) -> None:
    name, path = _placed_by_hand(registry, tmp_path, WRONG_PREFIX)
    with pytest.raises(CachedFileMismatchError) as info:
        resolve_public_checkpoint(name)
    message = str(info.value)
    assert str(path) in message and _md5(path) in message and WRONG_PREFIX in message
    assert f"mile-ssl checkpoints --download {name} --force" in message

    # Training from it stops before anything is made, with that one message.
    images = write_image_folder(tmp_path / "images" / "train", classes=2, per_class=2, size=36)
    write_image_folder(tmp_path / "images" / "val", classes=2, per_class=1, size=36)
    work = tmp_path / "work"
    work.mkdir()
    overrides = [item for item in TINY_NETWORK if item != "checkpoint=scratch"]
    trained = run_cli_in_process(
        [
            "train",
            *[item for item in overrides if not item.startswith("backbone")],
            f"checkpoint.name={name}",
            "data=folder",
            f"data.root={images.parent}",
            "data.image_size=32",
            "hydra.run.dir=run",
        ],
        work,
    )
    assert trained.returncode == 2
    (line,) = _error_lines(trained.stderr)
    assert str(path) in line and _md5(path) in line and WRONG_PREFIX in line
    assert "Traceback" not in trained.stderr
    assert list(work.iterdir()) == []

    fetched = run_cli_in_process(["checkpoints", "--download", name], tmp_path)
    assert fetched.returncode == 2 and fetched.stdout == ""
    (line,) = _error_lines(fetched.stderr)
    assert _md5(path) in line and WRONG_PREFIX in line


def test_the_listing_reports_a_mismatch(registry: Path, tmp_path: Path) -> None:
    name, path = _placed_by_hand(registry, tmp_path, WRONG_PREFIX)
    listed = run_cli_in_process(["checkpoints"], tmp_path)
    assert listed.returncode == 0
    row = next(line for line in listed.stdout.splitlines() if line.startswith(name))
    assert row.endswith("MISMATCH")
    assert any(
        str(path) in line and _md5(path) in line and WRONG_PREFIX in line
        for line in listed.stderr.splitlines()
    )


def test_force_accepts_the_file_for_training_too(registry: Path, tmp_path: Path) -> None:
    name, path = _placed_by_hand(registry, tmp_path, WRONG_PREFIX)
    alone = run_cli_in_process(["checkpoints", "--force"], tmp_path)
    assert alone.returncode == 2 and "--force goes with --download NAME" in alone.stderr

    forced = run_cli_in_process(["checkpoints", "--download", name, "--force"], tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.strip() == str(path)
    assert "accepted with --force" in forced.stderr
    # Remembered beside the file: checkpoint.name=... loads it, still with a warning.
    config = compose_train_config([f"checkpoint.name={name}"])
    loaded = initial_backbone(config.backbone, config.checkpoint)
    assert loaded.source == path and loaded.adapter == "mocov2"
    listed = run_cli_in_process(["checkpoints"], tmp_path)
    row = next(line for line in listed.stdout.splitlines() if line.startswith(name))
    assert row.endswith("yes (accepted with --force)")


def test_the_right_file_is_accepted_and_hashed_once(
    registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, path = _placed_by_hand(registry, tmp_path, md5_prefix=None)
    hashed: list[Path] = []
    digests = checkpoint_cache._digests

    def counting(file: Path) -> tuple[str, str]:
        hashed.append(file)
        return digests(file)

    monkeypatch.setattr(checkpoint_cache, "_digests", counting)
    assert resolve_public_checkpoint(name) == path
    assert resolve_public_checkpoint(name) == path
    assert hub.cache_status(hub.get_public_checkpoint(name)) == ("yes", None)
    assert hashed == [path]  # once: then read from moco_hand.pth.tar.verified
    assert path.with_name(path.name + ".verified").is_file()

    # Another file moved over it is hashed again, and refused.
    other = tmp_path / "other.pth.tar"
    other.write_bytes(path.read_bytes()[:-1] + b"!")
    other.replace(path)
    with pytest.raises(CachedFileMismatchError, match=_md5(path)):
        resolve_public_checkpoint(name)
    assert hashed == [path, path]
