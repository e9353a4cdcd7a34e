"""Run files are complete or absent, a full disk names the file, modes follow the umask."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from mile_ssl import atomic_files
from mile_ssl.atomic_files import remove_stale_temporaries, write_text_atomically
from mile_ssl.runs.bad_images import BadImageMonitor
from mile_ssl.runs.checkpoint_io import write_atomically
from mile_ssl.runs.report import plot_pseudo_label_history, write_json
from tests.conftest import mounted_tmpfs


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_and_checkpoints_get_the_mode_open_would_give(
    tmp_path: Path, umask: Callable[[int], None], mask: int, mode: int
) -> None:
    umask(mask)
    text = write_text_atomically(tmp_path / "metrics.json", "{}\n")
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    write_atomically({"step": 1}, checkpoint)
    plain = tmp_path / "plain.txt"
    plain.write_text("as open() makes it")
    for path in (text, checkpoint, plain):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


def _bad_images_list(path: Path) -> None:
    monitor = BadImageMonitor(lambda index: None, 10, 0.5, path, known=["/data/a.JPEG"])
    monitor._write()


WRITERS: dict[str, Callable[[Path], object]] = {
    "metrics.json": lambda path: write_json(path, {"metrics": {"top1": 0.5}}),
    "pseudo_labels.png": lambda path: plot_pseudo_label_history(
        path,
        [
            {
                "step": 1,
                "pseudo_labels_per_image": 1.5,
                "pseudo_empty_fraction": 0.1,
                "pseudo_precision": 0.8,
                "pseudo_recall": 0.9,
            }
        ],
    ),
    "bad_images.txt": _bad_images_list,
    "last.ckpt": lambda path: write_atomically({"step": 2}, path),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_a_full_disk_leaves_the_previous_file_and_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    path = tmp_path / name
    path.write_bytes(b"the previous version")

    def full_disk(descriptor: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{descriptor}"):  # the folder's own fsync
            return
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic_files.os, "fsync", full_disk)
    with pytest.raises(OSError, match="no space left") as info:
        WRITERS[name](path)
    assert info.value.errno == errno.ENOSPC and str(path) in str(info.value)
    assert path.read_bytes() == b"the previous version"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name], "no temporary file left"


def test_a_full_disk_on_a_new_file_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        atomic_files.os,
        "fsync",
        lambda descriptor: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")),
    )
    with pytest.raises(OSError):
        write_json(tmp_path / "metrics.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_only_temporary_files_of_interrupted_writes_are_removed(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    stale = [checkpoints / ".last.ckpt.ab12cd34.tmp", tmp_path / ".metrics.json.x_y9z0aa.tmp"]
    kept = [tmp_path / "notes.tmp", tmp_path / ".hidden.tmp", tmp_path / "last.ckpt"]
    for path in (*stale, *kept):
        path.write_bytes(b"x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert all(path.exists() for path in kept) and not any(path.exists() for path in stale)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB file system (tmpfs), where the mount is permitted."""
    with mounted_tmpfs(tmp_path / "disk", "size=64k") as mount:
        yield mount


def test_a_real_full_disk_leaves_complete_files_only(tiny_disk: Path) -> None:
    metrics = write_json(tiny_disk / "metrics.json", {"metrics": {"top1": 0.5}})
    checkpoint = tiny_disk / "checkpoints" / "last.ckpt"
    write_atomically({"step": 1}, checkpoint)
    before = {path: path.read_bytes() for path in (metrics, checkpoint)}
    with pytest.raises(OSError, match="no space left") as info:
        write_json(metrics, {"metrics": {"top1": 0.6}, "padding": "x" * 200_000})
    assert str(metrics) in str(info.value)
    with pytest.raises(OSError, match="no space left") as info:
        write_atomically({"step": 2, "weights": torch.zeros(50_000)}, checkpoint)
    assert str(checkpoint) in str(info.value)
    assert {path: path.read_bytes() for path in before} == before
    assert not [path for path in tiny_disk.rglob("*.tmp")]
