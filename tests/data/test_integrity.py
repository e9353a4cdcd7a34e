"""``check-data --decode``: what the header scan misses, found by decoding; its own cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mile_ssl.cli import main
from mile_ssl.config import DataConfig, compose_train_config
from mile_ssl.data.integrity import check_data_report, scan_data, scan_images
from mile_ssl.data.scan_cache import CACHE_NAME, DECODE_SECTION, HEADER_SECTION
from tests.broken_images import corrupt_idat, cut, cut_and_close_png, write_image


def _tree(root: Path) -> dict[str, Path]:
    """Two classes of readable images (JPEG, PNG, GIF) and three damaged files.

    Only the truncated JPEG lacks its end marker; the corrupt PNG and the PNG cut and
    closed with a new IEND look complete to the header scan.
    """
    files = {
        "jpeg": write_image(root / "train" / "a" / "a_0.jpg", 0),
        "png": write_image(root / "train" / "a" / "a_1.png", 1),
        "gif": write_image(root / "train" / "b" / "b_0.gif", 2),
        "val": write_image(root / "val" / "a" / "a_0.jpg", 3),
        "corrupt_idat": corrupt_idat(write_image(root / "train" / "a" / "a_2.png", 4)),
        "cut_png": cut_and_close_png(write_image(root / "train" / "b" / "b_1.png", 5)),
        "cut_jpeg": cut(write_image(root / "val" / "b" / "b_0.jpg", 6)),
    }
    write_image(root / "val" / "b" / "b_1.jpg", 7)
    return files


def _config(root: Path) -> DataConfig:
    return compose_train_config(["checkpoint=scratch", "data=folder", f"data.root={root}"]).data


def test_decoding_finds_the_damage_the_header_scan_misses(tmp_path: Path) -> None:
    files = _tree(tmp_path)
    paths = list(files.values())
    header = scan_images(paths, cache=None)
    assert [path for path, _ in header.bad] == [str(files["cut_jpeg"])]
    assert not header.decoded
    decoded = scan_images(paths, cache=None, decode=True, workers=2)
    reasons = dict(decoded.bad)
    assert sorted(reasons) == sorted(
        str(files[name]) for name in ("corrupt_idat", "cut_png", "cut_jpeg")
    )
    assert "truncated" in reasons[str(files["cut_png"])]
    assert "truncated" in reasons[str(files["cut_jpeg"])]
    assert reasons[str(files["corrupt_idat"])].startswith("OSError")
    assert (decoded.checked, decoded.decoded) == (len(paths), True)  # the GIF reads


def test_the_decode_has_its_own_cache_entries(tmp_path: Path) -> None:
    files = _tree(tmp_path)
    config = _config(tmp_path)
    header = scan_data(config)
    assert len(header.bad) == 1 and header.from_cache == 0
    # A header result never answers for a full decode.
    decoded = scan_data(config, decode=True)
    assert (decoded.from_cache, len(decoded.bad)) == (0, 3)
    again = scan_data(config, decode=True)
    assert (again.from_cache, again.bad) == (8, decoded.bad)
    # Nor the other way round: the header scan keeps its own results.
    header_again = scan_data(config)
    assert (header_again.from_cache, header_again.bad) == (8, header.bad)
    cache = json.loads((tmp_path / CACHE_NAME).read_text())
    assert len(cache[HEADER_SECTION]) == len(cache[DECODE_SECTION]) == 8
    assert cache[DECODE_SECTION][str(files["cut_png"])][2] is not None
    assert cache[HEADER_SECTION][str(files["cut_png"])][2] is None
    # A repaired file is decoded again; the others come from the cache.
    write_image(files["corrupt_idat"], 4)
    repaired = scan_data(config, decode=True)
    assert (repaired.from_cache, len(repaired.bad)) == (7, 2)


def test_check_data_decode_lists_the_damaged_files_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _tree(tmp_path / "data")
    overrides = ["data=folder", f"data.root={tmp_path / 'data'}"]
    text, status = check_data_report(_config(tmp_path / "data"))
    assert status == 1 and "1 unreadable" in text and "--decode" in text
    with pytest.raises(SystemExit) as exit_info:
        main(["check-data", "--decode", *overrides])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert out.startswith("decoded 8 image files") and "3 unreadable" in out
    for name in ("corrupt_idat", "cut_png", "cut_jpeg"):
        assert f"  {files[name]}: " in out
    assert str(files["gif"]) not in out


def test_check_data_help_says_what_the_header_scan_misses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["check-data", "--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--decode" in help_text
    assert "misses damage inside files that look complete" in help_text
