"""Intensity mapping to the 8-bit range the preprocessing chain expects.

The rule of :func:`to_uint8`:

- uint8 input is returned unchanged (the same array object).
- Any other dtype (16-bit, signed or wider integers, bool, float): the 0.5th and 99.5th percentiles ``lo``, ``hi``
  are taken over the WHOLE array (all slices of a volume together, so slices stay comparable), values are clipped
  to ``[lo, hi]`` and mapped linearly to 0..255 (rounded). If ``lo == hi`` (e.g. an image that is > 99 %
  background) the full ``min .. max`` range is used instead; a constant image maps to zeros.
- NaN or +-Inf anywhere is refused with an :class:`~hemseg.errors.InputError` naming ``path`` (no silent fill).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hemseg.errors import InputError
from hemseg.runtime.io.volume import IN_MEMORY

PERCENTILES = (0.5, 99.5)


def is_blank(data: np.ndarray) -> bool:
    """True when every value of ``data`` (a whole image or volume) is the same: a blank export or a failed
    reconstruction, which maps to zeros (:func:`to_uint8`) and carries nothing to segment or learn from."""
    if not data.size or data.flat[-1] != data.flat[0]:  # nearly every real image is decided here, without a pass
        return False
    return bool(data.min() == data.max())  # two reductions, no array-sized temporary (predict calls this per input)


def check_finite(data: np.ndarray, path: str | Path | None = None, what: str = "image") -> None:
    """Raise InputError when a float array holds NaN or Inf; ``what`` the array is (image, mask) for the message."""
    if data.dtype.kind in "fc":
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise InputError(path if path is not None else IN_MEMORY,
                             f"{bad} NaN/Inf value(s) in the {what} data; replace them (e.g. with 0) before use")


def to_uint8(data: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """(N, H, W) or (H, W) values -> uint8 of the same shape, by the module's rule."""
    data = np.asarray(data)
    if data.dtype == np.uint8:
        return data
    if data.dtype.kind not in "biuf":
        raise ValueError(f"to_uint8 needs numeric data, got dtype {data.dtype}")
    check_finite(data, path)
    if data.size == 0:
        return np.zeros(data.shape, dtype=np.uint8)
    values = data.astype(np.float64) if data.dtype.kind == "b" else data
    lo, hi = (float(v) for v in np.percentile(values, PERCENTILES))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(data.shape, dtype=np.uint8)
    clipped = np.clip(values.astype(np.float64), lo, hi)
    factor = 255.0 / (hi - lo)
    if np.isfinite(hi - lo) and np.isfinite(factor):
        scaled = (clipped - lo) * factor
    else:  # a range too wide (+/-1e308) or too narrow (subnormal) for float64: in units of the largest magnitude
        unit = max(abs(lo), abs(hi))
        scaled = (clipped / unit - lo / unit) * (255.0 / (hi / unit - lo / unit))
    return np.rint(scaled).astype(np.uint8)
