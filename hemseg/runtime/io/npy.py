"""NumPy ``.npy`` arrays: (H, W) or (N, H, W) (and (H, W, 1), channel last), numeric dtypes only, never pickles.

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
    check_dims(path, h, w, n)
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


def read_npy(path: Path) -> ImageVolume:
    return ImageVolume(path=path, data=load_npy(path), kind="npy", spacing=None)
