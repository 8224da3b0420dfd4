"""Size limits shared by every reader, checked from the file header BEFORE any pixel data is decoded.

- At most :data:`MAX_SIDE` (16384) pixels per side and :data:`MAX_SLICE_PIXELS` (100 megapixels) per slice: a
  larger image is refused as a likely decompression bomb (a small file that would decode to gigabytes).
- At most :data:`MAX_TOTAL_PIXELS` (1 gigavoxel) per volume (all slices together).
- At least :data:`MIN_SIDE` (8) pixels per side: smaller images carry nothing to segment (and break filters).
"""

from __future__ import annotations

from pathlib import Path

from hemseg.errors import InputError

MAX_SIDE = 16384
MAX_SLICE_PIXELS = 100_000_000
MAX_TOTAL_PIXELS = 1_000_000_000
MIN_SIDE = 8


def check_dims(path: str | Path, height: int, width: int, n_slices: int = 1, in_memory: bool = False) -> None:
    """Refuse slice sizes outside the limits above with an :class:`InputError` naming ``path``. ``in_memory``: the
    sizes are an array's (the Python API), not a file header's: said as rows x columns, without the file words."""
    height, width, n_slices = int(height), int(width), int(n_slices)
    if in_memory:
        size, whose, after = f"{height} x {width} px (rows x columns)", "the array has", "not segmented"
    else:
        size, whose, after = f"{width} x {height} px", "header says", "not decoded"
    if height <= 0 or width <= 0 or n_slices <= 0:
        raise InputError(path, f"empty image: {whose} {n_slices} x {height} x {width} (slices x rows x columns)")
    if height > MAX_SIDE or width > MAX_SIDE or height * width > MAX_SLICE_PIXELS:
        bomb = "" if in_memory else " (possible decompression bomb)"
        raise InputError(path, f"image is {size}, above the limit of {MAX_SIDE} px per side and "
                               f"{MAX_SLICE_PIXELS // 1_000_000} megapixels per slice{bomb}; {after}")
    if height * width * n_slices > MAX_TOTAL_PIXELS:
        raise InputError(path, f"volume has {n_slices} slices of {size}, above the limit of "
                               f"{MAX_TOTAL_PIXELS // 1_000_000} megavoxels; {after}")
    if height < MIN_SIDE or width < MIN_SIDE:
        raise InputError(path, f"image is too small: {size} (at least {MIN_SIDE} px per side needed)")


def require_file(path: str | Path) -> Path:
    """The path as a Path, after checking it is an existing, non-empty regular file."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or directory")
    if not path.is_file():
        raise InputError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty (0 bytes)")
    return path
