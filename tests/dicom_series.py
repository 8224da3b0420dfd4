"""Helpers for the DICOM SEG and DICOM node tests: small MR series built from pydicom's MR_small.dcm (64 x 64)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

MR_SMALL = Path(get_testdata_file("MR_small.dcm"))
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # rows along +y (posterior), columns along -z (foot)


def mr_series(n: int = 4, iop=SAGITTAL, step: float = 3.0, dark: tuple[int, ...] = (),
              origin=(-20.0, -91.2, 40.0), series_uid: str | None = None) -> list[pydicom.Dataset]:
    """``n`` slices in slice order along the normal of ``iop`` (``step`` mm apart); slices in ``dark`` are black
    (the tiny test model then finds no lesion there). Each slice's pixels are offset by its index."""
    base = pydicom.dcmread(MR_SMALL)
    row, col = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row, col)
    uid = series_uid or generate_uid()
    out = []
    for k in range(n):
        ds = copy.deepcopy(base)
        arr = base.pixel_array.astype(np.int32) // 2 + 40 * k
        if k in dark:
            arr = np.zeros_like(arr)
        ds.PixelData = arr.astype(base.pixel_array.dtype).tobytes()
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [round(float(v), 4) for v in np.array(origin) + k * step * normal]
        ds.SliceThickness = step
        ds.InstanceNumber = k + 1
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out.append(ds)
    return out


def save_series(datasets, folder: Path, order=None) -> Path:
    """Write the slices as IM<i>.dcm, in ``order`` (file names unrelated to the slice order)."""
    folder.mkdir(parents=True, exist_ok=True)
    order = list(order) if order is not None else list(range(len(datasets)))[::-1]
    for i, k in enumerate(order):
        datasets[k].save_as(folder / f"IM{i:04d}.dcm", enforce_file_format=True)
    return folder
