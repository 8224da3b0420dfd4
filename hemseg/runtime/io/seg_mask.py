"""DICOM Segmentation (SEG) files as masks of training and evaluation data (the ``[dicom]`` extra: highdicom).

Radiologists' annotations often leave a PACS or a viewer (3D Slicer, OHIF, ...) as a DICOM SEG that references the
image series it was drawn on, not as a PNG or NIfTI mask. A dataset may therefore pair ``images/<stem>/`` (a series
folder) or ``images/<stem>.dcm`` (one single- or multi-frame file) with ``masks/<stem>.dcm``, a SEG of it (or an RT
Structure Set: :mod:`~hemseg.runtime.io.rtstruct_mask`; :mod:`~hemseg.runtime.io.dicom_mask` tells them apart).

Conventions:

- Frames are matched to slices by reference, not by position: the SEG's frames name their source instance (and
  source frame, for a multi-frame image) in the Derivation Image Sequence; slice ``k`` of the image
  (:attr:`ImageVolume.sources` in the reader's slice order) gets the frames that name it. A source slice that no
  frame names is empty, as the standard allows a SEG to leave out frames without the segment (hemseg's own SEGs do).
- The SEG must belong to the image: every instance it references must be one of the image's, else it is refused
  (a SEG of another series would otherwise read as an empty mask).
- Lesion = any pixel of any segment; with ``labels`` (``--label``), of the segments with those numbers. A
  FRACTIONAL segment counts where its value is at least 0.5.
- Errors are :class:`~hemseg.errors.InputError` naming the SEG file; a missing highdicom is a
  :class:`~hemseg.errors.DependencyError` naming the extra.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from hemseg.errors import DependencyError, InputError
from hemseg.runtime.io.dicom_mask import foreign_references_error, read_mask_dataset, require_dicom_image
from hemseg.runtime.io.dicom_seg import INSTALL_HINT, _one_line, read_headers
from hemseg.runtime.io.volume import ImageVolume


def read_seg(path: str | Path):
    """The highdicom Segmentation in ``path``; InputError when the file is not a readable DICOM SEG."""
    path = Path(path)
    try:
        import highdicom as hd
    except ImportError as exc:
        raise DependencyError(f"DICOM SEG masks need highdicom ({exc}); {INSTALL_HINT}") from None
    ds = read_mask_dataset(path, "seg", f"DICOM SEG masks need pydicom; {INSTALL_HINT}")
    try:
        return hd.seg.Segmentation.from_dataset(ds, copy=False)
    except KeyError as exc:  # highdicom looks an element up by tag: the message is the bare tag
        raise InputError(path, f"not a readable DICOM SEG: a required element {_one_line(exc)} is missing (the file "
                               "is truncated or incomplete?)") from None
    except Exception as exc:
        raise InputError(path, f"not a readable DICOM SEG: {_one_line(exc)}") from None


def _short_pixel_data(seg) -> str | None:
    """Why the SEG's uncompressed pixel data cannot hold its frames (a file cut short: pydicom reads it without
    complaint), or None (enough bytes, or a compressed transfer syntax, which the decoder checks)."""
    ts = getattr(getattr(seg, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None or ts.is_compressed or "PixelData" not in seg:
        return None
    try:
        frames = int(seg.get("NumberOfFrames", 1) or 1)
        need = math.ceil(frames * int(seg.Rows) * int(seg.Columns) * int(seg.BitsAllocated) / 8)
    except (AttributeError, TypeError, ValueError):
        return None
    have = len(seg.PixelData)
    if have >= need:
        return None
    return f"its pixel data holds {have} bytes where its {frames} frame(s) need {need}: the file is truncated"


def seg_segment_numbers(path: str | Path) -> list[int]:
    """The segment numbers of the SEG in ``path``, from its Segment Sequence (the frames are not read: the
    label-map check of ``hemseg train`` / ``eval`` asks before the masks are loaded)."""
    path = Path(path)
    ds = read_mask_dataset(path, "seg", f"DICOM SEG masks need pydicom; {INSTALL_HINT}", pixels=False)
    try:
        return sorted(int(item.SegmentNumber) for item in ds.SegmentSequence)
    except (AttributeError, TypeError, ValueError) as exc:
        raise InputError(path, f"not a readable DICOM SEG: Segment Sequence: {_one_line(exc)}") from None


def read_seg_mask(path: str | Path, vol: ImageVolume, labels: Sequence[int] | None = None) -> np.ndarray:
    """The SEG in ``path`` as the mask of ``vol`` (a DICOM file or series folder): uint8 {0, 1}, (N, H, W) in
    ``vol``'s slice order."""
    return read_seg_mask_and_segments(path, vol, labels)[0]


def read_seg_mask_and_segments(path: str | Path, vol: ImageVolume, labels: Sequence[int] | None = None
                               ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_seg_mask` and the SEG's segment numbers, from one read of the file."""
    path = Path(path)
    require_dicom_image(path, vol, "a DICOM SEG mask")
    seg = read_seg(path)
    headers = read_headers(vol)
    uids = [str(h.SOPInstanceUID) for h in headers]
    referenced = {str(sop) for _, _, sop in seg.get_source_image_uids()}
    foreign = referenced - set(uids)
    if foreign or not referenced:
        raise foreign_references_error(path, "SEG", seg, foreign, vol, headers)
    numbers = [int(n) for n in seg.segment_numbers]
    chosen = numbers if not labels else [n for n in numbers if n in {int(v) for v in labels}]
    n, h, w = vol.shape
    if not chosen:  # the labels select no segment of this SEG: nothing of it is lesion
        return np.zeros((n, h, w), np.uint8), np.array(numbers)
    short = _short_pixel_data(seg)
    if short:
        raise InputError(path, short)
    kw = dict(segment_numbers=chosen, ignore_spatial_locations=True, assert_missing_frames_are_empty=True)
    try:
        if len(uids) == 1 and n > 1:  # one multi-frame image: frames 1..n
            arr = seg.get_pixels_by_source_frame(uids[0], source_frame_numbers=list(range(1, n + 1)), **kw)
        else:
            arr = seg.get_pixels_by_source_instance(uids, **kw)
    except Exception as exc:
        raise InputError(path, f"cannot map the SEG onto {vol.path}: {_one_line(exc)}") from None
    if arr.shape[1:3] != (h, w):
        raise InputError(path, f"SEG frames of {arr.shape[1]} x {arr.shape[2]} px, images of {h} x {w} px "
                               f"({vol.path})")
    return (np.asarray(arr, dtype=np.float32) >= 0.5).any(axis=-1).astype(np.uint8), np.array(numbers)
