"""DICOM masks of DICOM images: a DICOM Segmentation (SEG, :mod:`~hemseg.runtime.io.seg_mask`) or an RT Structure
Set (RTSTRUCT, :mod:`~hemseg.runtime.io.rtstruct_mask`), told apart by SOP Class UID, else by Modality (one cheap
header read). Any other DICOM object as a mask is an :class:`~hemseg.errors.InputError` naming what it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from hemseg.errors import DependencyError, InputError
from hemseg.runtime.io.dicom_seg import _one_line, is_dicom_volume
from hemseg.runtime.io.volume import ImageVolume

#: Segmentation and Label Map Segmentation storage
SEG_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


def mask_kind_of(ds) -> str | None:
    """``"seg"`` or ``"rtstruct"`` for a data set that is such a mask, else None."""
    sop = str(ds.get("SOPClassUID", "") or "").strip()
    if sop in SEG_SOP_CLASSES:
        return "seg"
    if sop == RTSTRUCT_SOP_CLASS:
        return "rtstruct"
    modality = str(ds.get("Modality", "") or "").strip().upper()  # an unknown or private SOP class, or none
    return {"SEG": "seg", "RTSTRUCT": "rtstruct"}.get(modality)


def not_a_mask_reason(ds) -> str:
    what = str(ds.get("Modality", "") or "").strip()
    if not what and not str(ds.get("SOPClassUID", "") or "").strip():
        return ("not a DICOM Segmentation (SEG) or RT Structure Set (RTSTRUCT): it has neither a SOP Class UID nor "
                "a Modality (not DICOM, or damaged)")
    return (f"a DICOM mask must be a DICOM Segmentation (SEG) or RT Structure Set (RTSTRUCT); this is a DICOM "
            f"{what or 'unknown'} object")


def require_dicom_image(path: Path, vol: ImageVolume, what: str) -> None:
    """InputError naming the mask file ``path`` unless ``vol`` is a DICOM image (a file or series folder), the
    only kind a SEG or RTSTRUCT can reference. ``what``: the mask, for the message."""
    if not is_dicom_volume(vol):
        raise InputError(path, f"{what} needs a DICOM image (a file or series folder); {vol.path} is a {vol.kind} "
                               "image")


def _require_content(path: Path) -> None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from None
    if size == 0:
        raise InputError(path, "file is empty (0 bytes)")


_NAMES = {"seg": "a DICOM SEG", "rtstruct": "an RT Structure Set"}


def _read(path: Path, dependency: str, **kwargs):
    """pydicom's data set of ``path`` (``kwargs`` to ``dcmread``); InputError for an empty or unreadable file."""
    try:
        import pydicom
    except ImportError as exc:
        raise DependencyError(f"{dependency} ({exc})") from None
    _require_content(path)
    from hemseg.runtime.io.dicom import parse_all

    try:
        ds = pydicom.dcmread(str(path), force=True, **kwargs)
        parse_all(ds)  # a damaged element fails here, not in the code that explains another problem later
    except Exception as exc:
        raise InputError(path, f"not a readable DICOM file: {_one_line(exc)}") from None
    return ds


def read_mask_dataset(path: str | Path, expected: str, dependency: str, pixels: bool = True):
    """The pydicom data set in ``path`` (without its pixel data unless ``pixels``) when it is a mask of kind
    ``expected`` (``"seg"`` or ``"rtstruct"``); InputError naming the file otherwise. ``dependency``: the error for a
    missing pydicom."""
    path = Path(path)
    ds = _read(path, dependency, stop_before_pixels=not pixels)
    kind = mask_kind_of(ds)
    if kind != expected:
        raise InputError(path, f"{_NAMES[expected]} was expected; this is {_NAMES[kind]}" if kind
                         else not_a_mask_reason(ds))
    return ds


def dicom_mask_kind(path: str | Path) -> str:
    """``"seg"`` or ``"rtstruct"``: what the DICOM file ``path`` is as a mask; InputError for anything else."""
    path = Path(path)
    ds = _read(path, "DICOM masks need pydicom; pip install pydicom", stop_before_pixels=True,
               specific_tags=["SOPClassUID", "Modality"])
    kind = mask_kind_of(ds)
    if kind is None:
        raise InputError(path, not_a_mask_reason(ds))
    return kind


def read_dicom_mask_and_labels(path: str | Path, vol: ImageVolume, labels: Sequence[int] | None = None
                               ) -> tuple[np.ndarray, np.ndarray]:
    """The SEG or RTSTRUCT in ``path`` as the mask of ``vol`` (uint8 {0, 1}, (N, H, W) in ``vol``'s slice order)
    and its label numbers (SEG segment numbers, RTSTRUCT ROI numbers)."""
    if dicom_mask_kind(path) == "rtstruct":
        from hemseg.runtime.io.rtstruct_mask import read_rtstruct_mask_and_rois

        return read_rtstruct_mask_and_rois(path, vol, labels)
    from hemseg.runtime.io.seg_mask import read_seg_mask_and_segments

    return read_seg_mask_and_segments(path, vol, labels)


def dicom_mask_label_values(path: str | Path) -> list[int]:
    """The label numbers of the SEG (segment numbers) or RTSTRUCT (ROI numbers with a closed contour) in ``path``."""
    if dicom_mask_kind(path) == "rtstruct":
        from hemseg.runtime.io.rtstruct_mask import rtstruct_roi_numbers

        return rtstruct_roi_numbers(path)
    from hemseg.runtime.io.seg_mask import seg_segment_numbers

    return seg_segment_numbers(path)


def foreign_references_error(path: Path, kind: str, ds, foreign: set, vol: ImageVolume, headers: list) -> InputError:
    """The error for a SEG / RTSTRUCT (``kind``) that references ``foreign`` instances which are not images of
    ``vol``: when it names ``vol``'s own series, slices may be missing from the image folder (or it names the
    series wrongly); else it was drawn on another series."""
    from hemseg.runtime.io.dicom_sort import references_of

    series = str(headers[0].get("SeriesInstanceUID", "") or "").strip() if headers else ""
    if series and series in references_of(ds)[0]:
        return InputError(path, f"the {kind} references {len(foreign)} instance(s) that are not images of "
                                f"{vol.path}, although it names that series: slices missing from the folder "
                                "(deleted, or left out of the export)? Or it was drawn on another series")
    return InputError(path, f"the {kind} references {len(foreign) or 'no'} instance(s) that are not images of "
                            f"{vol.path}: it belongs to another series")
