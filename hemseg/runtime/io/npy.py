"""NumPy ``.npy`` arrays: (H, W) or (N, H, W) (and (H, W, 1), channel last), numeric dtypes only, never pickles.

A volume saved slices last, (H, W, N) as nibabel gives it, would read as H slices of W x N strips: a 3D array whose
last axis is at most a quarter of each other one is read as (N, H, W) all the same, with a warning that says so
and how to save it (``np.moveaxis(a, -1, 0)``), and an error about its size names that cause too.

The header (shape, dtype) is read and checked against the size limits before the array itself is loaded.
bool and integer arrays keep their dtype, float16 becomes float32; complex, object and structured arrays are refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hemseg.errors import InputError
from hemseg.runtime.io.limits import check_dims
from hemseg.runtime.io.volume import ImageVolume


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset). The header length field is checked against the file size before the header
    is read (a corrupt length must not make numpy read gigabytes); every parse failure is an InputError."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            width = 2 if version == (1, 0) else 4
            length = fh.read(width)
            if len(length) < width or fh.tell() + int.from_bytes(length, "little") > size:
                raise InputError(path, "truncated .npy file: the header is longer than the file")
            fh.seek(0)
            np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
    except InputError:
        raise
    except Exception as exc:  # numpy's header parser raises ValueError, SyntaxError, tokenize errors ...
        raise InputError(path, f"corrupt .npy header: {_one_line(exc)}") from None
    return tuple(int(s) for s in shape), np.dtype(dtype), offset


def load_npy(path: Path) -> np.ndarray:
    """The array as (N, H, W) after header, dtype and size checks (no slicing rule beyond adding N = 1 for 2D)."""
    shape, dtype, offset = _read_header(path)
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in "biuf":
        raise InputError(path, f"unsupported .npy dtype {dtype}: expected bool, integer or float values")
    if len(shape) == 2:
        n, h, w = 1, shape[0], shape[1]
    elif len(shape) == 3 and shape[-1] == 1 and shape[0] >= 8 and shape[1] >= 8:
        n, h, w = 1, shape[0], shape[1]  # (H, W, 1), channel last: one gray slice, not H slices 1 px wide
    elif len(shape) == 3:
        n, h, w = shape
        if shape[-1] in (2, 3, 4) and shape[0] >= 8 and shape[1] >= 8:
            raise InputError(path, f"array of shape {shape} looks like (H, W, channels) color; .npy images must be "
                                   "(H, W) or (N, H, W) gray")
    else:
        raise InputError(path, f"array of shape {shape}: expected (H, W) or (N, H, W)")
    try:
        check_dims(path, h, w, n)
    except InputError as exc:
        hint = layout_warning(shape)
        if hint is None:
            raise
        raise InputError(path, f"{exc.reason}; {hint}") from None
    expected = n * h * w * dtype.itemsize
    available = path.stat().st_size - offset
    if available < expected:
        raise InputError(path, f"truncated or corrupt .npy file: the header announces {expected} bytes of data, the "
                               f"file holds {max(available, 0)}")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # ValueError, OSError, EOFError ... for damaged data
        raise InputError(path, f"cannot load the .npy data (truncated or corrupt): {_one_line(exc)}") from None
    if arr.shape != shape:
        raise InputError(path, f"the .npy data has shape {arr.shape}, the header said {shape}")
    if dtype.kind == "f" and dtype.itemsize < 4:
        arr = arr.astype(np.float32)
    return np.ascontiguousarray(arr.reshape(n, h, w))


def layout_warning(shape: tuple[int, ...]) -> str | None:
    """What to say of a 3D array that looks saved slices last (see the module docstring), else None."""
    if len(shape) != 3 or shape[2] < 5 or shape[2] * 4 > min(shape[0], shape[1]):
        return None
    return (f"shape {' x '.join(map(str, shape))} reads as {shape[0]} slices of {shape[1]} x {shape[2]} px: .npy "
            "volumes are (N, H, W); if its slices lie along the last axis, save np.moveaxis(a, -1, 0)")


def read_npy(path: Path) -> ImageVolume:
    data = load_npy(path)
    hint = layout_warning(data.shape)  # a 3D array keeps its shape ((H, W, 1) and 2D become (1, H, W): no hint)
    return ImageVolume(path=path, data=data, kind="npy", spacing=None, geometry_warnings=(hint,) if hint else ())
