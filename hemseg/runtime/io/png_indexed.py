"""The stored palette indices of an indexed-color PNG (IHDR color type 3), decoded from the file itself.

OpenCV expands an indexed PNG to its palette colors, which loses the index wherever two indices share a color (a
palette padded with black, the usual ``putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)``) or an index lies beyond a
short palette (decoded as black, index 0's color: a lesion read as background). A label mask stores its labels as
those indices, so they are read here: the ``IDAT`` stream inflated, each row's PNG filter undone (None, Sub, Up,
Average, Paeth; one byte per pixel step at these bit depths), 1/2/4/8-bit samples unpacked, and the seven passes
of an interlaced (Adam7) file put back in place. The header checks of :mod:`hemseg.runtime.io.raster` run first.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from hemseg.errors import InputError

#: Adam7's passes: (first column, first row, column step, row step)
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def png_indices(path: Path, data: bytes) -> np.ndarray:
    """(H, W) uint8 palette indices of the indexed-color PNG ``data``."""
    width, height = struct.unpack(">II", data[16:24])
    bits, interlace = data[24], data[28]
    passes = ADAM7 if interlace else ((0, 0, 1, 1),)
    sizes = [(-(-(width - x0) // dx), -(-(height - y0) // dy)) for x0, y0, dx, dy in passes]
    needed = sum(h * (1 + -(-w * bits // 8)) for w, h in sizes if w > 0 and h > 0)
    raw = _inflate(path, _idat(data), needed)
    out = np.zeros((height, width), np.uint8)
    pos = 0
    for (x0, y0, dx, dy), (w, h) in zip(passes, sizes):
        if w <= 0 or h <= 0:  # an empty pass of a small image has no rows, not even filter bytes
            continue
        stride = -(-w * bits // 8)
        rows = np.frombuffer(raw, np.uint8, count=h * (stride + 1), offset=pos).reshape(h, stride + 1)
        pos += h * (stride + 1)
        out[y0::dy, x0::dx] = _samples(_unfilter(path, rows), w, bits)
    return out


def _samples(lines: np.ndarray, width: int, bits: int) -> np.ndarray:
    """Unpack rows of ``bits``-bit samples (most significant first) to one byte each, cut to ``width``."""
    if bits == 8:
        return lines[:, :width]
    per = 8 // bits
    shifts = (8 - bits) - bits * np.arange(per, dtype=np.uint8)
    samples = (lines[:, :, None] >> shifts) & ((1 << bits) - 1)
    return samples.reshape(lines.shape[0], -1)[:, :width]


def _idat(data: bytes) -> bytes:
    parts, pos = [], 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            parts.append(data[pos + 8:pos + 8 + length])
        elif kind == b"IEND":
            break
        pos += 12 + length
    return b"".join(parts)


def _inflate(path: Path, stream: bytes, expected: int) -> bytes:
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(stream, expected)
    except zlib.error as exc:
        raise InputError(path, f"corrupt PNG: its image data cannot be inflated ({exc})") from None
    if len(raw) < expected:
        raise InputError(path, f"truncated PNG: {len(raw)} bytes of image data, the header needs {expected}")
    return raw


def _unfilter(path: Path, rows: np.ndarray) -> np.ndarray:
    """Undo each row's filter (PNG spec, section 9; the pixel step is one byte for indexed color)."""
    out = np.zeros((rows.shape[0], rows.shape[1] - 1), np.uint8)
    prev = np.zeros(rows.shape[1] - 1, np.uint8)
    for r, row in enumerate(rows):
        kind, line = int(row[0]), row[1:]
        if kind == 0:
            cur = line.copy()
        elif kind == 1:
            cur = np.cumsum(line, dtype=np.uint8)  # x[i] = raw[i] + x[i-1], modulo 256
        elif kind == 2:
            cur = line + prev
        elif kind in (3, 4):
            cur = _sequential(kind, line.tolist(), prev.tolist())
        else:
            raise InputError(path, f"corrupt PNG: unknown filter type {kind} on row {r}")
        out[r] = cur
        prev = out[r]
    return out


def _sequential(kind: int, line: list[int], up: list[int]) -> np.ndarray:
    """Average (3) and Paeth (4), which depend on the byte just decoded."""
    cur = [0] * len(line)
    left = upleft = 0
    for i, (x, b) in enumerate(zip(line, up)):
        if kind == 3:
            value = x + ((left + b) >> 1)
        else:
            p = left + b - upleft
            pa, pb, pc = abs(p - left), abs(p - b), abs(p - upleft)
            value = x + (left if pa <= pb and pa <= pc else b if pb <= pc else upleft)
        left = cur[i] = value & 0xFF
        upleft = b
    return np.array(cur, np.uint8)
