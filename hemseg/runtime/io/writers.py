"""Atomic writers for masks, label maps and JSON.

Every writer builds the complete file content in memory, writes it to a temporary file in the destination folder
(``.<name>.<random>.tmp``), flushes and fsyncs it, then renames it over the destination with :func:`os.replace`.
A failure at any point removes the temporary file and leaves the destination untouched: no partial files.
Missing parent folders are created. The file gets the mode of the file it replaces, else ``0o666`` minus the umask
(as ``open()`` would give; ``mkstemp`` alone would leave it private, ``0o600``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hemseg.errors import InputError, UsageError
from hemseg.runtime.io.regular import read_regular_text
from hemseg.runtime.io.volume import IN_MEMORY, ImageVolume


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import, to avoid racing other threads later (setting it is the only portable read)


def current_umask() -> int:
    """The process's umask now (a script may set one after importing hemseg): Linux states it in
    /proc/self/status, read without changing it; elsewhere the one read at import."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _UMASK


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    return atomic_write_all({path: data})[0]


def keep_mode(target: Path, staged: Path) -> None:
    """Give ``staged`` the permissions of the file ``target`` it is about to replace (an output made readable to
    its owner only stays so on a rerun), as :func:`atomic_write_bytes` does for a file it replaces in place."""
    mode = file_mode(target)
    if mode is not None:
        os.chmod(staged, mode)


def file_mode(path: Path) -> int | None:
    """The permission bits of ``path``, None when there is no such file."""
    try:
        return stat.S_IMODE(Path(path).stat().st_mode)
    except FileNotFoundError:
        return None


def atomic_write_all(files: dict[str | Path, bytes]) -> list[Path]:
    """Write several files so that either all are replaced or none is: each into a temporary file beside it, and
    only when all are written (a full disk fails one of them first) are they renamed into place. An OSError names
    the file asked for, not the hidden temporary one."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            try:
                staged.append((_write_temp(Path(path), data), Path(path)))
            except OSError as exc:
                raise exc if exc.filename is not None else _about(exc, Path(path)) from None
        for tmp, path in staged:
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise _about(exc, path) from None
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    return [path for _, path in staged]


def _write_temp(path: Path, data: bytes) -> str:
    """``data`` in a new temporary file beside ``path``, with the mode ``path`` has (or would get); its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = file_mode(path)
    if mode is None:
        mode = 0o666 & ~current_umask()
    try:
        # the temporary name stays within the file system's 255 bytes whatever the length of ``path.name``
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _about(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # the error names the file asked for, not the hidden temporary one (or none)
            raise _about(exc, path) from None
        raise
    return tmp


@contextlib.contextmanager
def final_names(stage: Path, final: Path):
    """Inside, an OSError about a file in the staging folder ``stage`` (a full disk while a report or an export is
    written there) names the file it was to become in ``final``: the staging folder is gone when the error is read."""
    try:
        yield
    except OSError as exc:
        name = exc.filename
        if name is None:
            raise
        try:
            rel = Path(os.fsdecode(name)).relative_to(stage)
        except ValueError:
            raise exc from None
        raise type(exc)(exc.errno, exc.strerror or str(exc), str(final / rel)) from None


def temp_prefix(name: str) -> str:
    """The start of the temporary file's name under which :func:`atomic_write_bytes` writes ``name``."""
    return f".{_short(name)}."


def remove_stale_temps(folder: Path, names) -> list[Path]:
    """Remove the temporary files (``.<name>.<random>.tmp``) that :func:`atomic_write_bytes` of each of ``names``
    left in ``folder`` when its process was killed; call under the folder's lock, so that no running writer owns
    them. Returns what was removed."""
    prefixes = tuple(temp_prefix(n) for n in names)
    try:
        stale = [f for f in folder.iterdir() if f.name.endswith(".tmp") and f.name.startswith(prefixes)
                 and f.is_file() and not f.is_symlink()]
    except OSError:
        return []
    for f in stale:
        f.unlink(missing_ok=True)
    return stale


def _short(name: str, limit: int = 80) -> str:
    """``name`` cut to at most ``limit`` bytes of UTF-8 (a temporary file's prefix)."""
    raw = name.encode("utf-8", "surrogateescape")[:limit]
    return raw.decode("utf-8", "ignore") or "tmp"


def _about(exc: OSError, path: Path) -> OSError:
    """``exc`` as an OSError of the same kind naming ``path`` (a full disk's error from write() names no file)."""
    return type(exc)(exc.errno, exc.strerror or str(exc), str(path))


def write_dicom(path: str | Path, ds: Any) -> Path:
    """A pydicom data set (with its file meta) written to ``path`` atomically, as a DICOM file."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return atomic_write_bytes(path, buf.getvalue())


class _UsageValueError(UsageError, ValueError):
    """A bad array given to a writer: hemseg's UsageError, and the ValueError earlier versions raised."""


def write_png(path: str | Path, array_u8: np.ndarray) -> Path:
    """Write an (H, W) gray or (H, W, 3) BGR uint8 image as PNG."""
    arr = np.asarray(array_u8)
    if arr.dtype != np.uint8:
        raise _UsageValueError(f"write_png needs uint8 data, got {arr.dtype}")
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))) or arr.size == 0:
        raise _UsageValueError(f"write_png needs a non-empty (H, W) or (H, W, 3|4) array, got shape {arr.shape}")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr))
    if not ok:
        raise ValueError(f"OpenCV could not encode an array of shape {arr.shape} as PNG")
    return atomic_write_bytes(path, buf.tobytes())


def write_mask_png(path: str | Path, mask01: np.ndarray) -> Path:
    """Write an (H, W) mask with values {0, 1} (or bool) as a 0/255 PNG."""
    mask = np.asarray(mask01)
    if mask.ndim != 2 or mask.size == 0:
        raise _UsageValueError(f"write_mask_png needs a non-empty (H, W) mask, got shape {mask.shape}")
    if mask.dtype != np.bool_ and not np.isin(mask, (0, 1)).all():
        raise _UsageValueError("write_mask_png needs a {0, 1} mask")
    return write_png(path, mask.astype(np.uint8) * np.uint8(255))


def nifti_layout(slices: np.ndarray, like: ImageVolume) -> np.ndarray:
    """(N, H, W) slices -> the array layout of ``like``'s NIfTI file: turned back from the display orientation
    (``like.inplane``), stacked back along ``like.slice_axis``, and for a NIfTI input reshaped to its header's shape
    (a trailing 4th dimension of 1, or a 2D image)."""
    volume = np.moveaxis(like.inplane.undo(np.asarray(slices)), 0, like.slice_axis)
    if like.header is not None:
        shape = tuple(int(s) for s in like.header.get_data_shape())
        if int(np.prod(shape)) == volume.size and shape != volume.shape:
            volume = volume.reshape(shape)
    return volume


def is_orthogonal(affine: np.ndarray, tol: float = 1e-4) -> bool:
    """Whether the voxel axes of a 4x4 affine are perpendicular (no shear), which a NIfTI qform needs."""
    axes = np.asarray(affine, dtype=np.float64)[:3, :3]
    axes = axes / np.linalg.norm(axes, axis=0)
    gram = axes.T @ axes
    return bool(np.max(np.abs(gram - np.eye(3))) < tol)


def write_nifti_labels(path: str | Path, masks: np.ndarray, like: ImageVolume, geometry_known: bool = True) -> Path:
    """Write (N, H, W) uint8 labels as a NIfTI volume laid out like ``like`` (same affine; same header for NIfTI).

    Slices are stacked back along ``like.slice_axis`` (the inverse of the reader's slicing); the data type is
    uint8, scaling is reset, the intent is NIFTI_INTENT_LABEL and the display range is 0..max label. For a DICOM
    input a fresh NIfTI-1 header is made (qform = sform = the DICOM-derived affine, code 1 "scanner"; a sheared
    affine, slices that step sideways as under a gantry tilt, only in the sform: a qform cannot hold a shear, and a
    qform nearest to it would disagree with the sform by millimetres). ``geometry_known=False``: ``like.affine`` is
    only a layout made up for an input without geometry (PNG, TIFF, NPY, DICOM without position/orientation;
    :func:`hemseg.runtime.predict.nifti_like`): qform and sform codes 0 ("unknown"), the spacing kept in pixdim, so
    that no viewer takes the made-up placement for scanner coordinates; and without a known spacing (a PNG) no
    unit, pixdim 1: a size no reader takes for millimetres (hemseg's reads it as unknown).
    ``path`` must end in ``.nii`` or ``.nii.gz`` (gzip-compressed).
    """
    import nibabel as nib

    path = Path(path)
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        raise ValueError(f"NIfTI label maps need a .nii or .nii.gz name, got {path.name}")
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.shape != like.data.shape:
        raise ValueError(f"labels of shape {masks.shape} do not match the image's {like.data.shape}")
    if masks.dtype.kind not in "bui" or (masks.size and (masks.min() < 0 or masks.max() > 255)):
        raise ValueError("NIfTI labels must be integers in 0..255")
    if like.affine is None or like.slice_axis is None:
        raise InputError(like.path if like.path is not None else IN_MEMORY,
                         f"no spatial geometry is known for this {like.kind} input, so no NIfTI label map can be "
                         "written for it; write PNG masks instead")
    volume = nifti_layout(masks.astype(np.uint8), like)
    # (a NIfTI input's label map keeps the input's header: its unit, qform and sform with their codes)
    if like.header is not None:
        header = like.header.copy()
        image_cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        # in the header's own unit (a file in microns gets a label map in microns): the header's forms and codes kept
        affine = np.array(like.affine, np.float64)
        affine[:3, :] /= like.mm_per_unit
        img = image_cls(volume, affine, header=header)
        # what describes the source's data, not a label map: its extensions (dcm2niix's DICOM header, AFNI's
        # attributes, a comment) and its aux_file (a colour table, a link) were copied (a QA finding of stop 52)
        img.header.extensions.clear()
        img.header["aux_file"] = b""
    else:
        img = nib.Nifti1Image(volume, like.affine)
        # no spacing known (a PNG's made-up 1 mm layout): no unit either, so that no reader takes pixdim for mm
        img.header.set_xyzt_units("mm" if geometry_known or like.spacing is not None else "unknown")
        if not geometry_known:
            img.set_qform(None, code=0)
            img.set_sform(None, code=0)
        elif is_orthogonal(like.affine):
            img.set_qform(like.affine, code=1)
            img.set_sform(like.affine, code=1)
        else:
            img.set_qform(None, code=0)
            img.set_sform(like.affine, code=1)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0, 0.0)
    img.header.set_intent("label")
    img.header["cal_min"] = 0
    img.header["cal_max"] = max(1, int(masks.max()) if masks.size else 1)
    img.header["descrip"] = b"hemseg label map"
    data = img.to_bytes()
    if name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    return atomic_write_bytes(path, data)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return _finite_or_none(obj.tolist())
    if isinstance(obj, np.generic):
        return _finite_or_none(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _finite_or_none(dataclasses.asdict(obj))
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _finite_or_none(obj: Any) -> Any:
    """NaN and +-Inf floats (anywhere in dicts, lists, tuples) -> None: JSON has no NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as standard JSON (indent 2, trailing newline) atomically.

    numpy scalars and arrays, Paths and dataclasses are converted; NaN and +-Inf become ``null`` (standard JSON has
    no NaN; a NaN metric must not crash the end of a run). Anything else unknown raises TypeError before the file
    is touched.
    """
    text = json.dumps(_finite_or_none(obj), indent=2, default=_json_default, allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def file_in_the_way(path: str | Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is a file (so ``path`` cannot be created), else None."""
    ancestor = next((p for p in Path(path).absolute().parents if p.exists()), None)
    return ancestor if ancestor is not None and not ancestor.is_dir() else None


def is_json_with(path: str | Path, keys: set[str]) -> bool:
    """Whether ``path`` holds a JSON object with every key of ``keys`` (an earlier result of one kind)."""
    try:
        doc = json.loads(read_regular_text(Path(path)))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(doc, dict) and keys <= set(doc)


def refuse_replacing(path: str | Path, option: str, earlier, what: str) -> None:
    """UsageError when ``path`` exists and is not an earlier result of this kind (``earlier(path)`` false): a result
    file may replace its own earlier version, never another file (a model, a dataset's mask, another tool's
    result)."""
    from hemseg.errors import UsageError

    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder; give a file name")
    if path.exists() and not earlier(path):
        raise UsageError(f"{option} {path}: exists and is not an earlier {what}; hemseg replaces no other file: "
                         "choose a new name")


def refuse_same_file(named: list[tuple[str, Path | None]]) -> None:
    """UsageError when two of the ``(option, path)`` outputs are one file (the second would replace the first)."""
    from hemseg.errors import UsageError

    seen: dict[Path, str] = {}
    for option, path in named:
        if path is None:
            continue
        key = Path(path).resolve()  # sub/../a.json, a link to a.json: the same file
        if key in seen:
            raise UsageError(f"{seen[key]} and {option} name the same file {path}; give each its own")
        seen[key] = option


def missing_folders(folder: str | Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first: what ``mkdir(parents=True)`` makes."""
    out, path = [], Path(folder).absolute()
    while not path.exists() and path != path.parent:
        out.append(path)
        path = path.parent
    return out


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first, as :func:`missing_folders` lists them) while they are empty folders."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): the folders above it stay too
            break


def writable_folder(folder: str | Path) -> str | None:
    """None when a file can be created in ``folder`` (when it does not exist yet: in its nearest existing ancestor,
    where it would be made), tried with a temporary file that is removed again; else why not."""
    folder = Path(folder).absolute()
    probe_in = folder if folder.is_dir() else next((p for p in folder.parents if p.is_dir()), None)
    if probe_in is None:
        return f"no folder of {folder} exists"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".hemseg-probe.", dir=probe_in)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        return f"cannot write in {probe_in}: {exc.strerror or exc}"
    return None
