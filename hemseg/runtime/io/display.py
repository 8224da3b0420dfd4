"""The in-plane orientation a slice of a NIfTI volume is shown to the model in: the one a viewer displays it in.

A NIfTI file stores its voxels in whatever order the converter chose: ``dcm2niix`` puts the DICOM columns first and
flips the rows, a pipeline that reorients to RAS stores an axial slice with rows running to the patient's right.
Taken in that array order, the same slice reaches the model transposed or mirrored against the DICOM series it was
converted from (or the PNG export of it), and a 2D network trained on one sees a rotated image in the other: the
same scan gave another mask as NIfTI than as DICOM. So a NIfTI slice is turned (a transpose and flips only: no
resampling) into the radiological display convention of DICOM's standard planes, decided by its affine:

- axial (slice normal mostly along the patient's z): columns run to the patient's left (+x in DICOM's LPS), rows
  to posterior (+y): ImageOrientationPatient 1\\0\\0\\0\\1\\0;
- sagittal (normal mostly along x): columns to posterior (+y), rows to inferior (-z): 0\\1\\0\\0\\0\\-1;
- coronal (normal mostly along y): columns to the left (+x), rows to inferior (-z): 1\\0\\0\\0\\0\\-1.

A DICOM series is read in its own row and column order, which for these planes is this one; PNG, TIFF and NPY have
no geometry and are taken as stored. A NIfTI that records no geometry (qform and sform codes 0) is taken as
stored too. Writers undo the turn (:meth:`InPlane.undo`), so a label map lies on its input's voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: dominant LPS axis of the slice normal -> ((column axis, sign), (row axis, sign)) of the display, in LPS
DISPLAY = {2: ((0, 1.0), (1, 1.0)), 0: ((1, 1.0), (2, -1.0)), 1: ((0, 1.0), (2, -1.0))}
_RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class InPlane:
    """How stored (N, H, W) slices become display slices: transposed first (H and W swapped), then the rows and/or
    the columns reversed. The identity for inputs taken as stored."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    @property
    def identity(self) -> bool:
        return not (self.transpose or self.flip_rows or self.flip_cols)

    def apply(self, slices: np.ndarray) -> np.ndarray:
        """Stored (N, H, W) -> display (N, H', W')."""
        if self.identity:
            return slices
        out = np.swapaxes(slices, 1, 2) if self.transpose else slices
        out = out[:, ::-1] if self.flip_rows else out
        out = out[:, :, ::-1] if self.flip_cols else out
        return np.ascontiguousarray(out)

    def undo(self, slices: np.ndarray) -> np.ndarray:
        """Display (N, H', W') -> stored (N, H, W): the inverse of :meth:`apply`."""
        if self.identity:
            return slices
        out = slices[:, :, ::-1] if self.flip_cols else slices
        out = out[:, ::-1] if self.flip_rows else out
        out = np.swapaxes(out, 1, 2) if self.transpose else out
        return np.ascontiguousarray(out)

    def spacing(self, spacing: tuple[float, float]) -> tuple[float, float]:
        """The stored (row, column) pixel size as the display's."""
        return (spacing[1], spacing[0]) if self.transpose else spacing

    def describe(self) -> str:
        parts = [name for name, on in (("transposed", self.transpose), ("rows reversed", self.flip_rows),
                                       ("columns reversed", self.flip_cols)) if on]
        return ", ".join(parts) or "as stored"


def display_orientation(affine: np.ndarray, slice_axis: int) -> InPlane:
    """The :class:`InPlane` that shows the slices along ``slice_axis`` of a volume with voxel-to-RAS ``affine`` in
    the display convention of the module docstring."""
    rows_axis, cols_axis = (i for i in range(3) if i != slice_axis)
    d_rows = np.asarray(affine, np.float64)[:3, rows_axis] * _RAS_TO_LPS
    d_cols = np.asarray(affine, np.float64)[:3, cols_axis] * _RAS_TO_LPS
    if not (np.linalg.norm(d_rows) > 0 and np.linalg.norm(d_cols) > 0):
        return InPlane()  # an axis without a direction: nothing to orient by
    d_rows, d_cols = d_rows / np.linalg.norm(d_rows), d_cols / np.linalg.norm(d_cols)
    plane = int(np.argmax(np.abs(np.cross(d_rows, d_cols))))
    (h_axis, h_sign), (v_axis, v_sign) = DISPLAY[plane]
    transpose = abs(d_rows[h_axis]) > abs(d_cols[h_axis])  # the stored rows run across the display: swap
    if transpose:
        d_rows, d_cols = d_cols, d_rows
    return InPlane(transpose=bool(transpose), flip_rows=bool(d_rows[v_axis] * v_sign < 0),
                   flip_cols=bool(d_cols[h_axis] * h_sign < 0))
