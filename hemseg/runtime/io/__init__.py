"""Readers and writers of the hemseg runtime: images, volumes, DICOM series, masks, label maps, JSON.

numpy, OpenCV, pydicom and nibabel only (no torch). See :mod:`hemseg.runtime.io.images` for the formats and
rules, :mod:`hemseg.runtime.io.intensity` for the 8-bit mapping and :mod:`hemseg.runtime.io.writers` for the atomic
writers.
"""

from __future__ import annotations

from hemseg.runtime.io.images import MASK_FORMATS, ImageVolume, detect_format, find_inputs, read_image, read_mask
from hemseg.runtime.io.intensity import check_finite, to_uint8
from hemseg.runtime.io.limits import MAX_SIDE, MAX_SLICE_PIXELS, MAX_TOTAL_PIXELS, MIN_SIDE
from hemseg.runtime.io.nifti import through_plane_axis
from hemseg.runtime.io.sniff import stem_of
from hemseg.runtime.io.writers import (
    atomic_write_bytes,
    write_json,
    write_mask_png,
    write_nifti_labels,
    write_png,
)

__all__ = [
    "ImageVolume",
    "MASK_FORMATS",
    "MAX_SIDE",
    "MAX_SLICE_PIXELS",
    "MAX_TOTAL_PIXELS",
    "MIN_SIDE",
    "atomic_write_bytes",
    "check_finite",
    "detect_format",
    "find_inputs",
    "read_image",
    "read_mask",
    "stem_of",
    "through_plane_axis",
    "to_uint8",
    "write_json",
    "write_mask_png",
    "write_nifti_labels",
    "write_png",
]
