"""A NIfTI mask onto its image's voxel grid, by the two files' geometry, never silently by array order alone.

A mask and its image are paired voxel for voxel. That is right when both files describe the same voxel grid
(affine and shape) and silently wrong when they do not: a mask saved by a tool that reorients to RAS, a
``dcm2niix`` mask for a DICOM series (hemseg reads a series as rows x columns x slices, dcm2niix stores columns
first and flips the rows), a mask of another acquisition. nnU-Net refuses such cases
(``verify_dataset_integrity``); hemseg does the same, except for the one case that can be made exact:

- same grid (every affine entry within a hundredth of a voxel: float32 header rounding is far below it, a real
  misregistration far above) -> used as stored;
- the same grid with its axes permuted or flipped -> reoriented onto the image's array order (lossless; logged);
- a mask file that records no geometry (NIfTI ``qform_code`` and ``sform_code`` both 0, e.g. written from a bare
  array) or an image without one -> paired by array order, as before (logged; a warning when only the mask has
  geometry and its axes run otherwise than the image header's default: the arrays are then likely flipped);
- anything else (another origin, spacing, rotation or shape) -> :class:`~hemseg.errors.GeometryError` naming the
  mask and what differs: resample the mask onto the image first.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import numpy as np

from hemseg.errors import GeometryError
from hemseg.runtime.io.once import warn_once
from hemseg.runtime.io.volume import ImageVolume

log = logging.getLogger(__name__)

#: Tolerance, as a fraction of the image's voxel size, for two affines to describe the same grid.
VOXEL_TOLERANCE = 0.01


def has_geometry(vol: ImageVolume) -> bool:
    """Whether ``vol`` places its voxels in space: DICOM with positions, NIfTI with a qform or sform code."""
    if vol.affine is None:
        return False
    if vol.header is None:  # DICOM: the affine comes from the positions and orientation
        return True
    try:
        return int(vol.header["qform_code"]) > 0 or int(vol.header["sform_code"]) > 0
    except (KeyError, TypeError, ValueError):
        return False


def volume_3d(vol: ImageVolume) -> np.ndarray:
    """The 3D array (as on disk) that ``vol``'s slices were taken from."""
    return np.moveaxis(vol.inplane.undo(vol.data), 0, vol.slice_axis)


def same_grid(a: np.ndarray, b: np.ndarray, shape_a, shape_b) -> bool:
    """Whether affines ``a``, ``b`` with array shapes ``shape_a``, ``shape_b`` describe the same voxel grid."""
    if tuple(shape_a) != tuple(shape_b):
        return False
    voxel = np.linalg.norm(b[:3, :3], axis=0)
    tol = VOXEL_TOLERANCE * voxel
    return bool(np.all(np.abs(a[:3, :3] - b[:3, :3]) <= tol[None, :])
                and np.all(np.abs(a[:3, 3] - b[:3, 3]) <= VOXEL_TOLERANCE * voxel.min()))


def _describe_difference(a: np.ndarray, b: np.ndarray, mask_shape, image_shape) -> str:
    """What differs between grid ``a`` (the mask's, in the image's axis order) and ``b`` (the image's)."""
    parts = []
    if tuple(mask_shape) != tuple(image_shape):
        parts.append(f"shape {' x '.join(map(str, mask_shape))} vs {' x '.join(map(str, image_shape))}")
    sa, sb = np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0)
    if not np.allclose(np.sort(sa), np.sort(sb), rtol=VOXEL_TOLERANCE):
        parts.append(f"voxel size {_mm(sa)} vs {_mm(sb)} mm")
    shift = float(np.linalg.norm(a[:3, 3] - b[:3, 3]))
    if shift > VOXEL_TOLERANCE * sb.min():
        parts.append(f"origin {shift:.3g} mm apart")
    if not parts:
        parts.append("axes rotated or flipped against each other")
    return ", ".join(parts)


def _mm(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


_NOTES: ContextVar[list[str] | None] = ContextVar("hemseg_pairing_notes", default=None)


@contextmanager
def pairing_notes() -> Iterator[list[str]]:
    """Within it, what :func:`align_mask` would warn of (a mask paired by array order with an image without
    geometry, though the mask's file says its axes run otherwise) goes into the yielded list instead: ``hemseg data
    check`` counts it among its report's warnings (it logged it and reported 0 warnings: a QA finding of stop 52)."""
    notes: list[str] = []
    token = _NOTES.set(notes)
    try:
        yield notes
    finally:
        _NOTES.reset(token)


def align_mask(mask: ImageVolume, image: ImageVolume) -> np.ndarray:
    """``mask``'s voxels as (N, H, W) slices of ``image`` (see the module's rules); GeometryError when the two files
    describe different grids."""
    mask3 = volume_3d(mask)
    image_shape = volume_3d(image).shape  # a view: no copy
    if not (has_geometry(mask) and has_geometry(image)):
        if has_geometry(image):
            log.info("%s: the mask file records no geometry (qform and sform codes 0): paired with %s by array "
                     "order", mask.path, image.path.name)
        elif has_geometry(mask) and image.affine is not None and _axcodes(mask.affine) != _axcodes(image.affine):
            # the image's array axes are unknown; its header's default (scaling only) is one order, the mask's
            # file says it is stored in another: the two arrays are likely flipped or turned against each other
            text = (f"{mask.path}: paired with {image.path.name} by array order, since the image records no geometry "
                    f"(qform and sform codes 0), but the mask's file says its axes run {_axcodes(mask.affine)}, not "
                    f"{_axcodes(image.affine)} as the image's default: check the pairing (an overlay), or give the "
                    "image its geometry")
            collected = _NOTES.get()
            if collected is not None:
                collected.append(text)
            else:
                warn_once(log, (mask.path, image.path), "%s", text)
        return _as_slices(mask3, image)
    if same_grid(mask.affine, image.affine, mask3.shape, image_shape):
        return _as_slices(mask3, image)
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

    transform = ornt_transform(io_orientation(mask.affine), io_orientation(image.affine))
    turned = apply_orientation(mask3, transform)
    turned_affine = mask.affine @ inv_ornt_aff(transform, mask3.shape)
    if same_grid(turned_affine, image.affine, turned.shape, image_shape):
        log.info("%s: mask stored in another axis order than %s (%s vs %s); reoriented onto the image's grid",
                 mask.path, image.path.name, _axcodes(mask.affine), _axcodes(image.affine))
        return _as_slices(np.ascontiguousarray(turned), image)
    raise GeometryError(mask.path, f"its voxel grid differs from the image {image.path.name}'s "
                                f"({_describe_difference(turned_affine, image.affine, turned.shape, image_shape)}"
                                "); resample the "
                                "mask onto the image first (hemseg pairs voxels, it does not resample masks)")


def _axcodes(affine: np.ndarray) -> str:
    from nibabel.orientations import aff2axcodes

    return "".join(c or "?" for c in aff2axcodes(affine))


def _as_slices(mask3: np.ndarray, image: ImageVolume) -> np.ndarray:
    """Sliced and turned like the image (a size mismatch is left to the caller, which names both files)."""
    return image.inplane.apply(np.ascontiguousarray(np.moveaxis(mask3, image.slice_axis, 0)))
