"""Reading images and masks in every supported format, and expanding command-line inputs.

Formats (dispatched by content first, see :mod:`hemseg.runtime.io.sniff`; a file whose content contradicts its
extension is read by its content, with a warning):

- PNG, JPEG, TIFF (8/16-bit, float TIFF; gray, RGB, RGBA, palette) -> gray by the rule in
  :mod:`hemseg.runtime.io.raster` (drop alpha, then ITU-R BT.601 luma).
- NPY: (H, W) or (N, H, W) numeric arrays (:mod:`hemseg.runtime.io.npy`).
- NIfTI ``.nii``/``.nii.gz``: sliced along the through-plane axis (:mod:`hemseg.runtime.io.nifti`).
- DICOM: one file, or a folder holding one series (:mod:`hemseg.runtime.io.dicom`).

Masks: PNG, NPY or NIfTI (JPEG is lossy), and for DICOM images a DICOM SEG or RT Structure Set of the image
(:mod:`hemseg.runtime.io.dicom_mask`, read by the dataset loader). Binary foreground = any nonzero value, unless
``labels`` selects label values (foreground = value in ``labels``). An indexed-color PNG mask holds its palette
indices (label values; index 0 is the background whatever its color); another color PNG mask counts a pixel as
foreground when any color channel is nonzero (alpha dropped); with ``labels`` it must be gray (or have identical
channels).

Every failure is an :class:`~hemseg.errors.InputError` naming the file with a one-line reason. Float data holding
NaN/Inf is refused at reading time.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from hemseg.errors import InputError, UsageError
from hemseg.runtime.io.dicom import dicom_files_in, read_dicom_file, read_dicom_series, series_of
from hemseg.runtime.io.intensity import check_finite
from hemseg.runtime.io.jpeg_mask import jpeg_mask
from hemseg.runtime.io.limits import require_file
from hemseg.runtime.io.mask_geometry import align_mask
from hemseg.runtime.io.nifti import read_nifti
from hemseg.runtime.io.npy import load_npy, read_npy
from hemseg.runtime.io.once import warn_once
from hemseg.runtime.io.png_indexed import png_indices
from hemseg.runtime.io.raster import decode_raster, png_palette, read_raster, tiff_is_palette
from hemseg.runtime.io.sniff import NAMES, describe_content, format_from_name, is_dicom_file, read_head, sniff, stem_of
from hemseg.runtime.io.volume import ImageVolume

__all__ = ["ImageVolume", "detect_format", "find_inputs", "read_image", "read_mask", "MASK_FORMATS"]

log = logging.getLogger(__name__)

MASK_FORMATS = ("png", "tiff", "jpeg", "npy", "nifti")
_SUPPORTED = "PNG, JPEG, TIFF, NPY, NIfTI (.nii/.nii.gz) or DICOM"


def detect_format(path: str | Path) -> str:
    """The reader to use for an existing non-empty file: content first, extension second."""
    path = Path(path)
    head = read_head(path)
    content = sniff(path, head)
    by_name = format_from_name(path)
    if content == "bigtiff":
        raise InputError(path, "BigTIFF is not supported; save the image as a standard TIFF, PNG or NIfTI")
    if content == "gzip":
        if by_name == "nifti":
            return "nifti"  # let nibabel report what is wrong with it
        raise InputError(path, f"{describe_content(head)}; expected {_SUPPORTED}")
    if content is not None:
        if by_name is not None and by_name != content:
            warn_once(log, path, "%s: the content is %s although the extension says %s; reading it as %s",
                      path, NAMES[content], NAMES[by_name], NAMES[content])
        return content
    if by_name == "dicom":
        return "dicom"  # DICOM without the 128-byte preamble: only pydicom can tell
    if by_name is not None:
        raise InputError(path, f"not a {NAMES[by_name]} file: {describe_content(head)}")
    raise InputError(path, f"unsupported file type ({describe_content(head)}); expected {_SUPPORTED}")


def _other_images(folder: Path, dicom: list[Path]) -> list[Path]:
    """The non-DICOM image files beside a folder's ``dicom`` files, less those named as hemseg predict's outputs of
    the folder or its files (the series' own mask written into its folder is no image of it)."""
    others = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                    and format_from_name(p) not in (None, "dicom") and not is_dicom_file(p))
    return _predict_outputs_split(folder, others, dicom + others)[0]


def read_image(path: str | Path) -> ImageVolume:
    """Read one image, volume or DICOM series folder as an :class:`ImageVolume` with data (N, H, W)."""
    if not isinstance(path, (str, Path)):
        raise UsageError(f"read_image needs a path (str or Path), got a {type(path).__name__}")
    path = check_input_path(path)
    try:
        return _read_image(path)
    except OSError as exc:  # permissions, I/O errors: still one line naming the file
        raise InputError(getattr(exc, "filename", None) or path, f"cannot read: {exc.strerror or exc}") from None


def _missing(path: Path) -> str:
    """Why ``path``, which does not exist, is missing: a link loop or a link to nothing is said as such."""
    return _odd_kind(path) if path.is_symlink() else "no such file or directory"


def _read_image(path: Path) -> ImageVolume:
    if not path.exists():
        raise InputError(path, _missing(path))
    if path.is_dir():
        dicom = dicom_files_in(path)
        if not dicom:
            raise InputError(path, "folder holds no DICOM files; give an image file or a DICOM series folder")
        others = _other_images(path, dicom)
        if others:
            if not _holds_a_series([series_of(p) for p in dicom]):
                raise InputError(path, f"folder mixes DICOM files with {len(others)} other image(s) (e.g. "
                                       f"{others[0].name}); it is not one DICOM series, give the files one by one")
            log.info("%s: %d non-DICOM file(s) beside the DICOM series are not part of it (e.g. %s)", path,
                     len(others), others[0].name)
        vol = read_dicom_series(path)
    else:
        require_file(path)
        fmt = detect_format(path)
        if fmt in ("png", "jpeg", "tiff"):
            vol = read_raster(path, fmt)
        elif fmt == "npy":
            vol = read_npy(path)
        elif fmt == "nifti":
            vol = read_nifti(path)
        else:
            vol = read_dicom_file(path)
    check_finite(vol.data, path)
    return vol


def _labels_tuple(labels: Iterable[int] | None) -> tuple[int, ...] | None:
    """Label values as whole numbers (None, or an empty sequence: every nonzero value); UsageError for anything
    else ('255' was the labels 2, 5, 5; 255.7 was 255; 5 a TypeError)."""
    if labels is None:
        return None
    try:
        if isinstance(labels, (str, bytes)):
            raise TypeError
        values = tuple(labels)
        if any(isinstance(v, (bool, np.bool_, str, bytes)) or int(v) != v for v in values):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"mask labels must be a sequence of whole numbers, got {labels!r:.60}") from None
    return tuple(int(v) for v in values) or None


def checked_labels(labels: Iterable[int] | None) -> tuple[int, ...] | None:
    """Lesion label values as whole numbers, None for every nonzero value (None or an empty sequence); UsageError for
    anything else, 0 (the background) included."""
    values = _labels_tuple(labels)
    if values is not None and 0 in values:
        raise UsageError("label 0 selects the background as the lesion; give the lesion's value(s)")
    return values


def read_mask(path: str | Path, labels: Sequence[int] | None = None, image: ImageVolume | None = None
              ) -> np.ndarray:
    """Read a mask as (N, H, W) uint8 in {0, 1}.

    Foreground is every nonzero value, or, with ``labels``, every value equal to one of them.
    ``image``: the image the mask belongs to; a NIfTI mask is then sliced like it, onto its voxel grid by the two
    files' geometry (:func:`hemseg.runtime.io.mask_geometry.align_mask`: reoriented when only the axis order
    differs, an error when the grids differ).
    """
    path = check_input_path(path)
    if image is not None and not isinstance(image, ImageVolume):
        raise UsageError(f"read_mask: image must be the ImageVolume the mask belongs to, got a {type(image).__name__}")
    try:
        return _read_mask(path, _labels_tuple(labels), image)
    except OSError as exc:
        raise InputError(getattr(exc, "filename", None) or path, f"cannot read: {exc.strerror or exc}") from None


def mask_label_values(path: str | Path) -> np.ndarray:
    """The distinct nonzero values stored in the mask file ``path``, sorted (a color PNG mask counts as one value,
    1: its colors are not labels; a DICOM SEG gives its segment numbers, an RT Structure Set the numbers of its ROIs
    with a closed contour). More than one means a label map (several structures) or a resampled soft mask,
    where "every nonzero value" is probably not the lesion."""
    path = Path(path)
    if path.is_file() and detect_format(path) == "dicom":  # a DICOM SEG or RTSTRUCT: its segment / ROI numbers
        from hemseg.runtime.io.dicom_mask import dicom_mask_label_values

        return np.array(dicom_mask_label_values(path))
    return read_mask_and_values(path)[1]


def read_mask_and_values(path: str | Path, labels: Sequence[int] | None = None, image: ImageVolume | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_mask` and :func:`mask_label_values`, from one read of the file."""
    path = Path(path)
    try:
        arr = _mask_array(path, _labels_tuple(labels), image)
    except OSError as exc:
        raise InputError(getattr(exc, "filename", None) or path, f"cannot read: {exc.strerror or exc}") from None
    return _binary(arr, _labels_tuple(labels)), np.unique(arr[arr != 0])


def _binary(arr: np.ndarray, labels: tuple[int, ...] | None) -> np.ndarray:
    fg = arr != 0 if labels is None else np.isin(arr, labels)
    return fg.astype(np.uint8)


def _read_mask(path: Path, labels: tuple[int, ...] | None, image: ImageVolume | None) -> np.ndarray:
    return _binary(_mask_array(path, labels, image), labels)


def _mask_array(path: Path, labels: tuple[int, ...] | None, image: ImageVolume | None) -> np.ndarray:
    """The mask file's values, checked (format, finite); a color PNG mask as 0/1."""
    if path.is_dir():
        raise InputError(path, "a mask must be a file (PNG, NPY, NIfTI, or a DICOM SEG or RTSTRUCT), not a folder")
    require_file(path)
    fmt = detect_format(path)
    if fmt not in MASK_FORMATS:
        raise InputError(path, f"{NAMES.get(fmt, fmt)} masks are not supported; use PNG, TIFF, NPY, NIfTI or, for "
                               "DICOM images, a DICOM SEG or RT Structure Set (RTSTRUCT)")
    if labels is not None and 0 in labels:
        raise InputError(path, "--label 0 selects this mask's background as the lesion; give the lesion's value(s)")
    if fmt in ("png", "tiff"):
        arr = _raster_mask_values(path, fmt, labels)
    elif fmt == "jpeg":
        arr = jpeg_mask(path, labels)
    elif fmt == "npy":
        arr = load_npy(path)
    else:
        arr = _nifti_mask(path, image)
    check_finite(arr, path, what="mask")
    return arr


def _nifti_mask(path: Path, image: ImageVolume | None) -> np.ndarray:
    """A NIfTI mask's values as (N, H, W): sliced like ``image`` and onto its grid where both have geometry."""
    if image is None or image.slice_axis is None:
        return read_nifti(path).data
    if image.affine is None:
        return read_nifti(path, slice_axis=image.slice_axis, inplane=image.inplane).data
    return align_mask(read_nifti(path), image)  # sliced by its own rule: its axes may be the image's permuted


#: how a NIfTI mask beside an image without a geometry is read, and how to save one that fits
NIFTI_MASK_BESIDE_RASTER = (
    "a NIfTI mask with a geometry (qform / sform code > 0) beside an image without one is read as a viewer displays "
    "it, from its affine (as ITK / SimpleITK write a 2D image: its (W, H) array with an LPS affine); a mask saved "
    "from the image's own (H, W) array reads as stored with qform and sform codes 0, as hemseg predict --format nifti "
    "writes it")


def nifti_mask_turn(path: str | Path, image: ImageVolume) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(shape as stored, shape as read) of the NIfTI mask ``path`` beside ``image``, an image without a geometry
    (PNG, TIFF, NPY), when the mask's affine turns or flips its array as read (:data:`NIFTI_MASK_BESIDE_RASTER`);
    None when the mask is not NIfTI, the image has a geometry, or the two orders give the same slices."""
    path = Path(path)
    if image.affine is not None or image.slice_axis is not None or not path.is_file():
        return None
    if detect_format(path) != "nifti":
        return None
    vol = read_nifti(path)
    if vol.slice_axis is None:
        return None
    stored = vol.inplane.undo(vol.data)  # the slices as the array holds them (no second read of the file)
    if stored.shape == vol.data.shape and np.array_equal(stored, vol.data):
        return None
    return tuple(stored.shape), tuple(vol.data.shape)


def _raster_mask_values(path: Path, fmt: str, labels: tuple[int, ...] | None) -> np.ndarray:
    """A lossless raster mask's values (PNG, TIFF): gray as stored, an indexed-color PNG as its palette indices (label
    values), another color mask as 0/1 (any channel nonzero)."""
    pixels = decode_raster(path, fmt)
    data = path.read_bytes() if fmt == "png" else b""
    palette = png_palette(path, data) if fmt == "png" else None
    if palette is not None:  # the stored indices (OpenCV gives the palette's colors)
        return png_indices(path, data)[None]
    if fmt == "tiff" and tiff_is_palette(path.read_bytes()):
        raise InputError(path, "indexed-color (palette) TIFF mask: its label indices cannot be read here (OpenCV "
                               "gives their colors, which can all be black); save the mask as a gray TIFF or PNG of "
                               "label values")
    if pixels.ndim == 3:
        return pixels
    channels = pixels.shape[3]
    if channels == 2:
        return pixels[..., 0]
    color = pixels[..., :3]
    if np.array_equal(color[..., 0], color[..., 1]) and np.array_equal(color[..., 0], color[..., 2]):
        return np.ascontiguousarray(color[..., 0])
    if labels is not None:
        raise InputError(path, "color mask: label values (--label) need a gray (single-channel) mask")
    return np.any(color != 0, axis=-1).astype(np.uint8)


#: what hemseg predict adds to an input's stem in the names of its masks, DICOM SEGs and RT Structure Sets
PREDICT_MASK_SUFFIXES = ("_mask", "_seg", "_rtstruct")
#: the non-DICOM files hemseg predict writes for an input ``<stem>`` (``<stem>[_<n>]<suffix>``; hemseg.runtime.predict)
PREDICT_OUTPUT_SUFFIXES = ("_mask.png", "_mask.nii.gz", "_overlay.png", "_prob.npy")
_COUNTER = re.compile(r"_\d+$")


def _predict_outputs_split(folder: Path, files: list[Path], siblings: list[Path]) -> tuple[list[Path], list[Path]]:
    """``(kept, skipped)``: ``files`` less / those named as hemseg predict's outputs for one of ``siblings``
    (``a_mask.png`` beside ``a.png`` or ``a.dcm``, also ``a_1_mask.png``) or for ``folder`` itself (a DICOM series'
    outputs written into its folder: ``series_mask.nii.gz`` in ``series/``)."""
    stems = {stem_of(p) for p in siblings} | {stem_of(folder)}
    kept, skipped = [], []
    for p in files:
        sfx = next((s for s in PREDICT_OUTPUT_SUFFIXES if p.name.endswith(s)), None)
        base = p.name[: -len(sfx)] if sfx else None
        if base and (base in stems or _COUNTER.sub("", base) in stems):
            skipped.append(p)
        else:
            kept.append(p)
    return kept, skipped


def _without_predict_outputs(folder: Path, files: list[Path], siblings: list[Path]) -> list[Path]:
    """``files`` less those named as hemseg predict's outputs (:func:`_predict_outputs_split`): a folder that
    received predictions is segmented again as the inputs it held, not as its own masks. Logged as a warning with
    the count."""
    kept, skipped = _predict_outputs_split(folder, files, siblings)
    if skipped:
        log.warning("%s: %d file(s) named as hemseg predict's outputs of images here or of this folder's series "
                    "skipped (e.g. %s); give them as files to segment them", folder, len(skipped), skipped[0].name)
    return kept


def _holds_a_series(found: list) -> bool:
    """Whether DICOM files (their :func:`series_of`) hold at least two images of one series (non-image objects
    beside them, such as a SEG or RT Structure Set, do not count; the series reader skips them). Images of other
    series beside them do not make it a folder of single files: the series reader refuses the mix as it does
    without other files there (a thumbnail beside two series split them into slices segmented one by one, each
    normalised alone, exit 0: a QA finding of stop 56)."""
    if any(f is None for f in found):
        return False  # an unreadable file: read one by one, each failing (or not) on its own
    uids = Counter(uid for kind, uid in found if kind is None and uid)
    return bool(uids) and uids.most_common(1)[0][1] >= 2


def _only_non_images(found: list) -> bool:
    return all(f is not None and f[0] is not None for f in found)


def _dicom_below(folder: Path, depth: int = 4, budget: int = 2000, images: bool = False) -> bool:
    """Whether DICOM files lie in sub-folders of ``folder`` (up to ``depth`` levels down, ``budget`` entries looked
    at): a nested export (PATIENT/STUDY/SERIES/IM*) or a dataset's images/ folder, which a folder's reading (one level
    deep) does not segment. ``images``: any image file (PNG, NIfTI, ... by name) counts, DICOM or not."""
    import os

    seen = 0
    level = [folder]
    for _ in range(depth):
        below: list[Path] = []
        for f in level:
            try:
                entries = sorted(os.scandir(f), key=lambda e: e.name)
            except OSError:
                continue
            for e in entries:
                seen += 1
                if seen > budget:
                    return False
                if e.name.startswith("."):
                    continue
                if e.is_dir(follow_symlinks=False):
                    below.append(Path(e.path))
                elif (f is not folder or images) and e.is_file() and (
                        (images and format_from_name(e.name) is not None) or is_dicom_file(Path(e.path))):
                    return True
        level = below
    return False


def _holds_no_images(folder: Path) -> bool:
    """Whether every DICOM file directly in ``folder`` is a readable non-image object (a SEG, an RT Structure Set,
    a report): the first file decides a folder of images at once."""
    files = dicom_files_in(folder)
    for path in files:
        found = series_of(path)
        if found is None or found[0] is None:
            return False
    return bool(files)


def _odd_kind(path: Path) -> str:
    """What a folder entry that is neither a regular file nor a folder is."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:
            return "a symbolic link loop"
        except OSError:
            return "a symbolic link to nothing"
        return "a symbolic link to something that is not a file"
    return "not a regular file (a pipe, socket or device)"


#: image files by name of formats hemseg does not read: named when a folder is expanded (they were passed over)
OTHER_IMAGE_SUFFIXES = {".bmp": "BMP", ".gif": "GIF", ".webp": "WebP", ".jp2": "JPEG 2000", ".j2k": "JPEG 2000",
                        ".heic": "HEIF", ".avif": "AVIF"}


def _expand_folder(folder: Path) -> list[Path]:
    """The inputs of ``folder`` (see :func:`find_inputs`); where its inputs are its sub-folders (a study), those
    that could not be listed too: inputs that fail on their own, so that the run's summary and exit status say a
    part was not read (a warning alone let the run end 'all segmented', exit 0)."""
    unreadable: list[Path] = []
    study = [False]  # set where the sub-folders are the inputs
    try:
        found = _expand_folder_of(folder, unreadable, study)
    except InputError:
        if not (unreadable and study[0]):
            raise
        found = []
    return found + [p for p in unreadable if p not in found] if study[0] else found


def _expand_folder_of(folder: Path, unreadable: list[Path], study: list[bool]) -> list[Path]:
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file()]
    foreign = [p for p in files if p.suffix.lower() in OTHER_IMAGE_SUFFIXES]
    if foreign:
        log.warning("%s: %d image file(s) in formats hemseg does not read, not segmented (e.g. %s: %s); save them as "
                    "PNG or TIFF", folder, len(foreign), foreign[0].name, OTHER_IMAGE_SUFFIXES[foreign[0].suffix.lower()])
    odd = [p for p in entries if not p.is_file() and not p.is_dir()]
    if odd:  # a dangling or looping link, a pipe, a socket: neither read nor silently dropped
        log.warning("%s: skipped %d entr%s that %s neither a regular file nor a folder (e.g. %s: %s)", folder,
                    len(odd), "y" if len(odd) == 1 else "ies", "is" if len(odd) == 1 else "are", odd[0].name,
                    _odd_kind(odd[0]))
    dicom = [p for p in files if is_dicom_file(p)]
    dicom_set = set(dicom)
    others = [p for p in files if p not in dicom_set and format_from_name(p) is not None]
    if dicom:  # the series' own mask written into its folder (named as the folder's): the folder stays one input (a
        # one-slice series was read as a single file on a rerun, beside the first run's mask: a QA finding of stop 56)
        others = _without_predict_outputs(folder, others, [])
    subs = [p for p in entries if p.is_dir()]

    def holds_dicom(sub: Path) -> bool:
        try:
            return any(f.is_file() and is_dicom_file(f) for f in sub.iterdir() if not f.name.startswith("."))
        except OSError as exc:  # a sub-folder that cannot be listed: said once, the folder's own files go on
            if sub not in unreadable:
                unreadable.append(sub)
                log.warning("%s: sub-folder %s cannot be read (%s): not searched", folder, sub.name,
                            exc.strerror or exc)
            return False

    def series_folders() -> list[Path]:
        return [p for p in subs if holds_dicom(p)]

    found: list | None = None  # series_of() of each DICOM file: read once, only when a decision needs it

    def headers() -> list:
        nonlocal found
        if found is None:
            found = [series_of(p) for p in dicom]
        return found

    if dicom and not others and subs and series_folders() and _only_non_images(headers()):
        # a study that received hemseg's SEGs (or RT Structure Sets) of its series (-o = the study folder)
        log.warning("%s: %d DICOM object(s) here that are not images skipped (e.g. %s); segmenting the series in "
                    "its sub-folders", folder, len(dicom), dicom[0].name)
        dicom = []
    if (dicom or others) and subs:
        skipped = series_folders()
        if skipped:  # sub-folders are read as a study only where no image file lies beside them
            log.warning("%s: %d sub-folder(s) holding DICOM files not segmented (e.g. %s): a folder's sub-folders are "
                        "read only when it holds no image files; give them as inputs of their own", folder,
                        len(skipped), skipped[0].name)
        deeper = [p for p in subs if p not in skipped and _dicom_below(p)]
        if deeper:
            log.warning("%s: %d sub-folder(s) hold DICOM files further down, not segmented (e.g. %s): sort a nested "
                        "export with hemseg data sort-dicom, or give those series folders as inputs", folder,
                        len(deeper), deeper[0].name)
        # other images in sub-folders (a phantom's category folders beside its preview.png): only the preview was
        # segmented, without a word (a QA finding of stop 52)
        pictures = [p for p in subs if p not in skipped and p not in deeper
                    and _dicom_below(p, depth=2, budget=500, images=True)]
        if pictures:
            log.warning("%s: %d sub-folder(s) holding image files not segmented (e.g. %s): a folder's sub-folders "
                        "are searched for DICOM series only; give them as inputs of their own (a dataset's images: "
                        "its images/ folder)", folder, len(pictures), pictures[0].name)
    if dicom and not others:
        return [folder]
    if dicom:
        # a viewer's thumbnail or hemseg's own mask beside a series must not split it into slices segmented one by
        # one, each normalised alone: at least two images of one series are that series
        strays = _without_predict_outputs(folder, others, dicom + others)
        if _holds_a_series(headers()):
            if strays:
                log.warning("%s: segmenting its DICOM series as one input, and %d other image file(s) beside it on "
                            "their own (e.g. %s)", folder, len(strays), strays[0].name)
            return [folder, *strays]
        return sorted(dicom + strays)
    if others:
        return sorted(_without_predict_outputs(folder, others, others))
    if {"images", "masks"} <= {p.name for p in subs}:  # its masks/ of SEGs was taken for a series and refused
        raise InputError(folder, f"a dataset (images/ + masks/), not a folder of inputs: segment its images with "
                                 f"hemseg predict MODEL {folder / 'images'}, or score a model on it with hemseg eval "
                                 f"MODEL {folder}")
    study[0] = True  # no image file here: the sub-folders are the inputs
    series = series_folders()
    if series:  # a study: one DICOM series per sub-folder (what hemseg data sort-dicom writes)
        rest = [p for p in subs if p not in series]
        deeper = [p for p in rest if _dicom_below(p)]
        if deeper:  # an export's nested patients, a dataset's images/: not segmented, and said so
            log.warning("%s: %d sub-folder(s) hold DICOM files further down, not segmented (e.g. %s): sub-folders are "
                        "searched for series one level deep; sort a nested export with hemseg data sort-dicom, or "
                        "give those series folders as inputs", folder, len(deeper), deeper[0].name)
        if len(rest) > len(deeper):
            log.info("%s: %d sub-folder(s) without DICOM files skipped", folder, len(rest) - len(deeper))
        masks = [p for p in series if _holds_no_images(p)]
        if masks and len(masks) < len(series):  # the SEG / RTSTRUCT series of the study: nothing to segment
            log.warning("%s: %d sub-folder(s) holding only DICOM objects that are not images skipped (e.g. %s: a "
                        "SEG, RT Structure Set or report); give one explicitly to have it refused with the reason",
                        folder, len(masks), masks[0].name)
            series = [p for p in series if p not in masks]
        return series
    if subs:
        export = any(p.name.upper() == "DICOMDIR" for p in folder.iterdir())
        hint = ("; this is a DICOM export (it holds a DICOMDIR): hemseg data sort-dicom puts its series in folders of "
                "their own" if export else "; give other images' folders explicitly, or sort a nested DICOM export "
                "with hemseg data sort-dicom")
        raise InputError(folder, f"no images found (sub-folders are searched for DICOM series only, one level deep{hint})")
    raise InputError(folder, "no images found")


def check_input_path(path) -> Path:
    """``path`` as a Path; UsageError for anything that is not a str or Path, or an empty one (``Path('')`` is the
    current folder: an unset shell variable read, segmented or wrote there)."""
    if not isinstance(path, (str, Path)):
        shown = repr(path)
        shown = shown if len(shown) <= 60 and "\n" not in shown else f"{shown.splitlines()[0][:57]}..."
        hint = " (hemseg.runtime.segmenter.Segmenter takes arrays)" if isinstance(path, np.ndarray) else ""
        raise UsageError(f"an input must be a path (str or Path), got a {type(path).__name__}: {shown}{hint}")
    if isinstance(path, str) and not path.strip():
        raise UsageError("an input is an empty path (an unset shell variable?); give a file or folder")
    return Path(path)


def as_input_list(paths) -> list:
    """``paths`` as a list of inputs: one str or Path is one input (iterating a str gave one input per character,
    and "." among them segmented the current folder); anything else must be an iterable of them."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if isinstance(paths, (bytes, bytearray)) or not hasattr(paths, "__iter__"):
        raise UsageError(f"inputs must be a path or a sequence of paths, got a {type(paths).__name__}")
    items = list(paths)
    for p in items:
        check_input_path(p)
    return items


def find_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Expand command-line inputs to the list of things :func:`read_image` reads, in order, without repeats.

    - A file is kept as given (its content is checked when it is read).
    - A folder whose image-like files are all DICOM (``.dcm``/``.dicom`` or ``DICM`` at byte 128) is ONE input: the
      series folder itself. So is a folder whose DICOM files hold at least two images of one series beside other
      image files (a viewer's thumbnail, a mask): those others are inputs of their own (a warning), except files
      named as hemseg predict's outputs of the folder or of its files (``series_mask.nii.gz`` in ``series/``).
    - Any other folder gives its image files (supported extensions or DICOM content), sorted by name, less the
      files named as hemseg predict's outputs of other files there (a warning); the folder is not searched
      recursively and hidden files are skipped. A DICOM file among other images is a single-file input.
    - A folder without image files whose sub-folders hold DICOM files (a study, or ``hemseg data sort-dicom``'s
      output) gives those sub-folders, one series input each, sorted by name (one level deep); DICOM objects that
      are not images beside them (the SEGs hemseg wrote into the study folder) are skipped with a warning.
    - A dataset folder (``images/`` + ``masks/`` sub-folders, as ``hemseg data sort-dicom --dataset`` writes): an
      :class:`InputError` saying to give its ``images/`` (its ``masks/`` of SEG files was read as a series and
      failed, after a warning to sort what sort-dicom had sorted).
    - A missing path, or a folder without images: :class:`InputError`.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for raw in as_input_list(paths):
        path = Path(raw)
        if not path.exists():
            raise InputError(path, _missing(path))
        expanded = _expand_folder(path) if path.is_dir() else [path]
        for p in expanded:
            key = p.resolve()
            if key in seen:
                log.info("%s: given more than once; read once", p)
                continue
            seen.add(key)
            out.append(p)
    if not out:
        raise InputError(Path("."), "no inputs given")
    return out
