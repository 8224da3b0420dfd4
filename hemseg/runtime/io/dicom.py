"""DICOM through pydicom: single files (single- or multi-frame) and series folders.

Conventions:

- Gray images only: ``SamplesPerPixel > 1`` or a color ``PhotometricInterpretation`` (RGB, YBR_*, PALETTE COLOR, ...)
  is refused. Each frame of a multi-frame file is one slice, in stored order.
- Values: the modality rescale ``RescaleSlope``/``RescaleIntercept`` is applied (per slice/frame; values become
  float32 when it is not the identity). ``MONOCHROME1`` (0 = white) is inverted as ``x' = min + max - x`` over the
  whole volume, so that larger always means brighter.
- ``spacing`` is ``PixelSpacing`` (row, column) in mm, when present; ``modality`` is ``Modality`` (CT, US, ... are
  read like MR: :func:`hemseg.runtime.segmenter.input_warnings` warns about them).
- Not an image: a DICOM SEG, RT Dose / Structure Set / Plan, Structured Report, presentation state, raw data or
  encapsulated document (by SOP Class UID, else Modality) is refused as an input; inside a series folder such objects
  (a PACS export stores them next to the images) are skipped with a warning naming them.
- A series folder: every other DICOM file in it (``.dcm`` extension, ``DICM`` at byte 128, or a bare data set without preamble; ``DICOMDIR`` skipped) must be
  a single-frame gray image of the same series (``SeriesInstanceUID``), size and orientation. Slices are sorted by
  ``ImagePositionPatient`` projected on the slice normal (the cross product of the ``ImageOrientationPatient`` row and
  column directions); when positions or orientations are missing, by ``InstanceNumber``. Two slices at the same
  position are refused (several echoes or phases in one folder).
- Geometry: when position, orientation and pixel spacing are known, ``affine`` maps (row, column, slice) indices to
  RAS millimetres (DICOM's LPS with x and y negated), so a NIfTI label map can be written with ``slice_axis = 2``.
  The slice step is the mean step between the first and last slice; one slice uses ``SpacingBetweenSlices``, else
  ``SliceThickness``, else 1 mm along the normal. What that affine cannot hold is said in ``geometry_warnings``
  (:func:`slice_geometry`): steps along the normal that differ by more than 1 % (the affine places slices evenly,
  ``slice_thickness_mm`` keeps each slice's own extent for volumes), and slices that step sideways (sheared, e.g. a
  gantry tilt: the affine holds the shear, which only an sform can carry).
- A bare data set without file meta (and preamble) is decoded in the encoding it was read with (implicit/explicit
  VR, little/big endian).
- Compressed transfer syntaxes need a decoder plugin (pylibjpeg, gdcm, ...); without one the error says which
  transfer syntax and what to install.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from hemseg.errors import InputError
from hemseg.runtime.io.limits import check_dims
from hemseg.runtime.io.once import warn_once
from hemseg.runtime.io.sniff import DICOM_MAGIC, DICOM_MAGIC_OFFSET, is_dicom_file, read_head
from hemseg.runtime.io.volume import ImageVolume

log = logging.getLogger(__name__)

_GRAY = ("MONOCHROME1", "MONOCHROME2")
#: the colour PhotometricInterpretation values of DICOM PS3.3 C.7.6.3.1.2 (retired ones too)
_COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT",
          "PALETTE COLOR", "HSV", "ARGB", "CMYK")
#: DICOM objects that may carry pixel data but are not images to segment: derived results and radiotherapy objects,
#: by SOP Class UID, and by Modality when the class is absent. A DICOM SEG (hemseg's own output, too) or RT Structure
#: Set is a mask (:mod:`hemseg.runtime.io.dicom_mask`).
NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation (SEG)",
    "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation",
    "1.2.840.10008.5.1.4.1.1.66": "Raw Data",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set",
    "1.2.840.10008.5.1.4.1.1.481.5": "RT Plan",
    "1.2.840.10008.5.1.4.1.1.481.8": "RT Ion Plan",
    "1.2.840.10008.5.1.4.1.1.11.1": "Grayscale Softcopy Presentation State",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
}
NON_IMAGE_MODALITIES = {"SEG": "Segmentation (SEG)", "RTDOSE": "RT Dose", "RTSTRUCT": "RT Structure Set",
                        "RTPLAN": "RT Plan", "SR": "Structured Report", "PR": "Presentation State",
                        "KO": "Key Object Selection", "REG": "Registration", "DOC": "document"}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_DECODER_HINT = ("install a decoder plugin, e.g. `pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg` "
                 "(or python-gdcm / pyjpegls)")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """The whole message folded onto one line (pydicom lists the missing plugins on separate lines), without the
    traceback pydicom puts inside the message of a value it could not convert."""
    message = str(exc).split("Traceback (most recent call last)")[0]
    text = " ".join(line.strip() for line in message.strip().splitlines() if line.strip()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def printable(value, limit: int = 64) -> str:
    """A header value for an error message: one line, printable ASCII only, at most ``limit`` characters."""
    text = "".join(c if " " <= c <= "~" else "?" for c in str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _BadValue(Exception):
    """A header value that cannot be what its attribute says (turned into an InputError naming the file)."""


def _number(value, keyword: str, kind=float, positive: bool = False):
    """``value`` as a finite float (or an int), else _BadValue naming the attribute."""
    try:
        number = kind(value)
        ok = bool(np.isfinite(number)) and (number > 0 if positive else True)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        need = "a positive number" if positive else "a number"
        raise _BadValue(f"{keyword} is {printable(value)!r}, not {need}")
    return number


def _numbers(value, keyword: str, count: int, positive: bool = False) -> list[float] | None:
    """A multi-valued numeric attribute of exactly ``count`` values, None when absent or of another length."""
    if value is None:
        return None
    try:
        values = list(value) if not isinstance(value, (str, bytes)) else [value]
    except TypeError:
        values = [value]
    if len(values) != count:
        return None
    return [_number(v, keyword, positive=positive) for v in values]


# ----------------------------------------------------------------------------------------------------- reading
def parse_all(ds) -> None:
    """Parse every element of ``ds`` and of its file meta now (pydicom defers it, and raises NotImplementedError,
    ValueError, ... wherever a damaged element is first read): fail here, where the caller names the file."""
    ds.walk(lambda dataset, element: None)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        meta.walk(lambda dataset, element: None)


class _NotAnImage(InputError):
    """A bare DICOM data set (no preamble) that is a non-image object (an RT Structure Set, a report): its ``kind``
    lets a series folder skip it as it skips such objects with a preamble (it failed the whole series; QA, stop 56)."""

    def __init__(self, path: Path, kind: str):
        super().__init__(path, f"is a DICOM {kind} object, not an image to segment")
        self.kind = kind


def _dcmread(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    has_magic = read_head(path, DICOM_MAGIC_OFFSET + 4)[DICOM_MAGIC_OFFSET:] == DICOM_MAGIC
    try:
        ds = pydicom.dcmread(str(path), force=not has_magic)
        parse_all(ds)
    except InvalidDicomError as exc:
        raise InputError(path, f"not a DICOM file: {printable(_first_line(exc), 200)}") from None
    except Exception as exc:  # pydicom raises many types for damaged files
        raise InputError(path, "cannot parse the DICOM file (truncated or corrupt): "
                               f"{printable(_first_line(exc), 200)}") from None
    if not has_magic and "Rows" not in ds:
        kind = non_image_kind(ds)  # a bare RT object / SR without the file preamble (pydicom's rtstruct.dcm)
        if kind is not None:
            raise _NotAnImage(path, kind)
        raise InputError(path, "not a DICOM file: no 'DICM' marker at byte 128 and no image attributes")
    _name_transfer_syntax(ds)
    return ds


def _name_transfer_syntax(ds) -> None:
    """A bare data set (no file meta) is decoded in the encoding pydicom read it with: implicit or explicit VR,
    little or big endian (pixel decoding needs a Transfer Syntax UID)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        return
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                              ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def group_value(ds, macro: str, keyword: str, frame: int | None = None):
    """``keyword`` from the per-frame functional group of ``frame``, else the shared group, else the top level."""
    if frame is not None and "PerFrameFunctionalGroupsSequence" in ds:
        groups = ds.PerFrameFunctionalGroupsSequence
        if frame < len(groups) and macro in groups[frame] and len(groups[frame][macro].value):
            item = groups[frame][macro].value[0]
            if keyword in item:
                return item[keyword].value
    if "SharedFunctionalGroupsSequence" in ds and len(ds.SharedFunctionalGroupsSequence):
        shared = ds.SharedFunctionalGroupsSequence[0]
        if macro in shared and len(shared[macro].value) and keyword in shared[macro].value[0]:
            return shared[macro].value[0][keyword].value
    value = ds.get(keyword)
    return None if value is None or value == "" else value


#: Media Storage Directory Storage: a DICOMDIR index
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


def non_image_kind(ds) -> str | None:
    """What ``ds`` is when it is a DICOM object that is not an image to segment (a SEG, an RT object, a report...),
    else None."""
    sop = str(ds.get("SOPClassUID", "")).strip()
    meta = getattr(ds, "file_meta", None)
    if "DirectoryRecordSequence" in ds or (meta is not None and str(meta.get("MediaStorageSOPClassUID", "")).strip()
                                           == DICOMDIR_SOP_CLASS):
        return "media directory (DICOMDIR)"  # an index, whatever its file name (DICOMDIR.dcm, a renamed copy)
    if sop in NON_IMAGE_SOP_CLASSES:
        return NON_IMAGE_SOP_CLASSES[sop]
    if sop.startswith("1.2.840.10008.5.1.4.1.1.88."):
        return "Structured Report"
    return NON_IMAGE_MODALITIES.get(str(ds.get("Modality", "")).strip().upper())


def modality(ds) -> str | None:
    """The data set's ``Modality`` (upper case, printable), or None when it has none."""
    value = str(ds.get("Modality", "") or "").strip().upper()
    return printable(value) if value else None


def _check_gray_image(path: Path, ds) -> int:
    """Refuse non-images and color; check the size limits. Returns the number of frames."""
    kind = non_image_kind(ds)
    if kind is not None:
        raise InputError(path, f"is a DICOM {kind} object, not an image to segment")
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        kind = ds.get("Modality") or ds.get("SOPClassUID", "unknown type")
        raise InputError(path, f"DICOM file has no pixel data (not an image: {printable(kind)}; or the file is "
                               "truncated)")
    raw = ds.get("PhotometricInterpretation")
    photometric = str(raw if raw is not None else "MONOCHROME2").strip().upper()
    # header faults pydicom's decoder then reported as "truncated or corrupt file" (a QA finding of stop 52)
    if raw is None:
        raise InputError(path, "invalid DICOM header: no PhotometricInterpretation (a required attribute of an image; "
                               "a gray image is MONOCHROME2 or MONOCHROME1)")
    if photometric in _GRAY and str(raw).strip() != photometric:
        raise InputError(path, f"invalid PhotometricInterpretation {printable(str(raw).strip())!r}: DICOM values are "
                               f"upper case ({photometric})")
    if str(raw) != photometric and photometric in _GRAY:  # " MONOCHROME2": spaces are not significant in a CS value
        ds.PhotometricInterpretation = photometric  # (pydicom's decoder refused it as "unknown")
    if "SamplesPerPixel" not in ds:
        raise InputError(path, "invalid DICOM header: no SamplesPerPixel (a required attribute of an image; a gray "
                               "image has 1)")
    if str(ds.get("SamplesPerPixel", "")).strip() == "0":
        raise InputError(path, "invalid DICOM header: SamplesPerPixel 0 (a gray image has 1)")
    try:
        samples = _number(ds.get("SamplesPerPixel", 1) or 1, "SamplesPerPixel", int)
        frames = _number(ds.get("NumberOfFrames", 1) or 1, "NumberOfFrames", int)
        rows = _number(ds.get("Rows", 0) or 0, "Rows", int)
        columns = _number(ds.get("Columns", 0) or 0, "Columns", int)
    except _BadValue as exc:
        raise InputError(path, f"invalid DICOM header: {exc}") from None
    if photometric in _COLOR or (samples > 1 and photometric not in _GRAY):
        raise InputError(path, f"color DICOM (PhotometricInterpretation={printable(photometric)}, "
                               f"SamplesPerPixel={samples}) is not supported: hemseg reads gray MR/CT images")
    if photometric not in _GRAY:  # MONOCHROME3, an empty value: not a colour image, a broken header
        raise InputError(path, f"invalid PhotometricInterpretation {printable(photometric) or '(empty)'!r}: not a "
                               "DICOM value (a gray image is MONOCHROME2 or MONOCHROME1)")
    if samples != 1:
        raise InputError(path, f"invalid DICOM header: SamplesPerPixel {samples} with {photometric} (a gray image "
                               "has 1)")
    check_dims(path, rows, columns, frames)
    return frames


def _is_compressed(ts) -> bool:
    try:
        return bool(ts.is_compressed)
    except Exception:  # an unknown or mangled transfer syntax UID
        return False


def _transfer_syntax(ds):
    meta = getattr(ds, "file_meta", None)
    return None if meta is None else meta.get("TransferSyntaxUID")


def _decoders_installed(ts) -> list[str]:
    """The pydicom decoder plugins installed for transfer syntax ``ts`` (empty when none, or pydicom cannot say)."""
    try:
        from pydicom.pixels.decoders.base import get_decoder

        return list(get_decoder(ts).available_plugins)
    except Exception:  # noqa: BLE001 - an unknown syntax, another pydicom version
        return []


def _decode(path: Path, ds, frames: int) -> np.ndarray:
    """Stored values as (frames, rows, cols), with a clear message when no decoder is installed."""
    ts = _transfer_syntax(ds)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom: RuntimeError (no plugin), ValueError (short data), NotImplementedError...
        log.debug("%s: pixel decoding failed", path, exc_info=True)
        if ts is not None and _is_compressed(ts):
            if _decoders_installed(ts):  # a decoder is there and failed: the data, not the installation
                raise InputError(path, f"cannot decode pixel data compressed with transfer syntax "
                                       f"'{printable(ts.name)}' ({printable(ts)}): the installed decoders failed on "
                                       f"it (corrupt or unusual compressed data: {printable(_one_line(exc), 300)})"
                                       ) from None
            raise InputError(path, f"cannot decode pixel data compressed with transfer syntax "
                                   f"'{printable(ts.name)}' ({printable(ts)}): no installed decoder could "
                                   f"({printable(_one_line(exc), 300)}); {_DECODER_HINT}") from None
        raise InputError(path, "cannot read the pixel data (truncated or corrupt file): "
                               f"{printable(_first_line(exc), 200)}") from None
    arr = np.asarray(arr)
    if frames == 1 and arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] != frames:
        raise InputError(path, f"unexpected decoded pixel array shape {arr.shape} for {frames} gray frame(s)")
    return arr


def _rescale(ds, arr: np.ndarray) -> np.ndarray:
    """Apply the Modality LUT: a Modality LUT Sequence (a table from stored to meaningful values; when present the
    standard allows no RescaleSlope) or RescaleSlope/Intercept frame by frame; float32 when any is not the
    identity."""
    if "ModalityLUTSequence" in ds:
        return _modality_lut(ds, arr)
    params = []
    for i in range(arr.shape[0]):
        slope = group_value(ds, "PixelValueTransformationSequence", "RescaleSlope", i)
        inter = group_value(ds, "PixelValueTransformationSequence", "RescaleIntercept", i)
        params.append((1.0 if slope is None else _number(slope, "RescaleSlope"),
                       0.0 if inter is None else _number(inter, "RescaleIntercept")))
    if all(p == (1.0, 0.0) for p in params) and arr.dtype.kind in "biuf":
        return arr if arr.dtype != np.float64 else arr.astype(np.float32)
    out = arr.astype(np.float32)
    for i, (slope, inter) in enumerate(params):
        out[i] = out[i] * np.float32(slope) + np.float32(inter)
    return out


def _modality_lut(ds, arr: np.ndarray) -> np.ndarray:
    """The Modality LUT Sequence applied to every frame (pydicom's ``apply_modality_lut``), as float32; a table
    that cannot be applied is refused: the stored values may even run the other way round."""
    from pydicom.pixels import apply_modality_lut

    try:
        if len(ds.ModalityLUTSequence) != 1:
            raise ValueError(f"{len(ds.ModalityLUTSequence)} items, one expected")
        out = np.stack([np.asarray(apply_modality_lut(frame, ds)) for frame in arr]).astype(np.float32)
    except Exception as exc:  # noqa: BLE001 - a malformed descriptor or table: pydicom raises several types
        raise _BadValue(f"ModalityLUTSequence cannot be applied ({printable(_first_line(exc), 200)})") from None
    if out.shape != arr.shape:
        raise _BadValue(f"ModalityLUTSequence gives shape {out.shape} for frames of shape {arr.shape}")
    return out


def _invert_monochrome1(arr: np.ndarray) -> np.ndarray:
    lo, hi = arr.min(), arr.max()
    wide = arr.astype(np.float64) if arr.dtype.kind == "f" else arr.astype(np.int64)
    return (wide.max() + wide.min() - wide).astype(arr.dtype) if lo != hi else arr


def _spacing(ds, frame: int | None = None) -> tuple[float, float] | None:
    value = _numbers(group_value(ds, "PixelMeasuresSequence", "PixelSpacing", frame), "PixelSpacing", 2,
                     positive=True)
    return None if value is None else (value[0], value[1])


#: how far ImageOrientationPatient's row and column vectors may be from unit length and from orthogonal (its
#: decimal strings are rounded); beyond it the vectors describe no plane and the geometry is unknown
IOP_TOLERANCE = 1e-2


def valid_orientation(iop: np.ndarray) -> bool:
    """Whether the six ImageOrientationPatient values are two orthogonal unit vectors (within :data:`IOP_TOLERANCE`)."""
    row, col = iop[:3], iop[3:]
    return bool(abs(np.linalg.norm(row) - 1) <= IOP_TOLERANCE and abs(np.linalg.norm(col) - 1) <= IOP_TOLERANCE
                and abs(float(np.dot(row, col))) <= IOP_TOLERANCE)


def _orientation(ds, frame: int | None = None) -> np.ndarray | None:
    """ImageOrientationPatient; None when absent, or when it is not two orthogonal unit vectors (all zero, scaled,
    parallel), which no slice plane has: such a file's geometry is unknown, as when it has none (a warning)."""
    value = _numbers(group_value(ds, "PlaneOrientationSequence", "ImageOrientationPatient", frame),
                     "ImageOrientationPatient", 6)
    if value is None:
        return None
    iop = np.array(value, dtype=np.float64)
    if not valid_orientation(iop):
        from hemseg.runtime.io.once import warn_once

        where = getattr(ds, "filename", None) or "a DICOM file"
        warn_once(log, where, "%s: ImageOrientationPatient %s is not two orthogonal unit vectors: ignored (this "
                  "file's orientation is unknown; a single file or a series without another orientation then has no "
                  "lesion volume, DICOM SEG or NIfTI geometry)", where,
                  "\\".join(f"{v:g}" for v in value))
        return None
    return iop


def _position(ds, frame: int | None = None) -> np.ndarray | None:
    value = _numbers(group_value(ds, "PlanePositionSequence", "ImagePositionPatient", frame), "ImagePositionPatient", 3)
    return None if value is None else np.array(value, dtype=np.float64)


def _single_step(ds) -> float:
    """The extent of a lone slice along its normal: SpacingBetweenSlices, else SliceThickness, else 1 mm (a stand-in
    for the affine only: :func:`_step_given` says whether the file gives one)."""
    return _step_given(ds) or 1.0


def _step_given(ds) -> float | None:
    """SpacingBetweenSlices, else SliceThickness, when positive; None when the file gives neither."""
    for macro, keyword in (("PixelMeasuresSequence", "SpacingBetweenSlices"),
                           ("PixelMeasuresSequence", "SliceThickness")):
        value = group_value(ds, macro, keyword)
        if value is not None and _number(value, keyword) > 0:
            return _number(value, keyword)
    return None


#: said of a single slice whose file gives no thickness (its affine holds 1 mm, a stand-in)
NO_THICKNESS = ("the slice thickness is not given (no SliceThickness or SpacingBetweenSlices in a single slice): "
                "no lesion volume")


def _thickness_of_one(affine, n_slices: int, ds) -> tuple[bool, tuple[str, ...]]:
    """(thickness_known, warnings) of a volume: a single slice with an affine knows its thickness only when its
    file gives one; a stack knows it from its positions."""
    if affine is None or n_slices > 1 or _step_given(ds) is not None:
        return True, ()
    return False, (NO_THICKNESS,)


def affine_from_geometry(positions: np.ndarray, iop: np.ndarray, spacing: tuple[float, float],
                         single_step: float = 1.0) -> np.ndarray:
    """4x4 RAS affine of the (row, column, slice) array, from slice positions (N, 3) in slice order (LPS, mm)."""
    row_dir, col_dir = iop[:3], iop[3:]  # row_dir: along a row (increasing column); col_dir: increasing row
    normal = np.cross(row_dir, col_dir)
    n = positions.shape[0]
    step = (positions[-1] - positions[0]) / (n - 1) if n > 1 else normal * single_step
    lps = np.eye(4)
    lps[:3, 0] = col_dir * spacing[0]
    lps[:3, 1] = row_dir * spacing[1]
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    return _LPS_TO_RAS @ lps


def slice_geometry(positions: np.ndarray, iop: np.ndarray) -> tuple[tuple[str, ...], tuple[float, ...] | None, bool]:
    """What an evenly spaced affine (:func:`affine_from_geometry`) cannot hold of slice positions (N, 3), in slice
    order: ``(warnings, per-slice thickness in mm or None, whether an affine fits at all)``. The thickness is given
    only for uneven spacing: each slice's extent along the normal, half the gaps to its neighbours (a slice at an
    end: its one gap). No affine fits frames that are not in order along the normal, or that share a position (a
    multi-frame file of several stacks, or stored out of order)."""
    n = positions.shape[0]
    if n < 2:
        return (), None, True
    normal = np.cross(iop[:3], iop[3:])
    normal = normal / np.linalg.norm(normal)
    along = positions @ normal
    steps = np.diff(along)
    if np.any(np.abs(steps) < 1e-3) or (np.any(steps > 0) and np.any(steps < 0)):
        shown = ", ".join(f"{v:.4g}" for v in (along - along[0])[:8]) + (", ..." if n > 8 else "")
        return ((f"the frames are not one stack in order along the slice normal (positions {shown} mm, in stored "
                 "order): no NIfTI geometry and no lesion volume for this file; DICOM SEG / RTSTRUCT outputs keep "
                 "each frame's position"),), None, False
    gaps = np.abs(steps)
    mean = abs(float(along[-1] - along[0])) / (n - 1)
    step = (positions[-1] - positions[0]) / (n - 1)
    offsets = positions - (positions[0] + np.outer(np.arange(n), step))  # from an evenly stepped stack
    warnings = []
    thickness = None
    if float(np.max(np.abs(gaps - mean))) > 0.01 * mean + 1e-3:
        offset = float(np.max(np.abs(offsets @ normal)))
        warnings.append(f"uneven slice spacing ({gaps.min():.4g} to {gaps.max():.4g} mm along the slice normal): a "
                        f"NIfTI of this series (the label map included) spaces its slices evenly at {mean:.4g} mm, "
                        f"so slices lie up to {offset:.3g} mm from their source; DICOM SEG / RTSTRUCT outputs keep "
                        "each slice's position, and the lesion volume uses each slice's own spacing")
        ext = np.empty(n)
        ext[0], ext[-1] = gaps[0], gaps[-1]
        ext[1:-1] = (gaps[:-1] + gaps[1:]) / 2
        thickness = tuple(float(t) for t in ext)
    in_plane = offsets - np.outer(offsets @ normal, normal)
    drift = float(np.max(np.linalg.norm(in_plane, axis=1)))
    if drift > 0.01 * float(np.linalg.norm(step)) + 1e-3:
        warnings.append(f"slices displaced within their plane (up to {drift:.3g} mm from an evenly stepped stack): "
                        "a NIfTI of this series (the label map included) places them up to that far off; DICOM SEG "
                        "/ RTSTRUCT outputs keep each slice's position")
    sideways = float(np.linalg.norm(step - (step @ normal) * normal))
    if sideways > 0.01 * float(np.linalg.norm(step)) + 1e-3:
        angle = float(np.degrees(np.arctan2(sideways, abs(float(step @ normal)))))
        warnings.append(f"sheared slices (each steps {sideways:.3g} mm sideways, {angle:.3g} deg off the slice "
                        "normal, e.g. a gantry tilt): a NIfTI label map holds that only in its sform (its qform is "
                        "left unset); viewers without shear support (ITK-based ones) may refuse or straighten it, "
                        "DICOM SEG / RTSTRUCT outputs keep each slice's position")
    return tuple(warnings), thickness, True


def _frames_value(path: Path, ds, frames: int, read, what: str):
    """The value ``read(ds, frame)`` that every frame of a multi-frame file shares (the functional groups may give
    it per frame: Philips-style enhanced MR stores orientation and pixel spacing per frame). None when a frame has
    none; :class:`InputError` when the frames differ: hemseg reads the file as one volume of parallel frames on one
    pixel grid."""
    values = [read(ds, i) for i in range(frames)]
    if any(v is None for v in values):
        return None
    first = np.asarray(values[0], dtype=np.float64)
    for i, v in enumerate(values[1:], start=2):
        if not np.allclose(np.asarray(v, dtype=np.float64), first, rtol=1e-4, atol=1e-4):
            raise InputError(path, f"the frames differ in {what} (frame 1: {_fmt(values[0])}, frame {i}: "
                                   f"{_fmt(v)}); hemseg reads a multi-frame file as one volume of parallel frames "
                                   "with one pixel spacing")
    return values[0]


def _fmt(value) -> str:
    return "\\".join(f"{float(x):g}" for x in np.ravel(np.asarray(value, dtype=np.float64)))


def _frame_positions(ds, frames: int, iop: np.ndarray) -> np.ndarray | None:
    """Per-frame positions of a multi-frame file (enhanced functional groups, or RT GridFrameOffsetVector)."""
    if "PerFrameFunctionalGroupsSequence" in ds:
        positions = [_position(ds, i) for i in range(frames)]
        if all(p is not None for p in positions):
            return np.stack(positions)
    origin = _position(ds)
    offsets = ds.get("GridFrameOffsetVector")
    if origin is not None and offsets is not None and len(offsets) == frames:
        normal = np.cross(iop[:3], iop[3:])
        offsets = np.array([_number(o, "GridFrameOffsetVector") for o in offsets])
        return origin + np.outer(offsets - offsets[0], normal)
    return None


# ------------------------------------------------------------------------------------------------ single file
def read_dicom_file(path: Path) -> ImageVolume:
    """One DICOM file (single- or multi-frame) as an :class:`ImageVolume` of kind ``'dicom'``."""
    try:
        return _read_dicom_file(path)
    except _BadValue as exc:
        raise InputError(path, f"invalid DICOM header: {exc}") from None


def _read_dicom_file(path: Path) -> ImageVolume:
    ds = _dcmread(path)
    frames = _check_gray_image(path, ds)
    arr = _rescale(ds, _decode(path, ds, frames))
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        arr = _invert_monochrome1(arr)
    if frames > 1:
        spacing = _frames_value(path, ds, frames, _spacing, "pixel spacing")
        iop = _frames_value(path, ds, frames, _orientation, "orientation (ImageOrientationPatient)")
    else:
        spacing, iop = _spacing(ds), _orientation(ds)
    affine, notes, thickness = None, (), None
    if spacing is not None and iop is not None:
        positions = _frame_positions(ds, frames, iop) if frames > 1 else _position(ds)
        if positions is not None:
            positions = np.atleast_2d(positions)
            notes, thickness, fits = slice_geometry(positions, iop)
            affine = affine_from_geometry(positions, iop, spacing, _single_step(ds)) if fits else None
        elif frames > 1:
            log.info("%s: multi-frame DICOM without per-frame positions; no affine (NIfTI label maps unavailable)",
                     path)
    known, thin = _thickness_of_one(affine, frames, ds)
    return ImageVolume(path=path, data=np.ascontiguousarray(arr), kind="dicom", spacing=spacing, slice_axis=2,
                       affine=affine, header=None, sources=(path,), modality=modality(ds),
                       geometry_warnings=(*notes, *thin), slice_thickness_mm=thickness, thickness_known=known)


# ------------------------------------------------------------------------------------------------- series
def dicom_files_in(folder: Path) -> list[Path]:
    """The DICOM files directly in ``folder`` (sorted by name; hidden files and ``DICOMDIR`` skipped)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_dicom_file(p))


def series_of(path: Path) -> tuple[str | None, str] | None:
    """``(non-image kind or None, Series Instance UID)`` of a DICOM file from a few header attributes, or None when
    the file cannot be parsed (the reader will name the reason when it is read)."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True,
                             specific_tags=["SOPClassUID", "Modality", "SeriesInstanceUID"])
        return non_image_kind(ds), str(ds.get("SeriesInstanceUID", "") or "")
    except Exception:  # noqa: BLE001 - pydicom raises many types for damaged files
        return None


def read_dicom_series(folder: Path) -> ImageVolume:
    """A folder holding one DICOM series as an :class:`ImageVolume` of kind ``'dicom-series'``."""
    try:
        return _read_dicom_series(folder)
    except _BadValue as exc:
        raise InputError(folder, f"invalid DICOM header: {exc}") from None


def _check_header_values(path: Path, ds) -> None:
    """Parse the numeric attributes the series reader uses, so a bad value is reported with its file's name."""
    try:
        _spacing(ds), _orientation(ds), _position(ds), _single_step(ds)
        for keyword in ("RescaleSlope", "RescaleIntercept"):
            if ds.get(keyword) not in (None, ""):
                _number(ds.get(keyword), keyword)
        if ds.get("InstanceNumber") not in (None, ""):
            _number(ds.get("InstanceNumber"), "InstanceNumber", int)
    except _BadValue as exc:
        raise InputError(path, f"invalid DICOM header: {exc}") from None


def _read_dicom_series(folder: Path) -> ImageVolume:
    dangling = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_symlink() and not p.exists())
    if dangling:  # a slice whose file is gone: the series was read without it, without a word
        raise InputError(dangling[0], "a symbolic link to nothing in a series folder (a missing slice?); fix or "
                                      "remove it")
    files = dicom_files_in(folder)
    if not files:
        raise InputError(folder, "no DICOM files in this folder (.dcm extension, 'DICM' marker at byte 128, or a bare DICOM data set)")
    _check_no_damaged_slice(folder, files)
    if len(files) == 1:
        vol = read_dicom_file(files[0])
        vol.path, vol.kind = folder, "dicom-series"
        return vol
    slices, others = [], []
    for f in files:
        if f.stat().st_size == 0:
            raise InputError(f, "file is empty (0 bytes)")
        try:
            ds = _dcmread(f)
        except _NotAnImage as exc:  # a bare RT object or report beside the slices: skipped as below
            others.append((f, exc.kind))
            continue
        kind = non_image_kind(ds)
        if kind is not None:  # a SEG, report or RT object stored next to the images (a PACS export): not a slice
            others.append((f, kind))
            continue
        frames = _check_gray_image(f, ds)
        if frames != 1:
            raise InputError(f, f"multi-frame DICOM ({frames} frames) inside a series folder; read the file itself")
        _check_header_values(f, ds)
        slices.append((f, ds))
    slices, copies = _without_copies(folder, slices)
    if len(slices) == 1 and not others:  # the other files were copies of it
        vol = read_dicom_file(slices[0][0])
        vol.path, vol.kind = folder, "dicom-series"
        vol.geometry_warnings = (*copies, *vol.geometry_warnings)
        return vol
    if others:
        names = ", ".join(f"{f.name} ({kind})" for f, kind in others[:3]) + (", ..." if len(others) > 3 else "")
        if not slices:
            raise InputError(folder, f"no DICOM image in this folder, only {len(others)} non-image object(s): {names}")
        warn_once(log, folder, "%s: skipped %d DICOM object(s) that are not images of the series: %s", folder,
                  len(others), names)  # once: evaluation reads a series again for its overlays
        if len(slices) == 1:
            vol = read_dicom_file(slices[0][0])
            vol.path, vol.kind = folder, "dicom-series"
            return vol
    uids = sorted({str(ds.get("SeriesInstanceUID", "")) for _, ds in slices} - {""})
    if len(uids) > 1:
        raise InputError(folder, f"folder holds {len(uids)} DICOM series "
                                 f"({', '.join(printable(u[-12:]) for u in uids[:4])}...); "
                                 "put each series in its own folder (hemseg data sort-dicom does)")
    _check_one_subject(slices)
    sizes = Counter((int(ds.Rows), int(ds.Columns)) for _, ds in slices)
    if len(sizes) > 1:  # the odd slice is named, measured against the size most slices have (not the first file's)
        (rows, cols), n_common = sizes.most_common(1)[0]
        ref = next(f for f, ds in slices if (int(ds.Rows), int(ds.Columns)) == (rows, cols))
        f, ds = next((f, ds) for f, ds in slices if (int(ds.Rows), int(ds.Columns)) != (rows, cols))
        raise InputError(f, f"slice size {ds.Rows} x {ds.Columns} differs from the {rows} x {cols} of {n_common} of "
                            f"the {len(slices)} slices (e.g. {ref.name}) of the same series")
    slices = _sort_slices(folder, slices)
    arrays = [_rescale(ds, _decode(f, ds, 1)) for f, ds in slices]
    arr = np.concatenate([a.astype(_common_dtype(arrays), copy=False) for a in arrays], axis=0)
    photometrics = {str(ds.get("PhotometricInterpretation", "")).strip().upper() for _, ds in slices}
    if photometrics == {"MONOCHROME1"}:
        arr = _invert_monochrome1(arr)
    elif len(photometrics) > 1:
        raise InputError(folder, "series mixes MONOCHROME1 and MONOCHROME2 slices")
    spacing, spacing_notes = _series_spacing(slices)
    affine, notes, thickness = None, (), None
    iop = _orientation(slices[0][1])
    positions = [_position(ds) for _, ds in slices]
    if spacing is not None and iop is not None and all(p is not None for p in positions):
        notes, thickness, fits = slice_geometry(np.stack(positions), iop)
        affine = affine_from_geometry(np.stack(positions), iop, spacing, _single_step(slices[0][1])) if fits else None
    else:
        log.info("%s: series without full geometry (position/orientation/spacing); no affine", folder)
    known, thin = _thickness_of_one(affine, len(slices), slices[0][1])
    return ImageVolume(path=folder, data=np.ascontiguousarray(arr), kind="dicom-series", spacing=spacing,
                       slice_axis=2, affine=affine, header=None, sources=tuple(f for f, _ in slices),
                       modality=modality(slices[0][1]), geometry_warnings=(*copies, *spacing_notes, *notes, *thin),
                       slice_thickness_mm=thickness, thickness_known=known)


def _check_no_damaged_slice(folder: Path, files: list[Path]) -> None:
    """InputError naming a file beside the series' DICOM ``files`` that looks like a slice but cannot be one: empty,
    unreadable, or binary without a DICOM header and without another format's extension (a transfer cut short, a
    file left unreadable). Such a file was passed over as "not DICOM" and the series segmented without that slice,
    exit 0 (a QA finding of stop 56). Files named as other formats (``notes.txt``, ``thumb.png``) and extensionless
    text files are not slices: left alone."""
    dicom = set(files)
    hidden = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") and p.is_file() and is_dicom_file(p):
            hidden.append(p)
        if p.name.startswith(".") or p in dicom or p.name.upper() == "DICOMDIR" or not p.is_file():
            continue
        why = damaged_slice_reason(p)
        if why is not None:
            raise InputError(p, f"{why}, beside the {len(files)} DICOM file(s) of this series folder: a slice cut "
                                "short or damaged? restore or remove it")
    if hidden:  # not read, by design (a copy tool's leftovers), but not without a word (QA, stop 56)
        warn_once(log, folder, "%s: %d hidden DICOM file(s) not read as slices of the series (e.g. %s); rename "
                  "them to include them", folder, len(hidden), hidden[0].name)


def damaged_slice_reason(p: Path) -> str | None:
    """Why the regular file ``p``, found not to be DICOM, may be a damaged DICOM file (empty, unreadable, binary
    without a DICOM header), or None: files named as another format (an extension: ``.txt``, ``.png``; names like
    ``1.2.840.1`` or ``IM.ima`` count as bare) and text files are no DICOM files. Used by the series reader (an
    error) and hemseg data sort-dicom (a skipped file said)."""
    from hemseg.runtime.io.sniff import describe_content, format_from_name

    if format_from_name(p) is not None or (p.suffix and p.suffix.lower() not in (".ima", ".dcm")
                                           and not p.suffix[1:].isdigit()):
        return None
    try:
        head = read_head(p, 512)
    except (OSError, InputError) as exc:
        return f"cannot be read ({getattr(exc, 'strerror', None) or exc})"
    if not head:
        return "file is empty (0 bytes)"
    if _looks_like_text(head):
        return None
    return f"not a DICOM file ({describe_content(head)}; no 'DICM' marker at byte 128)"


def _looks_like_text(head: bytes) -> bool:
    """Whether the first bytes of a file are text: UTF-8 (a README in German was taken for a damaged slice; QA,
    stop 56; a character cut at the end of ``head`` allowed), UTF-16 with its byte-order mark (Notepad's), or an
    8-bit code page (Latin-1, Windows-1252: no NUL byte and nine in ten bytes printable ASCII). DICOM data sets hold
    NUL bytes in their tags; random binary is about a third printable."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True
    if b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start >= len(head) - 3:  # a character cut by the end of head
            text = head[:exc.start].decode("utf-8")
        else:
            return sum(32 <= b < 127 or b in (9, 10, 12, 13) for b in head) >= 0.9 * len(head)
    return all(c.isprintable() or c in "\t\r\n\f" for c in text)


#: what every slice of one series must share: a series mixing them is slices of two patients, studies, spaces or
#: modalities (a CT file under an MR series' UID: Modality is a series attribute), which one mask (and a DICOM SEG /
#: RTSTRUCT naming the first slice's patient) must not join
SUBJECT_KEYS = (("PatientID", "patient"), ("StudyInstanceUID", "study"), ("FrameOfReferenceUID", "frame of reference"),
                ("Modality", "modality"))
SUBJECT_PLURALS = {"study": "studies", "frame of reference": "frames of reference", "modality": "modalities"}


def _check_one_subject(slices: list) -> None:
    """InputError naming the slice whose patient, study, frame of reference or modality differs from the one most slices
    have (values missing from a slice are not compared: anonymizers and old scanners leave some out)."""
    for keyword, what in SUBJECT_KEYS:
        of = {f: str(ds.get(keyword, "") or "").strip() for f, ds in slices}
        values = Counter(v for v in of.values() if v)
        if len(values) > 1:
            (common, n_common), (second, n_second) = values.most_common(2)
            if n_common == n_second:  # no majority: neither side is the odd one out
                a = next(f for f, v in of.items() if v == common)
                b = next(f for f, v in of.items() if v == second)
                raise InputError(a, f"{keyword} {printable(common)} here and {printable(second)} in {b.name}: the "
                                    f"slices of this series disagree on their {what}, and slices of two "
                                    f"{SUBJECT_PLURALS.get(what, what + 's')} "
                                    "are not one volume; fix the headers or split the series")
            ref = next(f for f, v in of.items() if v == common)
            f = next(f for f, v in of.items() if v not in ("", common))
            raise InputError(f, f"{keyword} {printable(of[f])} differs from the {printable(common)} of "
                                f"{n_common} of the {len(slices)} slices (e.g. {ref.name}) of this series: slices of "
                                f"another {what} are not one volume; remove the slice or fix its header")


def _common_dtype(arrays: list[np.ndarray]) -> np.dtype:
    """A type that holds every slice's values: slices of one series may be stored in different pixel types (8 and
    16 bits, signed and unsigned after an edit or a PACS migration); the first slice's type wrapped the others'
    values. Float32 when any slice is float (rescaled) or no integer type holds them all."""
    dtype = np.result_type(*arrays)
    return np.dtype(np.float32) if dtype.kind == "f" else dtype


#: how far two slices' PixelSpacing may differ (relative) and still be one pixel grid (decimal strings are rounded)
SPACING_TOLERANCE = 1e-3
#: how far two slices' ImageOrientationPatient values may differ (absolute) and still be one plane
ORIENTATION_TOLERANCE = 1e-3


def _series_spacing(slices: list) -> tuple[tuple[float, float] | None, tuple[str, ...]]:
    """The series' PixelSpacing (its first slice's) and a warning when only some slices give one (the pixel size
    is then unknown: None); InputError naming the slice whose spacing differs beyond rounding: the series is read
    as one grid (its area and volume, a SEG's and a NIfTI's geometry all take one spacing), so slices of another
    pixel size are not one volume."""
    spacings = [(f, _spacing(ds)) for f, ds in slices]
    given = [(f, s) for f, s in spacings if s is not None]
    if not given:
        return None, ()
    ref_file, ref = given[0]
    for f, other in given[1:]:  # compared among the slices that give one (the first slice may not)
        if not np.allclose(other, ref, rtol=SPACING_TOLERANCE, atol=0):
            raise InputError(f, f"pixel spacing (PixelSpacing) {_fmt(other)} differs from the {_fmt(ref)} of "
                                f"{ref_file.name}; the series is not one volume")
    if len(given) < len(spacings):  # whichever slice lacks it: the series' pixel size is not known for all
        missing = next(f for f, s in spacings if s is None)
        return None, (f"{len(spacings) - len(given)} of {len(spacings)} slices lack PixelSpacing (e.g. "
                      f"{missing.name}): the series' pixel size is treated as unknown",)
    return ref, ()


def _without_copies(folder: Path, slices: list) -> tuple[list, tuple[str, ...]]:
    """``slices`` without second copies of one instance (a file whose data set equals an earlier one's: the same SOP
    Instance UID, position, header and pixels; a CD copied twice, a browser's 'IM1 (1).dcm'), which were refused as
    two slices at one position ('several echoes?'), and what to say of them (skipped, as hemseg data sort-dicom skips
    them). Two files of one UID and position whose content differs (another patient name, other pixels, another
    series) are refused naming what differs: which one is the instance cannot be told."""
    kept: dict[str, tuple] = {}
    out, copies = [], []
    for f, ds in slices:
        uid = str(ds.get("SOPInstanceUID", "") or "").strip()
        first = kept.get(uid) if uid else None
        if first is not None and not _same_place(_position(ds), _position(first[1])):
            first = None  # one UID at two positions (a series made from one template): slices, as before
        if first is None:
            if uid:
                kept[uid] = (f, ds)
            out.append((f, ds))
            continue
        if ds != first[1]:
            differ = [e.keyword or str(e.tag) for e in ds if e.tag not in first[1] or first[1][e.tag] != e]
            differ += [e.keyword or str(e.tag) for e in first[1] if e.tag not in ds]
            differ = [k for k in differ if k != "DataSetTrailingPadding"]  # padding, no content
            if not differ:
                copies.append((f, first[0]))
                continue
            syntaxes = [_syntax_name(x) for x in (ds, first[1])]
            if differ == ["PixelData"] and syntaxes[0] != syntaxes[1]:
                # one instance in two transfer syntaxes (a PACS's re-encoded copy): its pixels decide
                if np.array_equal(_decode(f, ds, 1), _decode(first[0], first[1], 1)):
                    copies.append((f, first[0]))
                    continue
                raise InputError(f, f"has the SOP Instance UID and position of {first[0].name} but other pixels, "
                                    f"in another transfer syntax ({syntaxes[0]}; that file's: {syntaxes[1]}): two "
                                    "files claim one instance; remove the wrong one")
            what = "pixel data" if differ[0] == "PixelData" else differ[0]
            raise InputError(f, f"has the SOP Instance UID and position of {first[0].name} but other content "
                                f"({what}): two files claim one instance; remove the wrong one")
        copies.append((f, first[0]))
    if not copies:
        return out, ()
    f, of = copies[0]
    return out, (f"{len(copies)} file(s) skipped as copies of another file here (e.g. {f.name}, a copy of {of.name}: "
                 "the same SOP Instance UID, header and pixels, in the same or another transfer syntax)",)


def _syntax_name(ds) -> str:
    """The name of the transfer syntax a data set was read in ('?' when none is stated)."""
    from pydicom.uid import UID

    ts = _transfer_syntax(ds)
    return UID(str(ts)).name if ts else "?"


def _same_place(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and bool(np.allclose(a, b, atol=1e-4)))


def _sort_slices(folder: Path, slices: list) -> list:
    positions = [_position(ds) for _, ds in slices]
    orientations = [_orientation(ds) for _, ds in slices]
    if all(p is not None for p in positions) and all(o is not None for o in orientations):
        for (f, _), o in zip(slices, orientations):
            if np.max(np.abs(o - orientations[0])) > ORIENTATION_TOLERANCE:
                raise InputError(f, f"slice orientation (ImageOrientationPatient) differs from {slices[0][0].name}; "
                                    "the series is not one volume")
        normal = np.cross(orientations[0][:3], orientations[0][3:])
        keys = np.array([float(np.dot(p, normal)) for p in positions])
        order = np.argsort(keys, kind="stable")
        gaps = np.diff(keys[order])
        if np.any(gaps < 1e-4):
            dup = int(np.argmin(gaps))
            a, b = slices[order[dup]][0].name, slices[order[dup + 1]][0].name
            raise InputError(folder, f"{a} and {b} lie at the same slice position (several echoes, phases or series "
                                     "in one folder, or one slice sent twice under two instance UIDs?); keep one "
                                     "image per position")
        return [slices[i] for i in order]
    numbers = [ds.get("InstanceNumber") for _, ds in slices]
    if any(n is None or n == "" for n in numbers):
        raise InputError(folder, "cannot order the slices: neither ImagePositionPatient/ImageOrientationPatient nor "
                                 "InstanceNumber is present in every file")
    numbers = [_number(n, "InstanceNumber", int) for n in numbers]
    if len(set(numbers)) != len(numbers):
        raise InputError(folder, "cannot order the slices: repeated InstanceNumber and no slice positions")
    log.info("%s: no slice positions; slices ordered by InstanceNumber", folder)
    return [s for _, s in sorted(zip(numbers, slices), key=lambda t: t[0])]
