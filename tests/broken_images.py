"""Real image files, whole and damaged, for the tests of unreadable and unusual inputs.

Each damage is one a copy or a disk really does: flipped bytes inside a PNG's
compressed data (chunk checksum made to match, so only decoding can tell), a PNG cut
off and closed with a new ``IEND`` chunk, a JPEG cut off. Their headers are intact.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import torch
from PIL import Image


def _pixels(seed: int, size: tuple[int, int]) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    values = torch.rand(*size, 3, generator=generator) * 255
    return Image.fromarray(values.to(torch.uint8).numpy())


def write_image(path: Path, seed: int, size: tuple[int, int] = (36, 40)) -> Path:
    """Write seeded random pixels (``size`` = height, width) in the format of ``path``'s suffix.

    A ``.gif`` gets PIL's palette conversion, as any GIF writer's.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    _pixels(seed, size).save(path)
    return path


def _chunks(data: bytes) -> list[tuple[int, int, bytes]]:
    """``(offset, data length, type)`` of every chunk of the PNG ``data``."""
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        chunks.append((offset, length, data[offset + 4 : offset + 8]))
        offset += 12 + length
    return chunks


def _idat(data: bytes) -> tuple[int, int]:
    """Where the first IDAT chunk's data starts in ``data``, and its length."""
    offset, length = next((o, n) for o, n, kind in _chunks(data) if kind == b"IDAT")
    return offset + 8, length


def corrupt_idat(path: Path) -> Path:
    """Flip 16 bytes in the middle of the PNG's image data; its checksum is made to match."""
    data = bytearray(path.read_bytes())
    start, length = _idat(bytes(data))
    middle = start + length // 2
    for position in range(middle, middle + 16):
        data[position] ^= 0xFF
    checksum = zlib.crc32(bytes(data[start - 4 : start + length]))
    data[start + length : start + length + 4] = struct.pack(">I", checksum)
    path.write_bytes(bytes(data))
    return path


def cut_and_close_png(path: Path) -> Path:
    """Cut the PNG in the middle of its image data and end it with a fresh ``IEND`` chunk."""
    data = path.read_bytes()
    start, length = _idat(data)
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    path.write_bytes(data[: start + length // 2] + end)
    return path


def cut(path: Path) -> Path:
    """Keep the first half of the file (its header stays intact)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path
