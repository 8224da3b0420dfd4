"""DICOM RT Structure Sets (RTSTRUCT) as masks of training and evaluation data (pydicom, numpy and OpenCV only).

Radiotherapy planning systems and many contouring tools export annotations as an RT Structure Set: per ROI, planar
polygons in patient coordinates (mm), not pixels. A dataset may pair ``images/<stem>/`` (a series folder) or
``images/<stem>.dcm`` (one single- or multi-frame file) with ``masks/<stem>.dcm``, an RTSTRUCT of it.

Conventions:

- Geometry of slice ``k`` (:attr:`ImageVolume.sources` in the reader's slice order): its Image Position (Patient)
  ``P_k`` (per frame of a multi-frame file), Image Orientation (Patient) ``row_dir`` (increasing column) and
  ``col_dir`` (increasing row), Pixel Spacing ``(row_mm, col_mm)``. A point ``X`` (LPS mm) lies at column
  ``(X - P_k)·row_dir / col_mm`` and row ``(X - P_k)·col_dir / row_mm`` (PS3.3 C.7.6.2.1.1: pixel centres at integer
  indices).
- A contour's slice: the image its Contour Image Sequence names (SOP Instance, and frame number for a multi-frame
  image), else the slice nearest to it along the normal ``row_dir x col_dir``. Tolerance: half the smallest
  distance between adjacent slices (one slice: half its Spacing Between Slices / Slice Thickness, else 0.5 mm). A
  contour farther than that from its slice, or whose points spread along the normal by more than that (not in one
  plane parallel to the slices), is refused.
- Areas: only ``CLOSED_PLANAR`` and ``CLOSEDPLANAR_XOR`` contours (POINT and open contours are skipped with a
  warning; a contour of fewer than 3 points is skipped). A pixel is inside a contour when its centre is inside or
  on the polygon (to within 1/256 px; :func:`fill_polygon`), so a contour along a region's pixel edges (as planning
  systems draw and hemseg writes) and one through the centres of its boundary pixels (``cv2.findContours``) both
  give the region back.
  Within one ROI the contours of a slice combine by XOR (even-odd: a contour inside another is a hole), and a
  pixel whose centre a contour passes through is the ROI's, hole contours included: a contour through pixel
  centres is the outline of the region through its own boundary pixels, outer and inner alike, as
  ``cv2.findContours`` draws it (a hole's outline through the pixels around it). ROIs combine by OR.
- Labels are ROI numbers (``--label`` selects ROIs like SEG segment numbers); the ROI numbers of a file are those
  with at least one closed contour. Labels that select no ROI give an empty mask.
- The RTSTRUCT must belong to the image: every SOP Instance its contours reference must be one of the image's, its
  ROIs' Frame of Reference must be the image's, and when it lists referenced series the image's must be one of
  them; else it is refused (a structure set of another series would otherwise be drawn onto this one).
- Errors are :class:`~hemseg.errors.InputError` naming the RTSTRUCT file (one line).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from hemseg.errors import InputError
from hemseg.runtime.io import dicom
from hemseg.runtime.io.dicom_mask import foreign_references_error, read_mask_dataset, require_dicom_image
from hemseg.runtime.io.dicom_seg import _one_line, read_headers
from hemseg.runtime.io.volume import ImageVolume

log = logging.getLogger(__name__)

CLOSED_TYPES = ("CLOSED_PLANAR", "CLOSEDPLANAR_XOR")
#: how near (px) a pixel centre may be to a contour and still count as on it (decimal strings in mm are rounded)
ON_CONTOUR_PX = 1.0 / 256


@dataclass
class SliceGeometry:
    """Where each slice of a DICOM image lies (what contours in patient mm are drawn and read with)."""

    positions: np.ndarray  # (N, 3) LPS mm, slice order
    row_dir: np.ndarray
    col_dir: np.ndarray
    normal: np.ndarray
    spacing: tuple[float, float]  # (row_mm, col_mm)
    tolerance: float  # mm along the normal
    slice_of: dict  # (SOP Instance UID, frame number or None) -> slice index


def read_rtstruct(path: str | Path):
    """The pydicom data set of the RT Structure Set in ``path``; InputError when it is not one."""
    path = Path(path)
    ds = read_mask_dataset(path, "rtstruct", "RT Structure Set masks need pydicom; pip install pydicom")
    try:
        ds.walk(lambda dataset, element: None)  # parse every element now (pydicom defers it): fail here, not later
    except Exception as exc:
        raise InputError(path, f"not a readable DICOM file: {_one_line(exc)}") from None
    missing = [k for k in ("StructureSetROISequence", "ROIContourSequence") if k not in ds]
    if missing:  # Type 1 in the Structure Set and ROI Contour modules: a file without them is cut short or broken
        raise InputError(path, f"an RT Structure Set without its {' and '.join(missing)} (required): the file is "
                               "truncated or incomplete")
    return ds


def _closed_roi_numbers(path: Path, ds) -> list[int]:
    numbers = []
    for roi in ds.get("ROIContourSequence", []):
        if any(str(c.get("ContourGeometricType", "")).strip().upper() in CLOSED_TYPES
               for c in roi.get("ContourSequence", [])):
            numbers.append(_roi_number(path, roi.get("ReferencedROINumber")))
    return sorted(set(numbers))


def _roi_number(path: Path, value) -> int:
    if value is None or value == "":
        raise InputError(path, "an ROI number (Referenced ROI Number / ROI Number, required) is missing: the file is "
                               "truncated or incomplete")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputError(path, f"ROI number {dicom.printable(value)!r} is not an integer") from None


def rtstruct_roi_numbers(path: str | Path) -> list[int]:
    """The numbers of the ROIs of the RTSTRUCT in ``path`` that have at least one closed contour."""
    path = Path(path)
    return _closed_roi_numbers(path, read_rtstruct(path))


def slice_geometry(vol: ImageVolume, headers: list) -> SliceGeometry:
    n = vol.n_slices
    h0 = headers[0]
    try:
        iop = dicom._orientation(h0, 0)
        spacing = dicom._numbers(dicom.group_value(h0, "PixelMeasuresSequence", "PixelSpacing", 0), "PixelSpacing", 2,
                                 positive=True)
        if iop is None or spacing is None:
            positions = None
        elif len(headers) == n:
            found = [dicom._position(h, 0) for h in headers]
            positions = np.stack(found) if all(p is not None for p in found) else None
        elif len(headers) == 1:
            positions = dicom._frame_positions(h0, n, iop)
        else:
            positions = None
        step = dicom._single_step(h0)
    except dicom._BadValue as exc:
        raise InputError(vol.path, f"invalid DICOM header: {exc}") from None
    if positions is None:
        raise InputError(vol.path, "an RT Structure Set mask needs the image's geometry (Image Position and "
                                   "Orientation (Patient), Pixel Spacing), which it lacks")
    normal = np.cross(iop[:3], iop[3:])
    gaps = np.diff(np.sort(positions @ normal))
    gaps = gaps[gaps > 1e-4]  # frames at one position (several echoes or phases) do not narrow the tolerance
    tolerance = 0.5 * (float(gaps.min()) if gaps.size else step)
    uids = [str(h.get("SOPInstanceUID", "")).strip() for h in headers]
    if len(headers) == n:
        slice_of = {(uid, None): k for k, uid in enumerate(uids)}
        slice_of.update({(uid, 1): k for k, uid in enumerate(uids)})  # a single-frame image's frame 1
    else:
        slice_of = {(uids[0], f): f - 1 for f in range(1, n + 1)}
    return SliceGeometry(positions, iop[:3], iop[3:], normal, (spacing[0], spacing[1]), max(tolerance, 1e-3), slice_of)


def _references(ds) -> list[tuple[str, int | None]]:
    refs = []
    for roi in ds.get("ROIContourSequence", []):
        for contour in roi.get("ContourSequence", []):
            refs += _contour_refs(contour)
    return refs


def _contour_refs(contour) -> list[tuple[str, int | None]]:
    """The (SOP Instance UID, frame number or None) pairs a contour's Contour Image Sequence names."""
    refs: list[tuple[str, int | None]] = []
    for item in contour.get("ContourImageSequence", []):
        uid = str(item.get("ReferencedSOPInstanceUID", "") or "").strip()
        frames = item.get("ReferencedFrameNumber")
        if not uid:
            continue
        if frames is None or frames == "":
            refs.append((uid, None))
            continue
        for f in frames if hasattr(frames, "__iter__") and not isinstance(frames, str) else [frames]:
            try:
                refs.append((uid, int(f)))
            except (TypeError, ValueError):
                refs.append((uid, None))
    return refs


def _check_belongs(path: Path, ds, vol: ImageVolume, headers: list) -> None:
    uids = {str(h.get("SOPInstanceUID", "")).strip() for h in headers}
    foreign = {uid for uid, _ in _references(ds)} - uids
    if foreign:
        raise foreign_references_error(path, "RTSTRUCT", ds, foreign, vol, headers)
    frame_of_ref = str(headers[0].get("FrameOfReferenceUID", "") or "").strip()
    frames = {str(r.get("ReferencedFrameOfReferenceUID", "") or "").strip()
              for r in ds.get("StructureSetROISequence", [])}
    if frame_of_ref and frames - {"", frame_of_ref}:
        raise InputError(path, f"the RTSTRUCT's ROIs lie in another Frame of Reference than {vol.path}: it belongs "
                               "to another series")
    series = {str(s.get("SeriesInstanceUID", "") or "").strip()
              for ref in ds.get("ReferencedFrameOfReferenceSequence", [])
              for study in ref.get("RTReferencedStudySequence", [])
              for s in study.get("RTReferencedSeriesSequence", [])} - {""}
    own = str(headers[0].get("SeriesInstanceUID", "") or "").strip()
    if series and own and own not in series:
        raise InputError(path, f"the RTSTRUCT references series other than that of {vol.path}: it belongs to "
                               "another series")


def _points(path: Path, contour, where: str) -> np.ndarray:
    data = contour.get("ContourData")
    try:
        values = np.array([float(v) for v in (data if data is not None else [])], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(path, f"{where}: Contour Data holds a value that is not a number") from None
    if values.size % 3 or not np.all(np.isfinite(values)):
        raise InputError(path, f"{where}: Contour Data of {values.size} values is not finite (x, y, z) triplets")
    return values.reshape(-1, 3)


def _slice_of(path: Path, contour, points: np.ndarray, geo: SliceGeometry, vol: ImageVolume, where: str) -> int:
    heights = points @ geo.normal
    mid = points.mean(axis=0)
    at = f"at LPS ({mid[0]:.6g}, {mid[1]:.6g}, {mid[2]:.6g}) mm"
    if float(heights.max() - heights.min()) > geo.tolerance:
        raise InputError(path, f"{where} {at} is not in a plane parallel to the slices of {vol.path} (its points "
                               f"spread {heights.max() - heights.min():.2f} mm along the slice normal)")
    height = float(heights.mean())
    slice_heights = geo.positions @ geo.normal
    refs = _contour_refs(contour)
    named = {geo.slice_of[ref] for ref in refs if ref in geo.slice_of}
    bad = [f for _, f in refs if f is not None and not 1 <= f <= len(slice_heights)]
    if bad:
        raise InputError(path, f"{where} references frame {bad[0]} of an image of {len(slice_heights)} frame(s) "
                               f"({vol.path})")
    if len(named) == 1:
        k = named.pop()
        if abs(slice_heights[k] - height) > geo.tolerance:
            raise InputError(path, f"{where} {at} lies {abs(slice_heights[k] - height):.4g} mm from slice {k} of "
                                   f"{vol.path}, the image it references")
        return k
    k = int(np.argmin(np.abs(slice_heights - height)))
    if abs(slice_heights[k] - height) > geo.tolerance:
        raise InputError(path, f"{where} {at} lies on no slice of {vol.path} (nearest: slice {k}, "
                               f"{abs(slice_heights[k] - height):.4g} mm away; tolerance {geo.tolerance:.2f} mm)")
    return k


def fill_polygon(xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The fill rule of this module for one contour (and of :mod:`hemseg.runtime.io.rtstruct_writer`, which relies
    on it): uint8 {0, 1} of ``shape`` with 1 where a pixel's centre is inside the polygon ``xy`` ((K, 2) float
    (column, row) pixel coordinates, centres at integers; even-odd for a polygon that crosses itself) or on it, to
    within :data:`ON_CONTOUR_PX` (:func:`polygon_pixels`). A contour along pixel edges, as planning systems draw, and
    one through the centres of the boundary pixels (``cv2.findContours``) both give their region back; a contour at
    other sub-pixel places gives the pixels whose centres it encloses (``cv2.fillPoly`` takes every pixel the
    polygon touches: up to a pixel more all round)."""
    inside, on = polygon_pixels(xy, shape)
    return inside | on


def polygon_pixels(xy: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(inside, on)``, uint8 {0, 1} of ``shape``: the pixels whose centres lie strictly inside ``xy`` (even-odd)
    and those within :data:`ON_CONTOUR_PX` of one of its edges (perpendicular distance), kept apart so that the
    contours of a slice can combine by XOR inside and OR on them (:func:`read_rtstruct_mask_and_rois`)."""
    h, w = shape
    inside = np.zeros((h, w), np.uint8)
    on = np.zeros((h, w), np.uint8)
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0 or h == 0 or w == 0:
        return inside, on
    eps = ON_CONTOUR_PX
    x0, y0 = pts[:, 0], pts[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    lo = max(0, int(np.ceil(pts[:, 1].min())))
    hi = min(h - 1, int(np.floor(pts[:, 1].max())))
    if lo <= hi:
        rows = np.arange(lo, hi + 1, dtype=np.float64)[:, None]
        slanted = y1 != y0
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (rows - y0) / np.where(slanted, y1 - y0, 1.0) * (x1 - x0)
        crosses = ((y0 <= rows) & (rows < y1)) | ((y1 <= rows) & (rows < y0))  # half-open: a vertex counts once
        for i in range(len(rows)):
            xs = np.sort(x_at[i, crosses[i]])
            for left, right in zip(xs[0::2], xs[1::2]):
                a, b = max(0, int(np.floor(left)) + 1), min(w - 1, int(np.ceil(right)) - 1)
                if a <= b:
                    inside[lo + i, a:b + 1] = 1
    for xa, ya, xb, yb in zip(x0, y0, x1, y1):  # centres within eps of an edge, along all of it
        c0, c1 = max(0, int(np.ceil(min(xa, xb) - eps))), min(w - 1, int(np.floor(max(xa, xb) + eps)))
        r0, r1 = max(0, int(np.ceil(min(ya, yb) - eps))), min(h - 1, int(np.floor(max(ya, yb) + eps)))
        if c0 > c1 or r0 > r1:
            continue
        gy, gx = np.mgrid[r0:r1 + 1, c0:c1 + 1].astype(np.float64)
        dx, dy = xb - xa, yb - ya
        t = np.clip(((gx - xa) * dx + (gy - ya) * dy) / max(dx * dx + dy * dy, 1e-300), 0.0, 1.0)
        near = np.hypot(gx - xa - t * dx, gy - ya - t * dy) <= eps
        on[r0:r1 + 1, c0:c1 + 1] |= near.astype(np.uint8)
    return inside, on


def _fill(points: np.ndarray, pos: np.ndarray, geo: SliceGeometry,
          shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    rel = points - pos
    return polygon_pixels(np.stack([rel @ geo.row_dir / geo.spacing[1], rel @ geo.col_dir / geo.spacing[0]], axis=1),
                          shape)


def read_rtstruct_mask_and_rois(path: str | Path, vol: ImageVolume, labels: Sequence[int] | None = None
                                ) -> tuple[np.ndarray, np.ndarray]:
    """The RTSTRUCT in ``path`` as the mask of ``vol`` (a DICOM file or series folder): uint8 {0, 1}, (N, H, W) in
    ``vol``'s slice order; and the numbers of its ROIs that have a closed contour."""
    path = Path(path)
    require_dicom_image(path, vol, "an RT Structure Set mask")
    ds = read_rtstruct(path)
    headers = read_headers(vol)
    # a file cut short first: its last, cut reference is no reason to look for missing slices
    numbers = _closed_roi_numbers(path, ds)
    _check_belongs(path, ds, vol, headers)
    rois = [r for r in ds.get("ROIContourSequence", [])
            if not labels or _roi_number(path, r.get("ReferencedROINumber")) in {int(v) for v in labels}]
    n, h, w = vol.shape
    mask = np.zeros((n, h, w), np.uint8)
    if not rois:  # the labels select no ROI of this file: nothing of it is lesion
        return mask, np.array(numbers)
    geo = slice_geometry(vol, headers)
    names = {_roi_number(path, r.get("ROINumber")): dicom.printable(r.get("ROIName", "") or "")
             for r in ds.get("StructureSetROISequence", [])}
    skipped = 0
    for roi in rois:
        number = _roi_number(path, roi.get("ReferencedROINumber"))
        area = np.zeros((n, h, w), np.uint8)  # XOR of the contours' insides (an inner contour is a hole)
        outline = np.zeros((n, h, w), np.uint8)  # the pixels a contour passes through: the region's own
        for i, contour in enumerate(roi.get("ContourSequence", [])):
            if str(contour.get("ContourGeometricType", "")).strip().upper() not in CLOSED_TYPES:
                skipped += 1
                continue
            where = f"ROI {number} ({names.get(number, '?')!r}) contour {i + 1}"
            points = _points(path, contour, where)
            if len(points) < 3:
                log.debug("%s: %s has %d point(s): skipped", path, where, len(points))
                continue
            k = _slice_of(path, contour, points, geo, vol, where)
            inside, on = _fill(points, geo.positions[k], geo, (h, w))
            area[k] ^= inside
            outline[k] |= on
        mask |= area | outline
    if skipped:
        log.warning("%s: skipped %d contour(s) that are not closed (POINT, OPEN_PLANAR, OPEN_NONPLANAR): only "
                    "closed contours are areas", path, skipped)
    return mask, np.array(numbers)
