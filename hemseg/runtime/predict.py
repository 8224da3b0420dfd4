"""The ``hemseg predict`` job as library code: expand inputs, segment them, write outputs and ``summary.json``.

Outputs, in ``out_dir`` (every file written atomically: a temporary file in ``out_dir``, then ``os.replace``):

- ``<stem>_seg.dcm``, a binary DICOM Segmentation referencing the source images
  (:mod:`hemseg.runtime.io.dicom_seg`; needs the ``[dicom]`` extra), for a DICOM input (file or series folder)
  with ``fmt="auto"`` (the default) or ``fmt="dicom-seg"``; ``"dicom-seg"`` fails a non-DICOM input and a DICOM
  input that lacks an identifier a SEG must reference (Study/Series/FrameOfReference UID ...) or the geometry it
  copies (Image Position / Orientation (Patient), Pixel Spacing), where ``"auto"``
  writes the mask below instead, with a warning and ``dicom_seg_skipped`` in ``summary.json``. Otherwise:
- ``<stem>_rtstruct.dcm`` with ``fmt="dicom-rtstruct"``, an RT Structure Set of one ROI referencing the source
  images (:mod:`hemseg.runtime.io.rtstruct_writer`; pydicom), for DICOM inputs only (others fail);
- ``<stem>_mask.png`` (0/255) for a single-slice input (PNG/JPEG/TIFF/NPY/one-frame DICOM file);
- ``<stem>_mask.nii.gz`` (uint8 0/1 label map) for a NIfTI input (the input's affine and header), a DICOM series
  folder (affine from the DICOM geometry), any other multi-slice input (multi-frame DICOM, multi-page TIFF, 3D
  NPY), and for every input with ``fmt="nifti"`` (``"png"`` and ``"auto"`` differ only for DICOM inputs). An input without geometry (PNG, TIFF, NPY, DICOM without
  position/orientation) gets slices along the third array axis and a diagonal affine of its pixel spacing (1 mm
  when unknown): see :func:`nifti_like`;
- ``<stem>_overlay.png`` with ``overlay=True``: the image with the mask in translucent red and its outline in
  yellow. For a multi-slice input one slice is shown: the slice with a lesion nearest the middle of the stack (the
  middle slice when there is no lesion); ``summary.json`` records which (``overlay_slice``);
- ``<stem>_prob.npy`` with ``save_prob=True``: float16 probabilities in the same array layout as the mask file
  ((H, W) next to a PNG mask or a one-slice SEG; the NIfTI array's own axis order next to a NIfTI mask; (N, H, W)
  in the reader's slice order, ascending position along the normal, next to a multi-slice SEG, whose frames, the
  slices with a lesion only, are matched by their referenced instances instead);
- ``summary.json``: model (with ``export_verification``, the status its ``export_report.json`` records, and the
  ensemble members' in ``ensemble_export_verification``; ``export_verification_gap`` /
  ``ensemble_export_verification_gaps``: why those gates do not cover this run, :func:`hemseg.runtime.verification.verification_gap`), backend, options,
  ``postprocess`` (the clean-up's sizes for the network's S x S input, S = ``postprocess_sizes_at_px``: an H x W
  image is cleaned with radii x sqrt(H W) / S and min_area x H W / S^2, rounded), one entry per input (``status``
  ``"ok"``/``"error"``, ``error``, ``outputs``, ``slices``, ``lesion_area_px``, ``lesion_area_mm2`` when the
  spacing is known, ``lesion_volume_mm3`` when the geometry is known (lesion voxels x the affine's voxel volume;
  per slice x its own thickness for an unevenly spaced DICOM series), ``components``, ``lesion_slices``,
  ``modality`` (DICOM inputs, else null), ``warnings`` (e.g. a DICOM modality other than MR, slice positions a
  NIfTI cannot hold: segmented, logged and listed here), ``timings_ms``), ``totals``, ``outputs_by_input`` (absolute input path -> its outputs in ``out_dir``, this run's and earlier runs'
  still there: how a rerun knows them), ``earlier_outputs`` (files earlier runs into
  ``out_dir`` wrote for inputs this one did not segment: still predict's own, replaced by a later run) and
  ``superseded_outputs_removed`` (an earlier run's outputs of an input this run segmented again that this run did
  not rewrite, such as its ``_prob.npy`` or overlay, or its mask in another format: removed, since they would pair
  with the new mask); ``input_notes``: the warnings said while the inputs were found (sub-folders or files not
  segmented, and why).

Names: ``<stem>`` is the input's file name without its image extension (a series folder's name), accents dropped
(``séance`` -> ``seance``), every other run of characters outside ``A-Z a-z 0-9 . _ -`` replaced by ``_``
(:mod:`hemseg.runtime.io.safe_names`) and leading dots stripped, so no name can leave
``out_dir`` (``..`` becomes ``input``); repeated stems get ``_1``, ``_2``, ... in input order (compared without
case, for case-insensitive file systems).

Inputs are never modified, nor any other file already in ``out_dir``: ``out_dir`` may be an input folder or hold
other files (outputs then sit beside them), but an output name that equals a file already there (an input, a
reference mask ``a_mask.png``, another tool's file) is moved on to the next suffix instead of being written; only
the outputs an earlier ``hemseg predict`` into ``out_dir`` lists in its ``summary.json`` are replaced by a rerun.
``summary.json`` itself replaces only such an earlier summary: another file of that name (an input, another tool's
or the user's) is refused before anything is read.

Errors: a bad input (unreadable, unsupported, too small, NaN, ...) becomes an ``"error"`` entry with a one-line
reason and the job goes on; a bad model, a bad option or an unusable backend raises (nothing is segmented). Inputs
are segmented in groups of about ``batch_size`` slices (``GROUP_BATCHES * batch_size`` when the segmenter pipelines,
``workers > 0``: preprocessing of the next batches overlaps inference of the current one, within a group and across
the files of a group; a volume or DICOM series is one input, pipelined across its slices); if inference itself
fails for a group (e.g. out of GPU memory), every input of that group gets the error and the job goes on with the
next group. Each file is written atomically, and when writing one of an input's files fails (a full disk), the files
already written for that input are removed: an ``"error"`` entry has no output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import errno
import io as _io
import itertools
import json
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Callable, Iterable, Iterator

import cv2
import numpy as np

from hemseg import __version__
from hemseg.errors import HemsegError, InputError, NonFiniteLogits, UsageError, os_error_line
from hemseg.runtime.backends.ensemble import open_ensemble
from hemseg.runtime.backends.select import LoadedModel
from hemseg.runtime.io import find_inputs, read_image, stem_of
from hemseg.runtime.io.dicom_seg import (
    MISSING_MEANS,
    AlgorithmInfo,
    is_dicom_volume,
    missing_references,
    read_headers,
    require_highdicom,
    write_dicom_seg,
)
from hemseg.runtime.io.images import PREDICT_OUTPUT_SUFFIXES, as_input_list
from hemseg.runtime.io.lock import LOCK_NAME, folder_lock
from hemseg.runtime.io.regular import read_regular_text
from hemseg.runtime.io.safe_names import file_safe
from hemseg.runtime.io.volume import ImageVolume
from hemseg.runtime.io.writers import (
    atomic_write_bytes,
    file_mode,
    is_json_with,
    keep_mode,
    nifti_layout,
    write_json,
    write_mask_png,
    write_nifti_labels,
    write_png,
)
from hemseg.runtime.pipeline import CLEANUP, deployment_postprocess  # noqa: F401 (CLEANUP: --postprocess)
from hemseg.runtime.segmenter import STAGES, Prediction, PreparedInput, Segmenter
from hemseg.runtime.verification import threshold_notes, warn_threshold_notes, with_verification

log = logging.getLogger(__name__)

FORMATS = ("auto", "png", "nifti", "dicom-seg", "dicom-rtstruct")
VOLUME_KINDS = ("nifti", "dicom-series")
#: with pipelining, inputs are segmented in groups of about this many batches (so single-slice files overlap too)
GROUP_BATCHES = 4
#: the files written for an input ``<stem>`` (the non-DICOM ones are skipped as inputs: PREDICT_OUTPUT_SUFFIXES)
SUFFIXES = (*PREDICT_OUTPUT_SUFFIXES, "_seg.dcm", "_rtstruct.dcm")


@dataclass
class PredictOptions:
    out_dir: Path
    backend: str = "auto"
    fmt: str = "auto"
    overlay: bool = False
    save_prob: bool = False
    batch_size: int = 8
    postprocess: bool = True
    device: int = 0
    gpu_preprocess: bool | str = "auto"
    workers: int | str = "auto"
    tta: bool = False  #: flip test-time augmentation (:class:`hemseg.runtime.backends.tta.FlipTTARunner`)
    ensemble_with: tuple[str | Path, ...] = ()  #: more models averaged with MODEL (:mod:`~hemseg.runtime.backends.ensemble`)
    threads: int = 0  #: inference threads of a CPU engine (ONNX Runtime, OpenVINO); 0: the engine's default
    #: called just before summary.json is written (the journal and the lock go after it): the run is done from
    #: there (``hemseg predict`` passes its done(): a visible summary.json never comes with exit 130 / 143)
    on_summary: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.out_dir, str) and not self.out_dir.strip():  # Path('') is the current folder
            raise UsageError("PredictOptions.out_dir is empty (an unset variable?); give the output folder")
        if not isinstance(self.out_dir, (str, PurePath)):
            raise UsageError(f"PredictOptions.out_dir must be a folder path, got a {type(self.out_dir).__name__}")
        self.out_dir = Path(self.out_dir)

    def check(self) -> None:
        if self.fmt not in FORMATS:
            raise UsageError(f"unknown output format {self.fmt!r}; choose from {', '.join(FORMATS)}")
        for name in ("overlay", "save_prob", "postprocess", "tta"):  # 'no' would count as true, and be recorded
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"PredictOptions.{name} must be True or False, got {getattr(self, name)!r}")
        if isinstance(self.device, bool) or not isinstance(self.device, int) or self.device < 0:
            raise UsageError(f"PredictOptions.device must be a GPU index (an integer >= 0), got {self.device!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise UsageError(f"PredictOptions.threads must be an integer >= 0 (0: the engine's default), got "
                             f"{self.threads!r}")
        given = self.ensemble_with
        if given is None or isinstance(given, (bytes, bytearray)) or not (
                isinstance(given, PurePath) or hasattr(given, "__iter__")):
            raise UsageError(f"PredictOptions.ensemble_with must be model paths (a sequence, () for none), got "
                             f"{self.ensemble_with!r:.60}")
        self.ensemble_with = tuple(as_input_list(self.ensemble_with))  # one path is one model, not its letters
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UsageError(f"--batch-size must be a positive integer, got {self.batch_size!r}")


@dataclass
class InputReport:
    """What happened to one input; ``error`` is the one-line reason of a failure."""

    path: Path
    status: str = "ok"
    error: str | None = None
    kind: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    traceback: str | None = None
    #: the warnings logged while it was read (content not what its extension says, ...): its summary's ``warnings``
    read_warnings: list[str] = field(default_factory=list)

    def fail(self, exc: BaseException) -> "InputReport":
        self.status = "error"
        if isinstance(exc, InputError) and exc.path == self.path:
            self.error = exc.reason
        elif isinstance(exc, HemsegError):
            self.error = str(exc)
        elif isinstance(exc, OSError):  # 'path: reason', as the command line says it ('OSError: [Errno 28] ...')
            self.error = os_error_line(exc)
        else:
            self.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}".rstrip(": ")
        self.traceback = "".join(traceback.format_exception(exc))
        return self

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"input": str(self.path), "status": self.status, "error": self.error, "kind": self.kind,
                             "outputs": dict(self.outputs)}
        d.update(self.stats)
        d["timings_ms"] = {k: round(v, 3) for k, v in self.timings.items()}
        return d


@dataclass
class PredictResult:
    summary: dict[str, Any]
    reports: list[InputReport]
    summary_path: Path

    @property
    def failed(self) -> list[InputReport]:
        return [r for r in self.reports if r.status != "ok"]

    @property
    def exit_code(self) -> int:
        """0 when every input succeeded, 2 when some failed."""
        return 2 if self.failed else 0


# -- names -------------------------------------------------------------------------------------------------------
def safe_stem(path: str | Path) -> str:
    """A file-name-safe stem for ``path`` (see the module docstring)."""
    path = Path(path)
    if path.name in ("", ".."):  # '.' or '..': the folder's own name (it was 'input')
        path = path.resolve()
    stem = file_safe(stem_of(path) or path.name).lstrip(".")
    stem = stem[:120].strip()
    return stem if stem and set(stem) - {".", "_", "-"} else "input"


class _Namer:
    """Hands out unique stems whose outputs neither collide with each other nor with an input file, nor are the
    outputs an earlier run wrote for another input that still exists (``owners``: output name -> input): of
    ``x/a.png`` and ``y/a.png``, segmented together into ``a_*`` and ``a_1_*``, a rerun of ``y/a.png`` alone takes
    ``a_1`` again instead of replacing ``x/a.png``'s mask. An input that is gone no longer holds its names (a series
    exported into a new temporary folder each time keeps one name), and an input that exists keeps its own (``a_2``
    stays ``a_2`` when ``a`` is freed)."""

    def __init__(self, out_dir: Path, inputs: Iterable[Path], owners: dict[str, Path] | None = None,
                 named: Iterable[Path] = ()):
        self.out_dir = out_dir.resolve()
        self.inputs = {p.resolve() for p in inputs}
        #: the stems of this run's inputs (``named``) whose names need no rewriting: an input whose name is written
        #: in ASCII (``a b.png`` -> ``a_b``) does not take another input's own name (``a_b.png``'s outputs were
        #: ``a_b_1_*`` beside ``a_b_*`` of ``a b.png``, and tools pairing files by name paired them wrongly: a QA
        #: finding of stop 52)
        self.exact = {}
        for p in named:
            if safe_stem(p) == stem_of(p):
                self.exact.setdefault(safe_stem(p).lower(), _resolved(p))
        self.used: set[str] = set()
        self.owners = {n: p for n, p in (owners or {}).items() if os.path.lexists(p)}
        #: each input's earlier stems, indexed once (take() runs per input: scanning every owner each time was
        #: inputs x outputs on a large folder)
        self.stems_of: dict[Path, set[str]] = {}
        for name, p in self.owners.items():
            self.stems_of.setdefault(p, set()).update(name[:-len(s)] for s in SUFFIXES if name.endswith(s))

    def take(self, path: Path, given: Path | None = None) -> str:
        """A stem for the outputs of the input read from ``path`` (``given``: the input as given, when another)."""
        base = safe_stem(path)
        me = _resolved(given if given is not None else path)
        rewritten = base != stem_of(path)
        for stem in itertools.chain(self._own_stems(me, base), (base if n == 0 else f"{base}_{n}"
                                                                 for n in range(100000))):
            if stem.lower() in self.used:
                continue
            if rewritten and self.exact.get(stem.lower(), me) != me:  # another input's own name
                continue
            if any(self.owners.get(stem + s, me) != me for s in SUFFIXES):
                continue
            targets = [(self.out_dir / (stem + s)).resolve() for s in SUFFIXES]
            if any(t in self.inputs or t.parent != self.out_dir for t in targets):
                continue
            self.used.add(stem.lower())
            return stem
        raise UsageError(f"cannot find a free output name for {path}")

    def _own_stems(self, me: Path | None, base: str) -> list[str]:
        """The stems of ``base`` (``base`` or ``base_<n>``) whose outputs an earlier run wrote for ``me``, first
        ``base`` itself, then by number."""
        stems = self.stems_of.get(me, set()) if me is not None else set()
        ours = [s for s in stems if s == base or (s.startswith(base + "_") and s[len(base) + 1:].isdigit())]
        return sorted(ours, key=lambda s: (s != base, int(s[len(base) + 1:]) if s != base else 0))


# -- outputs -----------------------------------------------------------------------------------------------------
def overlay_slice_index(mask: np.ndarray) -> int:
    """The slice of an (N, H, W) mask with a lesion nearest the middle; the middle slice when none has one."""
    n = mask.shape[0]
    mid = (n - 1) // 2
    with_lesion = np.flatnonzero(mask.reshape(n, -1).any(axis=1))
    if with_lesion.size == 0:
        return int(mid)
    return int(with_lesion[np.argmin(np.abs(with_lesion - mid))])


def render_overlay(image_u8: np.ndarray, mask01: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Gray uint8 (H, W) + {0,1} mask -> BGR uint8 (H, W, 3) (OpenCV order, as write_png expects): the mask in
    translucent red, its outline in yellow."""
    bgr = np.repeat(image_u8[..., None], 3, axis=2).astype(np.float32)
    m = mask01.astype(bool)
    bgr[m] = (1.0 - alpha) * bgr[m] + alpha * np.array([0.0, 0.0, 255.0], np.float32)
    out = np.clip(np.rint(bgr), 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(mask01.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (0, 255, 255), 1)
    return out


def _save_npy(path: Path, array: np.ndarray) -> None:
    buf = _io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def nifti_like(vol: ImageVolume) -> ImageVolume:
    """The geometry a NIfTI label map of ``vol`` is written with: the input's own when it has one, else (PNG, TIFF,
    NPY, DICOM without position/orientation) slices along the third axis with a diagonal affine of the in-plane
    spacing (1 mm when unknown) and 1 mm between slices, a layout only: written with ``geometry_known=False``."""
    if vol.affine is not None and vol.slice_axis is not None:
        return vol
    row, col = vol.spacing if vol.spacing is not None else (1.0, 1.0)
    return dataclasses.replace(vol, slice_axis=2, affine=np.diag([float(row), float(col), 1.0, 1.0]), header=None)


def wants_dicom_seg(fmt: str, vol: ImageVolume) -> bool:
    """Whether ``vol`` gets a DICOM SEG: ``"dicom-seg"`` always (non-DICOM inputs then fail), ``"auto"`` for DICOM."""
    return fmt == "dicom-seg" or (fmt == "auto" and is_dicom_volume(vol))


def wants_algorithm(fmt: str, vol: ImageVolume) -> bool:
    """Whether ``vol``'s output names the model (a DICOM SEG or RT Structure Set)."""
    return wants_dicom_seg(fmt, vol) or fmt == "dicom-rtstruct"


def _write_rtstruct(path: Path, mask: np.ndarray, vol: ImageVolume, algorithm: AlgorithmInfo, headers: list,
                    replaces: Path | None = None):
    from hemseg.runtime.io.rtstruct_writer import write_rtstruct  # pydicom only: imported when asked for

    return write_rtstruct(path, mask, vol, algorithm, headers, replaces)


#: DICOM outputs that reference their source: format -> (file suffix and summary key, writer)
DICOM_WRITERS = {"dicom-seg": ("seg", write_dicom_seg), "dicom-rtstruct": ("rtstruct", _write_rtstruct)}


def write_outputs(pred: Prediction, vol: ImageVolume, u8: np.ndarray, stem: str, opts: PredictOptions,
                  algorithm: AlgorithmInfo | None = None) -> tuple[dict[str, str], dict[str, Any]]:
    """Write the files of one input; returns ``(outputs by role, extra summary fields)``.

    ``algorithm`` identifies the model in a DICOM SEG (needed when the input gets one). The files are written into
    a staging folder inside ``--out`` (:data:`STAGE_PREFIX`) and renamed into place together once all are written:
    when one of them fails (a full disk, a name taken by a folder), none is, so an input reported as failed leaves
    no new output behind and keeps an earlier run's outputs whole (a rerun that failed on its overlay had replaced
    the mask, then removed it: the old overlay stayed without a mask)."""
    import shutil
    import tempfile

    out = Path(opts.out_dir)
    outputs: dict[str, str] = {}
    try:
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=out))
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(out)) from None
    try:
        extra = _write_files(pred, vol, u8, stem, opts, algorithm, outputs, stage)
        for name in outputs.values():  # before any rename: one that cannot be made would leave the others half done
            if (out / name).is_dir() and not (out / name).is_symlink():
                raise IsADirectoryError(errno.EISDIR, "a folder has the output's name", str(out / name))
            if (out / name).exists() and not (out / name).is_file():  # a named pipe, a device: not predict's
                raise OSError(errno.EINVAL, "not a regular file (a pipe, socket or device) has the output's name",
                              str(out / name))
        for name in outputs.values():
            keep_mode(out / name, stage / name)
            os.replace(stage / name, out / name)
    except OSError as exc:
        if exc.filename and Path(os.fsdecode(exc.filename)).parent == stage:  # name the file asked for
            raise type(exc)(exc.errno, exc.strerror or str(exc), str(out / Path(os.fsdecode(exc.filename)).name)) \
                from None
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return outputs, extra


#: the folders inside ``--out`` in which :func:`write_outputs` stages one input's files (a killed run's are removed
#: by the next run, under the folder's lock)
STAGE_PREFIX = ".hemseg-stage-"


def _write_files(pred: Prediction, vol: ImageVolume, u8: np.ndarray, stem: str, opts: PredictOptions,
                 algorithm: AlgorithmInfo | None, outputs: dict[str, str], out: Path) -> dict[str, Any]:
    """:func:`write_outputs`' work, into the folder ``out``: each file's name goes into ``outputs`` as soon as it
    is written."""
    extra: dict[str, Any] = {}
    as_seg = wants_dicom_seg(opts.fmt, vol)
    headers = read_headers(vol) if as_seg else None  # read once: for auto's check and for the SEG
    if as_seg and opts.fmt == "auto":
        missing = missing_references(vol, headers)
        if missing:  # auto chooses: a mask the input can carry; --format dicom-seg insists (and fails)
            as_seg = False
            extra["dicom_seg_skipped"] = (f"the input lacks {', '.join(missing)}, which a DICOM SEG needs "
                                          f"({MISSING_MEANS})")
    dicom_out = "dicom-seg" if as_seg else opts.fmt if opts.fmt in DICOM_WRITERS else None
    if dicom_out:
        if algorithm is None:
            raise UsageError(f"{dicom_out} output needs the algorithm identification (AlgorithmInfo)")
        suffix, writer = DICOM_WRITERS[dicom_out]
        name = f"{stem}_{suffix}.dcm"
        try:
            # (numbered after an earlier run's object of the same series, which this one replaces)
            written = writer(out / name, pred.slices, vol, algorithm, headers, Path(opts.out_dir) / name)
        except InputError as exc:
            if opts.fmt != "auto":
                raise
            # what highdicom refuses in headers that hold every attribute (two frames at one position, ...): auto
            # writes the mask the input can carry, as for a missing reference (the SEG is built before any write)
            extra["dicom_seg_skipped"] = exc.reason
            dicom_out = None
        else:
            extra[f"{suffix}_sop_instance_uid"] = str(written.SOPInstanceUID)
    as_nifti = dicom_out is None and (opts.fmt == "nifti" or vol.kind in VOLUME_KINDS or pred.slice_count > 1)
    like = nifti_like(vol) if as_nifti else vol
    if as_nifti and opts.fmt == "png":  # the help says it; the run said nothing (a QA finding of stop 52)
        from hemseg.runtime.io.once import warn_once

        warn_once(log, (str(opts.out_dir), "--format png"), "--format png: %s gets a NIfTI label map (volumes and NIfTI files always do: "
                  "it keeps their geometry)", vol.path)
    if as_nifti:
        name = f"{stem}_mask.nii.gz"
        write_nifti_labels(out / name, pred.slices, like=like, geometry_known=vol.affine is not None)
    elif not dicom_out:
        name = f"{stem}_mask.png"
        write_mask_png(out / name, pred.slices[0])
    outputs["mask"] = name
    if "dicom_seg_skipped" in extra:
        log.warning("%s: no DICOM SEG: %s; wrote %s instead (--format dicom-seg makes this an error)", vol.path,
                    extra["dicom_seg_skipped"], name)
    if opts.overlay:
        k = overlay_slice_index(pred.slices)
        name = f"{stem}_overlay.png"
        write_png(out / name, render_overlay(u8[k], pred.slices[k]))
        outputs["overlay"] = name
        extra["overlay_slice"] = k
    if opts.save_prob and pred.prob is not None:
        prob = pred.prob if pred.prob.ndim == 3 else pred.prob[None]
        if as_nifti:
            prob = nifti_layout(prob, like)  # the label map's own layout
        elif prob.shape[0] == 1:
            prob = prob[0]  # next to a PNG mask or a one-frame SEG; a multi-frame SEG's is (N, H, W), slice order
        name = f"{stem}_prob.npy"
        _save_npy(out / name, prob.astype(np.float16))
        outputs["prob"] = name
    return extra


def lesion_volume_mm3(pred: Prediction, vol: ImageVolume) -> float | None:
    """The lesion volume (mm^3) from the input's geometry (NIfTI, DICOM with geometry), else None: voxels times the
    affine's voxel volume, or, for a DICOM series with uneven slice spacing, each slice's lesion area times that
    slice's own thickness (:attr:`ImageVolume.slice_thickness_mm`; the affine's mean step would be wrong)."""
    if vol.affine is None or not vol.thickness_known:
        return None
    if vol.slice_thickness_mm is not None and vol.spacing is not None:
        per_slice = pred.slices.reshape(pred.slice_count, -1).astype(bool).sum(axis=1)
        return float(per_slice @ np.asarray(vol.slice_thickness_mm) * vol.spacing[0] * vol.spacing[1])
    return pred.lesion_area_px * float(abs(np.linalg.det(np.asarray(vol.affine, dtype=np.float64)[:3, :3])))


def prediction_stats(pred: Prediction, vol: ImageVolume) -> dict[str, Any]:
    """The summary fields of one segmented input (``warnings``: the :class:`Prediction`'s, logged when the input was
    prepared: :func:`hemseg.runtime.segmenter.input_warnings`)."""
    area_mm2 = pred.lesion_area_mm2
    volume = lesion_volume_mm3(pred, vol)
    warnings = list(pred.warnings)
    return {
        "modality": vol.modality,
        "warnings": warnings,
        "slices": pred.slice_count,
        "shape": list(vol.shape),
        "spacing_mm": list(vol.spacing) if vol.spacing is not None else None,
        "lesion_area_px": pred.lesion_area_px,
        "lesion_area_mm2": round(area_mm2, 4) if area_mm2 is not None else None,
        "lesion_volume_mm3": round(volume, 4) if volume is not None else None,
        "components": pred.component_count,
        "lesion_slices": pred.lesion_slices,
    }


# -- the job -----------------------------------------------------------------------------------------------------
def _dicom_inputs_without_seg_writer(opts: PredictOptions, reports: list[InputReport]) -> None:
    """``--format auto`` writes a DICOM SEG for a DICOM input: without highdicom (a runtime-only install) each such
    input fails at once, naming the extra, instead of being segmented and then refused; the others go on."""
    import importlib.util

    if opts.fmt != "auto" or importlib.util.find_spec("highdicom") is not None:
        return
    from hemseg.runtime.io.sniff import is_dicom_file

    for r in reports:
        if r.status != "error" and (r.path.is_dir() or is_dicom_file(r.path)):
            r.fail(InputError(r.path, "a DICOM input, for which --format auto writes a DICOM SEG, which needs "
                                      "highdicom: pip install 'hemseg[dicom]', or choose --format png, nifti or "
                                      "dicom-rtstruct"))


@contextlib.contextmanager
def _warnings_said(logger: str = "hemseg.runtime") -> Iterator[list[str]]:
    """The warnings hemseg's runtime logs in the ``with`` body, as a list filled meanwhile: said while the inputs
    were expanded (sub-folders of images or series not segmented, files in formats hemseg does not read, entries
    that are neither file nor folder), they reached the log only and a headless run's summary.json said nothing
    (a QA finding of stop 53)."""
    said: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())

    handler = _Keep(logging.WARNING)
    logging.getLogger(logger).addHandler(handler)
    try:
        yield said
    finally:
        logging.getLogger(logger).removeHandler(handler)


def _expand(paths: Iterable[str | Path]) -> list[InputReport]:
    """Expand each command-line path on its own (a missing path or an empty folder fails alone), in order.

    Returns one report per input; those of paths that could not be expanded are already failed."""
    out: list[InputReport] = []
    seen: set[Path] = set()
    for raw in paths:
        try:
            expanded = find_inputs([raw])
        except InputError as exc:
            out.append(InputReport(path=Path(raw)).fail(exc))
            continue
        except OSError as exc:  # a path the system refuses (too long, a loop): that input fails, the others go on
            out.append(InputReport(path=Path(raw)).fail(InputError(raw, exc.strerror or str(exc))))
            continue
        for p in expanded:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                out.append(InputReport(path=p))
            else:  # said as a folder's expansion says it (two paths to one file were dropped without a word)
                log.info("%s: given more than once; read once", p)
    _warn_mask_named([r.path for r in out if r.status != "error"])
    return out


def _warn_mask_named(inputs: list[Path]) -> None:
    """One warning when inputs are named as masks of other inputs in their folder (``sub-01_T2w_seg-manual.nii.gz``
    beside ``sub-01_T2w.nii.gz``, ``a_gt.png`` beside ``a.png``: the names a dataset pairs as masks): they are
    segmented as images, which a folder of images and their masks given whole did without a word."""
    from hemseg.runtime.dataset import named_images

    stems: dict[Path, set[str]] = {}
    for p in inputs:
        stems.setdefault(p.parent, set()).add(stem_of(p))
    named = [(p, base) for p in inputs
             if (base := next((b for b in named_images(stem_of(p)) if b in stems[p.parent]), None))]
    if named:
        p, base = named[0]
        log.warning("%d input(s) are named as masks of other inputs beside them (e.g. %s, a mask of %s by its name): "
                    "segmented as images; give the images alone to leave them out", len(named), p, base)


#: hidden in --out while a predict runs: the outputs it (and earlier runs there) wrote, so that a run cut short,
#: which writes no summary.json, leaves them known as predict's own to the next run
JOURNAL = ".hemseg-predict-outputs"


def _own_name(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..")


def _resolved(path: str | Path) -> Path | None:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):  # a symbolic link loop
        return None


def _earlier_summary(out_dir: Path) -> dict:
    """The ``summary.json`` an earlier ``hemseg predict`` left in ``out_dir``, or {} (none, or unreadable; one that
    is not predict's was refused by :func:`check_summary_target`)."""
    try:
        summary = json.loads(read_regular_text(out_dir / "summary.json"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def _earlier_outputs_by_input(summary: dict) -> dict[Path, set[str]]:
    """The outputs earlier ``hemseg predict`` runs into the folder of ``summary`` (:func:`_earlier_summary`) wrote
    for each input (absolute paths) that are still predict's own: the summary's ``outputs_by_input`` (that run's
    inputs and those carried over from earlier runs), or for a summary written before it its ``inputs`` (paths as
    given, resolved here)."""
    by_input: dict[Path, set[str]] = {}
    try:
        recorded = summary.get("outputs_by_input")
        pairs = (recorded.items() if isinstance(recorded, dict) else
                 ((e.get("input"), (e.get("outputs") or {}).values()) for e in summary.get("inputs", [])))
        for given, names in pairs:
            path = _resolved(str(given)) if given else None
            names = {str(n) for n in names if _own_name(str(n))}
            if path is not None and names:
                by_input.setdefault(path, set()).update(names)
    except (AttributeError, TypeError):
        pass  # not laid out as predict's summary
    return by_input


#: a journal line that names one input's outputs: the prefix, then JSON ``[input path, [names]]`` (no output
#: name holds a "/", so no name line starts so)
INPUT_LINE = "/input "


def _journal_owners(path: Path) -> dict[str, Path]:
    """Output name -> input, as the journal of an interrupted run records them (those it carried from the runs
    before it, then its own: a later line wins), empty when there is none."""
    owners: dict[str, Path] = {}
    try:
        lines = read_regular_text(path).splitlines()
    except (OSError, UnicodeDecodeError):
        return owners
    for line in lines:
        if not line.startswith(INPUT_LINE):
            continue
        try:
            given, names = json.loads(line[len(INPUT_LINE):])
            names = {str(n) for n in names if _own_name(str(n))}
        except (ValueError, TypeError):
            continue  # a line cut short by the kill
        p = _resolved(str(given))
        if p is not None:
            owners.update((n, p) for n in names)
    return owners


def _owners(by_input: dict[Path, set[str]]) -> dict[str, Path]:
    """Output name -> the input it was written for."""
    return {n: p for p, names in by_input.items() for n in names}


def _by_owner(owners: dict[str, Path]) -> dict[Path, set[str]]:
    by_input: dict[Path, set[str]] = {}
    for name, path in owners.items():
        by_input.setdefault(path, set()).add(name)
    return by_input


def _outputs_by_input(out_dir: Path, earlier: dict[Path, set[str]], reports: list[InputReport]) -> dict[str, list]:
    """For the summary: each input's outputs (absolute paths), this run's and, for inputs it did not segment (or
    that failed), the earlier ones still in ``out_dir``; what a later rerun removes when it segments one again."""
    written = {n for r in reports for n in (r.outputs or {}).values()}
    now = {str(p): sorted(set(r.outputs.values())) for r in reports if r.outputs and (p := _resolved(r.path))}
    carried = {str(p): sorted(n for n in names if n not in written and (out_dir / n).is_file())
               for p, names in earlier.items() if str(p) not in now}
    return {**{k: v for k, v in carried.items() if v}, **now}


def _remove_superseded(out_dir: Path, by_input: dict[Path, set[str]], reports: list[InputReport],
                       inherited: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Remove the earlier outputs of the inputs this run segmented again that this run did not rewrite: an earlier
    run's probabilities, overlay, or mask in another format would sit beside the new mask as if they were its
    (``a_prob.npy`` of another model beside a new ``a_mask.png``). Called for each input as soon as its outputs are
    written, so that a run killed later leaves none beside a new mask. ``inherited``: outputs of inputs that are
    gone under the names a report's input took over (a series exported into a new temporary folder each time: the
    old folder's overlay must not stay beside the new mask). Returns the names removed."""
    written = {n for r in reports for n in (r.outputs or {}).values()}
    removed = []
    for report in reports:
        if report.status != "ok":
            continue  # an input that failed this time keeps its earlier outputs
        for name in sorted((by_input.get(_resolved(report.path), set()) | set(inherited)) - written):
            try:
                (out_dir / name).unlink()
                removed.append(name)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("%s: an earlier run's output of %s, not replaced by this run, could not be removed "
                            "(%s)", out_dir / name, report.path, exc.strerror or exc)
    return removed


def _inputs_in(out_dir: Path, reports: list[InputReport]) -> set[str]:
    """The names in ``out_dir`` of the files this run reads as inputs: an earlier run's output given as an input
    is one no longer, neither replaced nor removed as superseded (``a_mask.png`` given beside ``a.png`` was deleted
    once ``a.png``'s new mask was written, exit 0: QA, stop 59)."""
    here = _resolved(out_dir)
    names = set()
    for r in reports:
        p = _resolved(r.path)
        if here is not None and p is not None and p.parent == here:
            names.add(p.name)
    return names


def _earlier_outputs(out_dir: Path, summary: dict) -> set[str]:
    """The outputs an earlier ``hemseg predict`` into ``out_dir`` wrote: listed in its ``summary.json`` (``summary``,
    :func:`_earlier_summary`), or in the journal of a run that was interrupted before writing one."""
    names: set[str] = set()
    try:
        for entry in summary.get("inputs", []):
            names.update(str(v) for v in (entry.get("outputs") or {}).values())
        names.update(str(v) for v in summary.get("earlier_outputs", []))
    except (AttributeError, TypeError):
        pass  # not laid out as predict's summary
    try:
        names.update(line for line in read_regular_text(out_dir / JOURNAL).splitlines() if line)
    except (OSError, UnicodeDecodeError):
        pass
    return {n for n in names if _own_name(n)}


def _kept_files(out_dir: Path, earlier: set[str]) -> list[Path]:
    """The files already in ``out_dir`` that this run must not replace: all of them (an input, a reference mask
    ``a_mask.png``, another tool's file) except ``earlier``, the outputs of an earlier ``hemseg predict`` there,
    which a rerun replaces (:func:`_earlier_outputs`), and predict's own summary, journal and lock."""
    if not out_dir.is_dir():
        return []
    own = earlier | {"summary.json", JOURNAL, LOCK_NAME}
    return [f for f in out_dir.iterdir() if f.name not in own and (f.is_file() or f.is_symlink())]


def _names_of(stem: str, opts: PredictOptions) -> list[str]:
    """The files an input of ``stem`` may get: its mask in each format the run may choose, and the overlay and
    probabilities when asked for. The :class:`_Namer` gave ``stem`` only where none of them is another's file."""
    optional = {"_overlay.png": opts.overlay, "_prob.npy": opts.save_prob}
    return [stem + s for s in SUFFIXES if optional.get(s, True)]


def _remove_stale_temps(out_dir: Path, earlier: set[str]) -> None:
    """Remove the temporary files (``.<name>.<random>.tmp``, :func:`atomic_write_bytes`) and staging folders
    (:data:`STAGE_PREFIX`) that a killed run left for its outputs, summary or journal; under the folder's lock, so
    no running predict owns them."""
    import shutil

    from hemseg.runtime.io.writers import remove_stale_temps

    stale = remove_stale_temps(out_dir, earlier | {"summary.json", JOURNAL})
    staging = [f for f in out_dir.iterdir() if f.name.startswith(STAGE_PREFIX) and f.is_dir() and not f.is_symlink()]
    for f in staging:
        shutil.rmtree(f, ignore_errors=True)
    stale += staging
    if stale:
        log.info("%s: removed %d temporary file(s) of an interrupted run (e.g. %s)", out_dir, len(stale), stale[0].name)


#: the journal line that carries the earlier summary.json's permissions
SUMMARY_MODE_LINE = "/summary-mode "


def _journal_summary_mode(path: Path) -> int | None:
    """The summary permissions an interrupted run's journal carries, None when it has none (or there is none)."""
    try:
        lines = read_regular_text(path).splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        if line.startswith(SUMMARY_MODE_LINE):
            try:
                return int(line[len(SUMMARY_MODE_LINE):], 8) & 0o7777
            except ValueError:
                return None
    return None


class _Journal:
    """``out_dir/JOURNAL`` for one run: it starts with the earlier runs' outputs (whose ``summary.json`` goes: it
    no longer describes the folder once this run writes), gets each input's outputs as they are written, and is
    removed once this run's ``summary.json`` is written."""

    def __init__(self, out_dir: Path, earlier: set[str], by_input: dict[Path, set[str]]):
        self.path = out_dir / JOURNAL
        self.earlier = sorted(earlier)
        #: the earlier summary's permissions, which this run's takes (it goes now, so the writer cannot see them);
        #: the journal keeps them (a line no output name can be: names hold no "/") for a run after this one breaks
        self.summary_mode = file_mode(out_dir / "summary.json")
        if self.summary_mode is None:
            self.summary_mode = _journal_summary_mode(self.path)
        head = "" if self.summary_mode is None else f"{SUMMARY_MODE_LINE}{self.summary_mode:o}\n"
        # which input each earlier output is of: the summary that says it goes now
        inputs = "".join(self._input_line(p, names) for p, names in by_input.items())
        atomic_write_bytes(self.path, (head + "".join(f"{n}\n" for n in self.earlier) + inputs).encode())
        (out_dir / "summary.json").unlink(missing_ok=True)

    def still_there(self, written: set[str]) -> list[str]:
        """Earlier runs' outputs this run did not rewrite that are still in the folder (``earlier_outputs`` of the
        summary: a later run still knows them as predict's, e.g. the overlays of a run with --overlay)."""
        return [n for n in self.earlier if n not in written and (self.path.parent / n).is_file()]

    @staticmethod
    def _input_line(path: Path, names: Iterable[str]) -> str:
        return INPUT_LINE + json.dumps([str(path), sorted(names)]) + "\n"

    def add(self, names: Iterable[str], given: Path) -> None:
        """Record ``names`` as the outputs about to be written for the input ``given``."""
        names = list(names)
        p = _resolved(given)
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write("".join(f"{n}\n" for n in names) + (self._input_line(p, names) if p is not None else ""))
                fh.flush()
        except OSError as exc:  # a full disk's write error names no file (QA, stop 53)
            if exc.filename is not None:
                raise
            raise OSError(exc.errno, exc.strerror or str(exc), str(self.path)) from None

    def done(self) -> None:
        self.path.unlink(missing_ok=True)


def check_summary_target(out_dir: Path, inputs: Iterable[Path]) -> None:
    """UsageError when ``out_dir/summary.json`` is not an earlier ``hemseg predict`` summary (which a rerun
    replaces): an input, or another tool's or the user's file, is never replaced."""
    path = out_dir / "summary.json"
    if not path.exists():
        return
    if path.is_dir():
        raise UsageError(f"{path} is a folder; hemseg predict writes its summary there: choose another --out")
    if any(_resolved(p) == path.resolve() for p in inputs):  # a link loop resolves to None: refused when read
        raise UsageError(f"{path} is an input; hemseg predict writes its summary.json into --out: choose another --out")
    if not is_json_with(path, {"inputs", "totals", "model"}):
        raise UsageError(f"{path} is not a hemseg predict summary (another tool's or your file), which this run would "
                         "replace: choose another --out or move it")


def _warn_if_inside_inputs(out_dir: Path, raw_inputs: Iterable[str | Path]) -> None:
    out = out_dir.resolve()
    for raw in raw_inputs:
        p = Path(raw)
        try:
            is_dir = p.is_dir()
        except OSError:  # a path the system refuses (too long): that input fails when it is expanded
            continue
        if is_dir and (out == p.resolve() or p.resolve() in out.parents):
            log.info("outputs go inside the input folder %s; re-running on it skips them (files named as outputs of "
                     "its images)", p)


def open_segmenter(model: str | Path, opts: PredictOptions) -> tuple[LoadedModel, Segmenter]:
    """The model and its :class:`Segmenter` with ``hemseg predict``'s post-processing (:data:`CLEANUP` scaled to
    the model, or threshold only without ``opts.postprocess``). Close the Segmenter when done."""
    loaded = with_verification(open_ensemble(model, opts.ensemble_with, opts.backend, opts.device, opts.threads))
    warn_threshold_notes(loaded)
    if opts.tta:
        from hemseg.runtime.backends.tta import FlipTTARunner

        loaded = dataclasses.replace(loaded, runner=FlipTTARunner(loaded.runner))
    try:
        config = deployment_postprocess(loaded.metadata.image_size, loaded.metadata.threshold, opts.postprocess)
        return loaded, Segmenter(loaded, config, opts.gpu_preprocess, opts.device, opts.batch_size, opts.workers)
    except BaseException:
        loaded.runner.close()
        raise


class _LazyAlgorithm:
    """The model's :class:`AlgorithmInfo`, hashed on first use (only DICOM SEG outputs need it)."""

    def __init__(self, loaded: LoadedModel, opts: PredictOptions, before: dict):
        self.loaded = loaded
        self.opts = opts
        self._info: AlgorithmInfo | None = None
        # the model files as they were before they were loaded (``before``: versions_under the model paths): the
        # hash, taken later, must be of these versions (an export into the folder while predict ran put another
        # model's hash into the SEGs); a file not there before cannot be vouched for
        paths = [Path(loaded.path), *getattr(loaded, "members", ())]
        self.versions = [before.get(str(p.absolute()), (-1, -1, -1, -1)) for p in paths]

    def get(self) -> AlgorithmInfo:
        if self._info is None:
            self._info = AlgorithmInfo.for_model(self.loaded, tta=self.opts.tta, postprocess=self.opts.postprocess,
                                                 versions=self.versions)
        return self._info


def run_predict(model: str | Path, inputs: Iterable[str | Path], opts: PredictOptions) -> PredictResult:
    """Run the whole job; see the module docstring. Raises HemsegError for model/option/backend problems."""
    t_start = time.perf_counter()
    if not isinstance(opts, PredictOptions):
        raise UsageError(f"run_predict takes its options as a PredictOptions, got a {type(opts).__name__}")
    opts.check()
    raw_inputs = [Path(p) for p in as_input_list(inputs)]
    if not raw_inputs:
        raise UsageError("no inputs given")
    out_dir = Path(opts.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} exists and is not a directory")
    check_summary_target(out_dir, raw_inputs)
    if opts.fmt == "dicom-seg":
        require_highdicom()  # asked for DICOM SEG everywhere: fail before loading anything
    from hemseg.runtime.io.hashing import versions_under

    before = versions_under([model, *opts.ensemble_with])
    loaded, seg = open_segmenter(model, opts)
    seg_algorithm = _LazyAlgorithm(loaded, opts, before)
    with contextlib.ExitStack() as held:
        held.enter_context(seg)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create --out {out_dir}: {exc.strerror or exc}") from None
        held.enter_context(folder_lock(out_dir, "hemseg predict"))  # one predict per --out, summary included
        check_summary_target(out_dir, raw_inputs)  # again, under the lock
        _warn_if_inside_inputs(out_dir, raw_inputs)
        with _warnings_said() as input_notes:  # what of the inputs is not segmented, and why: summary.json too
            reports = _expand(raw_inputs)
        _dicom_inputs_without_seg_writer(opts, reports)
        # no file already in --out is replaced (an input, a reference a_mask.png, a user's file), except the
        # outputs of an earlier hemseg predict there (listed in its summary.json, or in the journal of one that
        # was interrupted)
        earlier_summary = _earlier_summary(out_dir)  # read once, before the journal replaces it
        earlier = _earlier_outputs(out_dir, earlier_summary) - _inputs_in(out_dir, reports)
        # each input's earlier outputs: from the summary, and from the journal of a run interrupted after it
        # (an interrupted run's journal over the summary of the run before it)
        owners = {**_owners(_earlier_outputs_by_input(earlier_summary)), **_journal_owners(out_dir / JOURNAL)}
        owners = {n: p for n, p in owners.items() if n in earlier}
        earlier_by_input = _by_owner(owners)
        _remove_stale_temps(out_dir, earlier)
        kept = _kept_files(out_dir, earlier)
        journal = _Journal(out_dir, earlier, earlier_by_input)
        namer = _Namer(out_dir, [r.path for r in reports if r.status == "ok" and r.path.is_file()] + kept, owners,
                       named=[r.path for r in reports if r.status == "ok"])
        pending: list[tuple[InputReport, ImageVolume, PreparedInput]] = []
        # pipelining overlaps batches within one group: let a group of single-slice files span several batches
        group_slices = opts.batch_size * (GROUP_BATCHES if seg.workers and seg.gpu is None else 1)
        superseded: list[str] = []

        gone = {n for n, p in owners.items() if not os.path.lexists(p)}  # outputs of inputs that no longer exist

        def written(report: InputReport) -> None:  # an input's outputs are in place: its superseded ones go now
            stems = {v[:-len(s)] for v in (report.outputs or {}).values() for s in SUFFIXES if v.endswith(s)}
            inherited = {st + s for st in stems for s in SUFFIXES} & gone
            superseded.extend(_remove_superseded(out_dir, earlier_by_input, [report], inherited))

        for report in reports:
            if report.status != "ok":
                continue
            path = report.path
            try:
                t0 = time.perf_counter()
                with _warnings_said() as report.read_warnings:  # logged only, not in summary.json (QA, stop 59)
                    vol = read_image(path)
                read_ms = (time.perf_counter() - t0) * 1000.0
                report.kind = vol.kind
                if opts.fmt in DICOM_WRITERS and not is_dicom_volume(vol):
                    raise InputError(path, f"--format {opts.fmt} needs DICOM inputs (a DICOM file or series folder); "
                                           f"this is a {vol.kind} input: use --format auto, png or nifti for it")
                prepared = seg.prepare(vol)
                prepared.read_ms = read_ms
            except Exception as exc:
                report.fail(exc)
                log.debug("%s failed", path, exc_info=True)
                continue
            pending.append((report, vol, prepared))
            if sum(p.u8.shape[0] for _, _, p in pending) >= group_slices:
                _flush(seg, pending, namer, opts, seg_algorithm, journal, written)
        _flush(seg, pending, namer, opts, seg_algorithm, journal, written)
        if superseded:
            log.info("removed %d earlier output(s) of inputs segmented again that this run did not rewrite (e.g. "
                     "%s)", len(superseded), superseded[0])
        summary = build_summary(model, loaded, seg, opts, reports, (time.perf_counter() - t_start) * 1000.0)
        summary["superseded_outputs_removed"] = superseded
        summary["input_notes"] = input_notes
        summary["outputs_by_input"] = _outputs_by_input(out_dir, earlier_by_input, reports)
        summary["earlier_outputs"] = journal.still_there({n for r in reports for n in (r.outputs or {}).values()})
        summary_path = out_dir / "summary.json"
        if opts.on_summary is not None:
            opts.on_summary()
        try:
            write_json(summary_path, summary)
        except Exception:  # a full disk: the inputs that failed are said here, or nowhere (QA, stop 53)
            for report in reports:
                if report.status != "ok":
                    log.error("%s: %s", report.path, report.error)
            raise
        if journal.summary_mode is not None:
            os.chmod(summary_path, journal.summary_mode)
        journal.done()
    return PredictResult(summary=summary, reports=reports, summary_path=summary_path)


def _flush(seg: Segmenter, pending: list, namer: _Namer, opts: PredictOptions, algorithm: _LazyAlgorithm,
           journal: "_Journal", written: Callable[[InputReport], None]) -> None:
    if not pending:
        return
    for (report, vol, prepared), pred in zip(pending, _segment_group(seg, [p for _, _, p in pending], opts)):
        if isinstance(pred, Exception):
            report.fail(pred)
            continue
        try:
            stem = namer.take(vol.path, report.path)
            t0 = time.perf_counter()
            info = algorithm.get() if wants_algorithm(opts.fmt, vol) else None
            # journalled before they are written: a run killed (SIGKILL) between two of an input's renames left
            # files no record called predict's, and the next run wrote <stem>_1_* beside them
            journal.add(_names_of(stem, opts), report.path)
            outputs, extra = write_outputs(pred, vol, prepared.u8, stem, opts, info)
            report.outputs = outputs
            report.stats = {**prediction_stats(pred, vol), **extra}
            report.stats["warnings"] = report.read_warnings + report.stats["warnings"]
            if "dicom_seg_skipped" in extra:  # counted as an input with a warning, as the log says (stop 52)
                report.stats["warnings"].append(f"no DICOM SEG: {extra['dicom_seg_skipped']}; wrote "
                                                f"{outputs['mask']} instead")
            write_ms = (time.perf_counter() - t0) * 1000.0
            report.timings = {**{k: pred.timings[k] for k in STAGES}, "write": write_ms,
                              "total": pred.timings["total"] + write_ms}
        except Exception as exc:
            report.fail(exc)
            log.debug("%s failed", vol.path, exc_info=True)
            continue
        written(report)
    pending.clear()


def _segment_group(seg: Segmenter, prepared: list[PreparedInput], opts: PredictOptions) -> list:
    """Each input's Prediction, or the exception that fails it. Inference failing for the group (e.g. out of memory)
    fails its inputs and the job goes on; a group whose logits are not all finite is run again input by input, so
    that only the inputs whose own logits are not finite fail (one input's overflow failed every input grouped
    with it, each said to have its count: a QA finding of stop 54)."""
    try:
        return seg.run(prepared, return_prob=opts.save_prob)
    except NonFiniteLogits as exc:
        if len(prepared) == 1:
            return [exc]
    except Exception as exc:
        log.debug("inference failed", exc_info=True)
        return [exc] * len(prepared)
    out: list = []
    for p in prepared:
        try:
            out.extend(seg.run([p], return_prob=opts.save_prob))
        except Exception as exc:
            out.append(exc)
    return out


def build_summary(model, loaded, seg: Segmenter, opts: PredictOptions, reports: list[InputReport],
                  wall_ms: float) -> dict[str, Any]:
    meta = loaded.metadata
    ok = [r for r in reports if r.status == "ok"]
    stage_keys = (*STAGES, "write")
    return {
        "hemseg_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "model": {
            "given": str(model), "path": str(loaded.path), "architecture": meta.model, "version": meta.version,
            "precision": meta.precision, "threshold": meta.threshold, "image_size": meta.image_size,
            # false: exported from a checkpoint whose threshold was never tuned (logged only: a QA finding of
            # stop 52); null: an export of an earlier hemseg, which does not say
            "threshold_tuned": meta.threshold_tuned,
            "threshold_notes": threshold_notes(loaded),
            "checkpoint_sha256": meta.checkpoint_sha256, "preprocess": meta.preprocess.to_dict(),
            "ensemble_with": [str(p) for p in loaded.members],
            "export_verification": loaded.verification[0] if loaded.verification else None,
            "ensemble_export_verification": list(loaded.verification[1:]),
            # why the gates behind those statuses do not cover this run's computation (null: they do)
            "export_verification_gap": loaded.verification_gaps[0] if loaded.verification_gaps else None,
            "ensemble_export_verification_gaps": list(loaded.verification_gaps[1:]),
        },
        "backend": loaded.backend,
        "backend_reason": loaded.reason,
        "backend_precision": getattr(loaded.runner, "precision", None),
        "engine_threads": opts.threads or None,  # null: the engine's default
        "preprocess_route": seg.preprocess_route,
        "postprocess": seg.postprocess_config.to_dict(),
        # those pixel sizes are for the network's S x S input: an H x W image is cleaned with radii x sqrt(H W) / S
        # and min_area x H W / S^2, rounded (hemseg.runtime.postprocess.at_size)
        "postprocess_sizes_at_px": loaded.metadata.image_size,
        "options": {"format": opts.fmt, "overlay": opts.overlay, "save_prob": opts.save_prob,
                    "batch_size": opts.batch_size, "postprocess": opts.postprocess, "device": opts.device,
                    "workers": seg.workers, "tta": "flip" if opts.tta else None},
        "inputs": [r.to_dict() for r in reports],
        "totals": {
            "inputs": len(reports), "ok": len(ok), "error": len(reports) - len(ok),
            "slices": int(sum(r.stats.get("slices", 0) for r in ok)),
            "lesion_area_px": int(sum(r.stats.get("lesion_area_px", 0) for r in ok)),
            "inputs_with_lesion": sum(1 for r in ok if r.stats.get("lesion_area_px", 0) > 0),
            "inputs_with_warning": sum(1 for r in ok if r.stats.get("warnings")),
            "timings_ms": {k: round(sum(r.timings.get(k, 0.0) for r in ok), 3) for k in (*stage_keys, "total")},
            "wall_ms": round(wall_ms, 3),
        },
    }
