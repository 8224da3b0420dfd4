"""The in-memory image type every reader returns: :class:`ImageVolume`, always a stack of 2D slices (N, H, W)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hemseg.runtime.io.display import InPlane

#: how an input held in memory (no file) is named in errors
IN_MEMORY = "<array>"

#: Every ``ImageVolume.kind``.
KINDS = ("png", "jpeg", "tiff", "npy", "nifti", "dicom", "dicom-series")


@dataclass
class ImageVolume:
    """A 2D image or a volume, as N slices of H x W.

    ``data`` holds the raw values (the file's dtype, or float32 where a rescale made them fractional) with shape
    (N, H, W); N = 1 for 2D files. Use :func:`hemseg.runtime.io.to_uint8` to get the 8-bit model input.

    ``spacing`` is the in-plane pixel size ``(row_mm, col_mm)`` when the file says it (NIfTI, DICOM), else None.

    ``slice_axis``, ``affine``, ``header`` and ``inplane`` describe how the slices map back to a 3D array on disk, so
    that a label map can be written with :func:`hemseg.runtime.io.writers.write_nifti_labels`: slice ``k`` is
    ``inplane.apply`` of ``np.take(volume, k, axis=slice_axis)`` of a 3D array whose voxel-to-world (RAS, mm) matrix
    is ``affine``.
    For NIfTI that array is the file's own; for DICOM it is the (rows, columns, slices) array. ``header`` is the
    NIfTI header (None for DICOM: a fresh header is made on writing). All three are None for PNG/JPEG/TIFF/NPY.

    ``sources`` (DICOM only, else None) names the files the slices came from, so that a DICOM Segmentation can
    reference them (:mod:`hemseg.runtime.io.dicom_seg`): one file per slice, in slice order, for a series folder;
    the single file for a single- or multi-frame DICOM file (its frames are the slices, in stored order).

    ``modality`` (DICOM only, else None) is the file's ``Modality`` attribute, upper case (``"MR"``, ``"CT"``, ...;
    None when the file has none).

    ``geometry_warnings`` (DICOM; for NIfTI a slice thickness it does not give) say what ``affine`` cannot hold of the slices' real positions: uneven slice
    spacing (the affine spaces slices evenly at the mean step), slices sheared against their normal (a gantry tilt:
    an sform can hold it, a qform cannot), a series whose pixel size is unknown because only some slices give one.
    ``slice_thickness_mm`` is set only for uneven spacing: each slice's own
    extent along the normal (half the gaps to its neighbours), for volume estimates the affine would get wrong.
    """

    path: Path
    data: np.ndarray
    kind: str
    spacing: tuple[float, float] | None
    slice_axis: int | None = None
    affine: np.ndarray | None = None
    header: object | None = None
    sources: tuple[Path, ...] | None = None
    modality: str | None = None
    geometry_warnings: tuple[str, ...] = ()
    slice_thickness_mm: tuple[float, ...] | None = None
    #: False when the input gives its slices no thickness (a NIfTI single slice with a size of 0 along its one-voxel
    #: axis): areas are known, a volume is not
    thickness_known: bool = True
    #: how the stored slices were turned into ``data`` (a NIfTI with geometry: the display orientation,
    #: :mod:`hemseg.runtime.io.display`; else as stored): writers undo it
    inplane: InPlane = InPlane()
    #: NIfTI: millimetres per length unit of the file (``header``'s unit; ``affine`` is in mm already): 0.001 for a
    #: file in microns, 1000 in metres, else 1
    mm_per_unit: float = 1.0

    @property
    def n_slices(self) -> int:
        return int(self.data.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        n, h, w = self.data.shape
        return int(n), int(h), int(w)
