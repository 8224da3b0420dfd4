"""JPEG masks: one class, recovered from lossy compression.

Many public 2D MRI datasets ship their masks as JPEG. Lossy compression turns a 0/255 mask into values near 0 and
near 255 with ringing at the outlines (seen: 0-3 and 252-255 at quality 95), so "every nonzero value" would grow
each lesion by its compression noise, and exact label values are gone. A two-level mask is still recoverable: it is
binarized at Otsu's threshold between its two clusters. A mask of several classes (a label map saved as JPEG: 85,
170, 255) or a soft mask is not: its in-between values fill whole regions, not just the outlines, and such a file is
refused, naming it, rather than merged into one class. ``--label`` cannot select values that compression changed,
so it is refused for JPEG masks too.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from hemseg.errors import InputError
from hemseg.runtime.io.raster import decode_raster

log = logging.getLogger(__name__)

#: pixels further than this from the binarized outline that hold an in-between value (a quarter to three quarters of
#: the bright level) mean several classes or a soft mask, when they make up more than :data:`INTERIOR_SHARE` of the
#: foreground
OUTLINE_PX = 2
INTERIOR_SHARE = 0.05


def jpeg_mask(path: Path, labels: tuple[int, ...] | None = None) -> np.ndarray:
    """The JPEG mask ``path`` as (N, H, W) uint8 in {0, 1} (see the module docstring)."""
    if labels is not None:
        raise InputError(path, "a label value (--label, --pred-label) cannot be selected in a JPEG mask (lossy "
                               "compression changed the values); a JPEG mask is read as one class: save label maps "
                               "as PNG")
    pixels = decode_raster(path, "jpeg")
    gray = pixels.max(axis=-1) if pixels.ndim == 4 else pixels  # a colored annotation on black: any channel
    out = np.zeros(gray.shape, np.uint8)
    for k, plane in enumerate(gray):
        if plane.dtype != np.uint8:  # a 12-bit JPEG: onto 0-255 by its own maximum
            top = float(plane.max())
            plane = np.rint(plane * (255.0 / top)).astype(np.uint8) if top > 0 else np.zeros(plane.shape, np.uint8)
        out[k] = _binarize(path, plane)
    return out


def _binarize(path: Path, plane: np.ndarray) -> np.ndarray:
    top = int(plane.max())
    if top == 0:  # an all-black plane compresses exactly: an empty mask
        return np.zeros(plane.shape, np.uint8)
    threshold, fg = cv2.threshold(plane, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    between = (plane > top // 4) & (plane < 3 * top // 4)
    kernel = np.ones((2 * OUTLINE_PX + 1, 2 * OUTLINE_PX + 1), np.uint8)
    outline = cv2.dilate(fg, kernel).astype(bool) & ~cv2.erode(fg, kernel).astype(bool)
    interior = int(np.count_nonzero(between & ~outline))
    if interior > INTERIOR_SHARE * max(int(fg.sum()), 1):
        raise InputError(path, f"JPEG mask with several grey levels away from its outlines ({interior} pixels between "
                               f"0 and {top}): a label map or a soft mask, which lossy compression cannot keep; save "
                               "it as PNG (or binarize it first)")
    log.debug("%s: JPEG mask binarized at %d (Otsu; lossy format)", path, int(threshold))
    return fg
