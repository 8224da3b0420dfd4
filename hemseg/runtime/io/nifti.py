"""NIfTI (``.nii``, ``.nii.gz``) volumes through nibabel, read slice-wise.

The through-plane (slicing) axis rule, applied to the first three array axes:

1. a volume with exactly one axis of size 1 (a 2D image stored as NIfTI) is sliced along that axis;
2. otherwise the axis with the largest voxel spacing (the column norms of the affine, in mm) when it is clearly
   the largest: a 2D multi-slice acquisition has slices about twice as thick as its pixels or more, so spacings
   within a factor :data:`NEAR_ISOTROPIC` (1.5) of the largest count as ties: there, as in a 3D acquisition
   (0.8 mm slices of 1 mm pixels, or resampled "isotropic" data with 1.0 vs 0.9999999), the voxel size does not
   tell the through-plane axis;
3. ties -> the axis with the fewest voxels (a slab is thinner than it is wide: a thin-slice volume of 12 slices of
   123 x 99 was cut into 99 slices of 12 x 123 when its 1 mm pixels beat its 0.8 mm slices); ties -> the last.

Slice ``k`` is ``np.take(volume, k, axis=slice_axis)``, turned (transposed and/or flipped, never resampled) into
the orientation a viewer displays it in, decided by the affine (:mod:`hemseg.runtime.io.display`): the same slice
reaches the model alike from a NIfTI and from the DICOM series it was converted from. A file that records no
geometry (qform and sform codes 0) is taken in array order: the two remaining axes become (H, W). Masks are sliced
and turned like their image, and :func:`hemseg.runtime.io.writers.write_nifti_labels` turns label slices back and
stacks them the same way, with the same affine and header. The in-plane spacing is the spacing of the two axes, in
the displayed order.

Lengths are millimetres: a file whose header gives its spatial unit as metres or microns (``xyzt_units``) has its
affine converted to mm on reading; the header kept with it stays the file's (``ImageVolume.mm_per_unit`` says the
unit), so that a label map written from it has the image's unit, forms and codes, and lies where the image does
for every reader, unit-aware or not; an unknown unit (0, what many tools write) is taken as mm, except in a file that states no size at
all: no sform, no qform, no unit and pixdim 1, 1, 1 (nibabel's defaults for an array saved without an affine, and
what hemseg writes for a PNG's label map): its pixel spacing is unknown (no areas or volumes in mm), as the PNG's
was. A NIfTI-1 ``.hdr`` / ``.img`` pair is
refused with how to convert it (its voxels are not in the file given).

4D volumes are refused unless every dimension past the third has size 1. Values are nibabel's scaled data
(``scl_slope``/``scl_inter`` applied): integer files keep their dtype, float files become float32.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import struct
from pathlib import Path

import numpy as np

from hemseg.errors import InputError
from hemseg.runtime.io.display import InPlane, display_orientation
from hemseg.runtime.io.limits import check_dims
from hemseg.runtime.io.nifti_header import check_raw_header
from hemseg.runtime.io.once import warn_once
from hemseg.runtime.io.sniff import GZIP_MAGIC
from hemseg.runtime.io.volume import ImageVolume

log = logging.getLogger(__name__)

#: spacings within this factor of the largest tie for the slicing axis (see the module docstring, rule 2)
NEAR_ISOTROPIC = 1.5
#: millimetres per NIfTI spatial unit (nibabel's names); 'unknown' is taken as mm
MM_PER_UNIT = {"meter": 1000.0, "mm": 1.0, "micron": 0.001, "unknown": 1.0}


def through_plane_axis(spacing: tuple[float, float, float] | np.ndarray, shape: tuple[int, int, int]) -> int:
    """The slicing axis by the module's rule, for 3 spacings (mm) and a 3D shape."""
    spacing = [float(s) for s in spacing]
    shape = tuple(int(s) for s in shape)
    singletons = [i for i, s in enumerate(shape) if s == 1]
    if len(singletons) == 1:
        return singletons[0]
    largest = max(spacing)
    # (the largest itself always: an overflowing affine's spacing is inf, and inf x 1.5 is not above it)
    candidates = [i for i in range(3) if spacing[i] == largest or spacing[i] * NEAR_ISOTROPIC > largest] or [0, 1, 2]
    fewest = min(shape[i] for i in candidates)
    candidates = [i for i in candidates if shape[i] == fewest]
    return candidates[-1]


def _nibabel_logs_through_the_application() -> None:
    """nibabel gives its ``nibabel.global`` logger a bare handler of its own when imported; where the application
    has configured logging (the root logger has handlers, as under the hemseg CLI) its records reach those too, so
    each of its messages was printed twice, once without level or name. Its own handler goes then."""
    from nibabel.imageglobals import logger as nib_logger

    if logging.getLogger().handlers:
        for handler in list(nib_logger.handlers):
            if type(handler) is logging.StreamHandler:
                nib_logger.removeHandler(handler)


def _load(path: Path, stack: contextlib.ExitStack):
    """The nibabel image. A NIfTI file without a .nii/.nii.gz name (dispatched here by its content), or one whose
    name says the other compression (a gzipped ``.nii``, a plain ``.nii.gz``), is read from a stream chosen by the
    content, since nibabel picks its reader by extension; the stream stays open until ``stack`` closes."""
    import nibabel as nib
    from nibabel.fileholders import FileHolder

    _nibabel_logs_through_the_application()
    check_raw_header(path)
    try:
        name = path.name.lower()
        with open(path, "rb") as probe:
            gz = probe.read(2) == GZIP_MAGIC
        if (name.endswith(".nii") and not gz) or (name.endswith(".nii.gz") and gz):
            img = nib.load(str(path))
        else:
            if name.endswith(".nii") or name.endswith(".nii.gz"):
                warn_once(log, path, "%s: named %s but %s; read by its content", path, ".nii" if gz else ".nii.gz",
                          "gzip-compressed" if gz else "not gzip-compressed")
            fh = stack.enter_context(gzip.open(path, "rb") if gz else open(path, "rb"))
            head = fh.read(4)
            fh.seek(0)
            cls = nib.Nifti2Image if 540 in struct.unpack("<i", head) + struct.unpack(">i", head) else nib.Nifti1Image
            img = cls.from_file_map({"header": FileHolder(fileobj=fh), "image": FileHolder(fileobj=fh)})
    except Exception as exc:  # nibabel raises many types for bad files (ImageFileError, ValueError, EOFError...)
        raise InputError(path, f"not a readable NIfTI file: {_first_line(exc)}") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(path, f"not a NIfTI-1/NIfTI-2 image (nibabel read it as {type(img).__name__})")
    return img


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _check_data_size(path: Path, img, shape3: tuple[int, int, int], dtype: np.dtype) -> None:
    """An uncompressed file must hold the voxel data its header announces (checked before reading any)."""
    with open(path, "rb") as fh:
        if fh.read(2) == GZIP_MAGIC:
            return  # the size is known only by decompressing; nibabel reports a short stream itself
    try:
        offset = int(img.dataobj.offset)  # where the array proxy will read from (vox_offset)
    except Exception:  # not an array proxy: nothing to check against
        return
    expected = offset + int(np.prod(shape3)) * int(dtype.itemsize)
    size = path.stat().st_size
    if size < expected:
        raise InputError(path, f"truncated NIfTI file: the header announces {expected} bytes (voxel data from "
                               f"byte {offset}), the file holds {size}")


def read_nifti(path: Path, slice_axis: int | None = None, inplane: InPlane | None = None) -> ImageVolume:
    """Read a NIfTI file as slices. ``slice_axis`` overrides the rule and ``inplane`` the display orientation (used
    to slice a mask like its image: with ``slice_axis`` given and no ``inplane``, the slices are taken as stored)."""
    with contextlib.ExitStack() as stack:
        return _read(path, _load(path, stack), slice_axis, inplane)


def _codes(header) -> tuple[int, int]:
    """(sform code, qform code); a NIfTI-2 or Analyze header without them counts as (0, 0)."""
    try:
        return int(header["sform_code"]), int(header["qform_code"])
    except (KeyError, ValueError, TypeError):
        return 0, 0


def _refuse_singular(path: Path, affine: np.ndarray, shape3, spacing3: np.ndarray, codes) -> None:
    """InputError when the voxel axes (those of more than one voxel) do not span as many directions as there are of
    them: an sform whose columns are parallel (or lie in one plane) gave slices an area (the in-plane spacing, each
    column's length) but a volume of 0, without a word."""
    axes = [i for i in range(3) if shape3[i] > 1]
    if len(axes) < 2:
        return
    unit = affine[:3, axes] / spacing3[axes]
    if np.linalg.svd(unit, compute_uv=False).min() < 1e-3:
        where = f"sform code {codes[0]}" if codes[0] != 0 else f"qform code {codes[1]}"
        fix = ("fix the sform (or set its code to 0 to use the qform and pixdim)" if codes[0] != 0
               else "fix the qform")
        raise InputError(path, f"invalid NIfTI geometry: the affine ({where}) is singular: its voxel axes "
                               f"{', '.join(map(str, axes))} do not point in independent directions, so slices have "
                               f"no defined position, area or volume; {fix}")


def _raw_pixdim(path: Path, header) -> np.ndarray:
    """pixdim[1:4] as the file stores them: nibabel's loading check turns a 0 into 1 in the header it gives."""
    import gzip

    try:
        with open(path, "rb") as fh:
            gzipped = fh.read(2) == b"\x1f\x8b"  # by content, as the file was read (a .nii may be gzip data)
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as fh:
            header = type(header).from_fileobj(fh, check=False)
    except Exception:  # noqa: BLE001 - unreadable again: keep what nibabel gave
        pass
    raw = np.asarray(header["pixdim"], dtype=np.float64)[1:4]
    return np.where(np.isfinite(raw), np.abs(raw), 0.0)


def _fits_float32(arr: np.ndarray) -> bool:
    """Whether every finite value of the float array ``arr`` is within float32's range."""
    if arr.dtype.itemsize <= 4 or not arr.size:
        return True
    top = np.nanmax(np.abs(np.where(np.isfinite(arr), arr, 0)))
    return bool(top <= np.finfo(np.float32).max)


def _pair_header(path: Path) -> bool:
    """Whether ``path`` holds the header of a NIfTI .hdr / .img pair (magic ``ni1`` / ``ni2`` where a single file
    has ``n+1`` / ``n+2``): its voxels are in another file. nibabel rewrites the magic when it reads the header into
    a single-file image, so the file's own bytes are looked at."""
    try:
        with open(path, "rb") as probe:
            gz = probe.read(2) == GZIP_MAGIC
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
            head = fh.read(348)
    except (OSError, EOFError):
        return False
    return head[344:348] == b"ni1\0" or head[4:8] == b"ni2\0"


def _mm_per_unit(path: Path, header) -> float:
    """Millimetres per length unit of the file, from the header's spatial unit (:data:`MM_PER_UNIT`)."""
    try:
        unit = header.get_xyzt_units()[0]
    except Exception:  # noqa: BLE001 - a unit code nibabel does not know
        raise InputError(path, f"unknown NIfTI spatial unit code {int(header['xyzt_units']) & 7}") from None
    factor = MM_PER_UNIT.get(unit)
    if factor is None:
        raise InputError(path, f"unknown NIfTI spatial unit {unit!r}")
    if factor != 1.0:
        log.info("%s: lengths given in %s; converted to mm", path, unit)
    return factor


def _read(path: Path, img, slice_axis: int | None, inplane: InPlane | None = None) -> ImageVolume:
    if _pair_header(path):
        raise InputError(path, "the header of a NIfTI .hdr / .img pair (its voxels are in the .img file): hemseg "
                               "reads single-file NIfTI; convert the pair, e.g. python -c \"import nibabel as nib; "
                               "nib.save(nib.load('X.hdr'), 'X.nii.gz')\"")
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 2:
        raise InputError(path, f"NIfTI of shape {shape}: expected a 2D image or a 3D volume")
    if len(shape) > 3 and any(s <= 0 for s in shape[3:]):  # not a time series to split (stop 52)
        raise InputError(path, f"invalid NIfTI header: the header's dimensions are {' x '.join(map(str, shape))}, "
                               f"{'negative' if min(shape[3:]) < 0 else 'zero'} along dimension "
                               f"{4 + [s <= 0 for s in shape[3:]].index(True)}")
    if len(shape) > 3 and any(s != 1 for s in shape[3:]):
        raise InputError(path, f"{len(shape)}D NIfTI of shape {' x '.join(map(str, shape))} is not supported: only "
                               "3D volumes (or 4D with a 4th dimension of 1); split the time series first")
    shape3 = (shape + (1,))[:3] if len(shape) == 2 else shape[:3]
    if any(s <= 0 for s in shape3):  # before an axis is chosen: "0 x 141 x 16 (slices x rows x columns)" named the
        # x size the slice count (a QA finding of stop 52)
        axis = "xyz"[[s <= 0 for s in shape3].index(True)]
        what = f"the header's dimensions are {' x '.join(map(str, shape3))} (x, y, z)"
        raise InputError(path, f"invalid NIfTI header: {what}, negative along {axis}" if min(shape3) < 0 else
                         f"empty image: {what}, zero along {axis}")
    dtype = img.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise InputError(path, f"unsupported NIfTI data type {dtype} (RGB or complex); expected gray values")
    try:
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # nibabel computes the affine from qform/sform/pixdim on demand
        raise InputError(path, f"invalid NIfTI geometry (qform/sform/pixdim): {_first_line(exc)}") from None
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError(path, "invalid NIfTI geometry: the affine (from qform/sform/pixdim) holds NaN or Inf")
    # lengths in mm from here on; the header stays the file's, in its own unit, and a label map written from it
    # gets the file's forms, codes and unit (:func:`hemseg.runtime.io.writers.write_nifti_labels` converts back)
    mm_per_unit = _mm_per_unit(path, img.header)
    affine = affine.copy()
    affine[:3, :] *= mm_per_unit
    header = img.header.copy()
    spacing3 = np.linalg.norm(affine[:3, :3], axis=0)
    codes = _codes(img.header)
    if codes[0] == 0:  # the qform, or no form at all, takes its voxel sizes from pixdim, and nibabel makes a pixdim
        # of 0 into 1 mm (a warning on stderr): the size is not known
        raw = _raw_pixdim(path, img.header)
        spacing3 = np.where(raw > 0, spacing3, 0.0)
    flat = [i for i in range(3) if shape3[i] > 1 and not spacing3[i] > 0]
    if flat:  # an all-zero sform, say: no voxel size, so no area, volume or geometry
        where = (f"sform code {codes[0]}, qform code {codes[1]}" if codes[0] != 0
                 else f"qform code {codes[1]}: pixdim" if codes[1] != 0 else "no sform or qform: pixdim")
        fix = ("fix the sform (or set its code to 0 to use the qform and pixdim)" if codes[0] != 0
               else "give pixdim the voxel sizes")
        raise InputError(path, f"invalid NIfTI geometry: the affine ({where}) gives axis {flat[0]} a voxel size of 0; "
                               f"{fix}")
    _refuse_singular(path, affine, shape3, spacing3, codes)
    # a single slice whose thickness the file does not give (0 along its one-voxel axis): areas, but no volume
    thickness_known = all(spacing3[i] > 0 for i in range(3))
    no_size = codes == (0, 0) and int(img.header["xyzt_units"]) & 7 == 0 \
        and bool(np.all(_raw_pixdim(path, img.header) == 1.0))
    if slice_axis is None:
        slice_axis = through_plane_axis(spacing3, shape3)
        if inplane is None and codes != (0, 0):
            inplane = display_orientation(affine, slice_axis)
    elif slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
    in_plane = [i for i in range(3) if i != slice_axis]
    check_dims(path, shape3[in_plane[0]], shape3[in_plane[1]], shape3[slice_axis])
    _check_data_size(path, img, shape3, dtype)
    try:
        arr = np.asanyarray(img.dataobj)
    except MemoryError:  # a valid, large file: not "truncated or corrupt" (a QA finding of stop 52)
        proxy = img.dataobj
        scaled = np.float64 if getattr(proxy, "slope", 1) != 1 or getattr(proxy, "inter", 0) != 0 else dtype
        size = int(np.prod(shape3)) * np.dtype(scaled).itemsize
        raise InputError(path, f"not enough memory to read its voxel data ({size / 2**30:.1f} GiB as "
                               f"{np.dtype(scaled).name})") from None
    except Exception as exc:  # OSError, EOFError, ValueError, zlib.error, struct.error, ... for damaged data
        raise InputError(path, f"cannot read the NIfTI voxel data (truncated or corrupt): {_first_line(exc)}") from None
    if arr.dtype.kind == "f" and arr.dtype != np.float32 and _fits_float32(arr):
        arr = arr.astype(np.float32)  # float64 beyond float32's range stays float64: the cast made it Inf
    arr = np.asarray(arr).reshape(shape3)
    inplane = inplane if inplane is not None else InPlane()
    data = inplane.apply(np.ascontiguousarray(np.moveaxis(arr, slice_axis, 0)))
    spacing = inplane.spacing((float(spacing3[in_plane[0]]), float(spacing3[in_plane[1]])))
    log.debug("%s: shape %s, spacing %s, sliced along axis %d, in-plane %s", path, shape3, np.round(spacing3, 4),
              slice_axis, inplane.describe())
    if no_size:  # the affine only lays the slices out (a label map written from it matches the file)
        log.info("%s: no sform, qform or unit and pixdim 1: the voxel size is unknown (no areas or volumes in mm)",
                 path)
        return ImageVolume(path=path, data=data, kind="nifti", spacing=None, slice_axis=slice_axis, affine=affine,
                           header=header, thickness_known=False, inplane=inplane,
                           mm_per_unit=mm_per_unit)
    return ImageVolume(path=path, data=data, kind="nifti", spacing=spacing, slice_axis=slice_axis,
                       affine=affine, header=header, thickness_known=thickness_known, inplane=inplane,
                       mm_per_unit=mm_per_unit,
                       geometry_warnings=() if thickness_known else (
                           "the slice thickness is not given (0 along the slice axis): no lesion volume",))
