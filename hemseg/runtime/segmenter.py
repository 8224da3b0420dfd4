"""The runtime's Python API: a model in, images in, masks out.

    seg = Segmenter.from_path("export_dir", backend="auto")
    [pred] = seg(image)                       # one 2D array (uint8, or raw values of any numeric dtype)
    preds = seg([volume_a, volume_b, img])    # ImageVolume(s) and 2D arrays, mixed
    pred.mask                                 # uint8 {0, 1} at the original size

Conventions:

- Input layout: a 2D array gives a ``(H, W)`` mask; an :class:`ImageVolume` gives an ``(N, H, W)`` mask (its slices).
  Other shapes (e.g. a 3D array) are refused: wrap a stack of slices in an ``ImageVolume``. A NIfTI's slices are
  turned into display orientation when read (:mod:`hemseg.runtime.io.display`), so its mask is too:
  :meth:`Prediction.mask_as_stored` gives it in the file's own array layout, :meth:`Prediction.save_nifti` writes it
  on the input's geometry (as ``hemseg predict --format nifti``).
- Intensities: non-uint8 data go through :func:`hemseg.runtime.io.to_uint8` per input (a volume is windowed as a
  whole, like the dataset loader does for training); uint8 is used as is.
- Preprocessing: the CPU reference chain (:func:`hemseg.runtime.preprocess.preprocess`), or
  :class:`hemseg.runtime.cuda.gpu_preprocess.GpuPreprocessor` when the backend runs on a GPU and CuPy is present
  (``gpu_preprocess="auto"``); ``True`` requires it, ``False`` forbids it. The route is logged, never silent. On
  the GPU route the preprocessed batch stays on the device (written in the engine's input dtype) and goes to
  ``runner.infer_device``; its upload counts as ``copy_in``, and the logits' download as ``copy_out``.
- The batch runs through the runtime's one pipeline, :func:`hemseg.runtime.pipeline.run_batch` (the same function
  the bench, the export's parity gates and ``hemseg eval`` use).
- Post-processing: :func:`hemseg.runtime.postprocess.postprocess` on the network's logits resampled (bilinear) to
  the original size (threshold in the logit domain, optional morphology scaled to that size). ``postprocess=None``
  is ``hemseg predict``'s clean-up (:func:`hemseg.runtime.pipeline.deployment_postprocess`) at the model's own
  threshold (metadata), so the API and the CLI give the same masks; ``PostprocessConfig(threshold=t)`` thresholds
  alone; a given :class:`PostprocessConfig` is used exactly as given, threshold included. Its pixel sizes
  (radii, ``min_area``) are pixels at the network's input size (``model.metadata.image_size``), scaled with the
  resampling to each image, not the 256 px image ``hemseg predict --help`` speaks of: predict's clean-up for this
  model is ``deployment_postprocess(model.metadata.image_size, model.metadata.threshold)``
  (:mod:`hemseg.runtime.pipeline`; ``CLEANUP.scaled(size)`` at another threshold).
- ``return_prob=True`` adds the probability map, the sigmoid of those resampled logits (float32; for viewing and
  for ``--save-prob``; without clean-up the mask is ``prob > threshold``, up to the sigmoid's rounding).
- Batching: slices of all inputs of one call are run in batches of ``batch_size``. ``Prediction.timings`` (ms):
  ``read`` (from :meth:`Segmenter.prepare` of a path; 0 for arrays), ``preprocess`` (intensity mapping + filter
  chain), ``copy_in``/``infer``/``copy_out`` (the backend's stage times), ``postprocess``; stages measured per batch
  are shared among the inputs in that batch in proportion to their slices. ``total`` is the sum of the stages.
- Pipelining (series throughput): with ``workers > 0`` and more than one batch in a call, the CPU preprocessing of
  the next batches (up to :data:`PREFETCH_BATCHES` ahead) and the post-processing of finished ones run on a pool of
  ``workers`` threads while the backend infers the current batch (OpenCV and the engines release the GIL), so a
  series runs at about the pace of its slower stage instead of the sum of all. Inference itself stays on the calling
  thread, one batch at a time, in order. The steps are the pipeline's own (:func:`hemseg.runtime.pipeline.
  preprocess_slice`, :func:`~hemseg.runtime.pipeline.infer_host`, :func:`~hemseg.runtime.pipeline.postprocess_slice`,
  which :func:`~hemseg.runtime.pipeline.run_batch` is made of), so results are identical to the sequential route
  (tested); only the timings differ: each stage is still timed where it runs, so ``total`` (their sum) then exceeds
  the wall time. ``workers="auto"`` uses :func:`default_workers`; ``0`` is strictly sequential. The GPU
  preprocessing route is always sequential.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from hemseg.errors import BackendUnavailable, DependencyError, InputError, UsageError
from hemseg.runtime.backends.base import Runner, now_ms
from hemseg.runtime.backends.select import LoadedModel, open_model
from hemseg.runtime.cpu_features import usable_cpus
from hemseg.runtime.io import ImageVolume, read_image, to_uint8
from hemseg.runtime.io.intensity import is_blank
from hemseg.runtime.io.limits import check_dims
from hemseg.runtime.io.volume import IN_MEMORY
from hemseg.runtime.io.writers import nifti_layout, write_nifti_labels
from hemseg.runtime.model_meta import ModelMetadata
from hemseg.runtime.pipeline import Pipeline, deployment_postprocess, infer_host, postprocess_slice, preprocess_slice
from hemseg.runtime.postprocess import PostprocessConfig, components
from hemseg.runtime.verification import warn_threshold_notes, with_verification

log = logging.getLogger(__name__)

STAGES = ("read", "preprocess", "copy_in", "infer", "copy_out", "postprocess")
#: batches whose preprocessing may be queued ahead of the batch being inferred
PREFETCH_BATCHES = 2
#: upper bound of the default worker count
MAX_DEFAULT_WORKERS = 4
#: how an array input is named in errors (it has no file)
ARRAY = IN_MEMORY


def default_workers() -> int:
    """Preprocessing threads for ``workers="auto"``: the CPUs this process may use, at most
    :data:`MAX_DEFAULT_WORKERS`; 0 (sequential) on a single CPU."""
    usable = usable_cpus()
    return 0 if usable < 2 else min(usable, MAX_DEFAULT_WORKERS)


#: the DICOM modality hemseg's models are trained for; images of another are segmented, with a warning
MODEL_MODALITY = "MR"


def input_warnings(image: ImageVolume | np.ndarray) -> list[str]:
    """What the user should know about an input that is segmented anyway: a DICOM image of another modality than
    MR (a CT or ultrasound image read by a model trained on MR slices gives a mask, but not a meaningful one); an
    image whose every pixel has one value (a blank export, a failed reconstruction: its empty mask says nothing
    about the patient); slice positions that a NIfTI affine cannot hold (:attr:`ImageVolume.geometry_warnings`)."""
    vol = image if isinstance(image, ImageVolume) else None
    warnings = list(vol.geometry_warnings) if vol is not None else []
    if vol is not None and vol.modality is not None and vol.modality != MODEL_MODALITY:
        warnings.append(f"DICOM modality {vol.modality}, not {MODEL_MODALITY}: the model was trained on MR images, "
                        "so this mask is not a meaningful segmentation")
    data = vol.data if vol is not None else image
    if is_blank(data):
        warnings.append(f"every pixel has the value {data.flat[0]:g}: a blank image, nothing to segment")
    return warnings


@dataclass
class Prediction:
    """One input's result. ``mask``: uint8 {0, 1}, ``(H, W)`` for a 2D array, ``(N, H, W)`` for an ImageVolume."""

    mask: np.ndarray
    prob: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    source: Path | None = None
    spacing: tuple[float, float] | None = None
    #: what to know about the input, segmented anyway (:func:`input_warnings`; each is logged when it is prepared)
    warnings: tuple[str, ...] = ()
    #: the input's geometry, for an ImageVolume or a path (its pixel data not kept): how the slices map back to the
    #: file (``slice_axis``, ``affine``, ``inplane``, ...); None for a 2D array
    volume: ImageVolume | None = None

    def mask_as_stored(self) -> np.ndarray:
        """The mask laid out as the input's array: a NIfTI's own (X, Y, Z) array, turned back from the display
        orientation the slices were segmented in; a DICOM series' (rows, columns, slices); else :attr:`mask` as is
        (a PNG, NPY or 2D array is segmented as stored). A NIfTI's ``pred.mask`` is in display orientation, so
        ``np.moveaxis(pred.mask, 0, -1)`` is not the file's layout (QA, stop 57)."""
        if self.volume is None or self.volume.slice_axis is None:
            return self.mask
        return nifti_layout(self.slices, self.volume)

    def save_nifti(self, path: str | Path) -> Path:
        """Write the mask as a NIfTI label map on the input's geometry (its affine and, for a NIfTI input, its header),
        atomically, as ``hemseg predict --format nifti`` does. An input without geometry (a PNG, an array) is an
        InputError naming it (the writer's, for a volume); ``path`` that is the input itself is refused."""
        if self.volume is None:  # a single 2D image: the writer has no volume to lay the mask out on
            raise InputError(self.source if self.source is not None else ARRAY,
                             "no spatial geometry is known for a single 2D image, so no NIfTI label map can be "
                             "written for it; write a PNG mask instead")
        target = Path(path)
        for source in (self.source, *(self.volume.sources or ())):
            if source is not None and target.exists() and Path(source).exists() and target.samefile(source):
                raise UsageError(f"{target} is the input itself: write the mask under another name")
        return write_nifti_labels(target, self.slices, self.volume)

    @property
    def slices(self) -> np.ndarray:
        """The mask as ``(N, H, W)``."""
        return self.mask if self.mask.ndim == 3 else self.mask[None]

    @property
    def slice_count(self) -> int:
        return int(self.slices.shape[0])

    @property
    def lesion_area_px(self) -> int:
        return int(np.count_nonzero(self.mask))

    @property
    def lesion_area_mm2(self) -> float | None:
        """Foreground area in mm^2 (summed over slices) when the in-plane spacing is known."""
        if self.spacing is None:
            return None
        return float(self.lesion_area_px * self.spacing[0] * self.spacing[1])

    @property
    def component_count(self) -> int:
        """8-connected components, counted per slice and summed (a lesion spanning 3 slices counts 3 times)."""
        return int(sum(components(s)[0] for s in self.slices))

    @property
    def lesion_slices(self) -> list[int]:
        """Indices of the slices with any foreground."""
        return [int(i) for i in np.flatnonzero(self.slices.reshape(self.slice_count, -1).any(axis=1))]


@dataclass
class PreparedInput:
    """An input checked and mapped to uint8 ``(N, H, W)`` (see :meth:`Segmenter.prepare`)."""

    u8: np.ndarray
    is_volume: bool
    source: Path | None
    spacing: tuple[float, float] | None
    read_ms: float = 0.0
    prep_ms: float = 0.0
    warnings: tuple[str, ...] = ()
    volume: ImageVolume | None = None


def _whole(value) -> int | None:
    """``value`` as an int when it is a whole number (int or numpy integer, not bool: a plugin's settings arrive
    as numpy values), else None."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        return None
    return int(value)


def _name(source: Path | None) -> str:
    return str(source) if source is not None else ARRAY


def _checked_spacing(source: Path, spacing) -> tuple[float, float] | None:
    """An ImageVolume's pixel spacing as (row mm, column mm), or None: InputError for anything else (NaN, negative,
    one value, text), which gave NaN, negative or failing lesion areas after the segmentation had run."""
    if spacing is None:
        return None
    try:
        if isinstance(spacing, (str, bytes)) or any(isinstance(v, (bool, np.bool_, str, bytes)) for v in spacing):
            raise TypeError  # '12' was (1.0, 2.0), (True, True) 1 mm
        row, col = (float(v) for v in spacing)
    except (TypeError, ValueError):
        raise InputError(source, f"pixel spacing must be (row mm, column mm) or None, got {spacing!r}") from None
    if not (np.isfinite(row) and np.isfinite(col) and row > 0 and col > 0):
        raise InputError(source, f"pixel spacing must be two finite numbers > 0 (mm), got {spacing!r}")
    return row, col


class Segmenter:
    """A loaded model plus its preprocessing and post-processing. Create with :meth:`from_path`."""

    def __init__(self, model: LoadedModel, postprocess_config: PostprocessConfig | None = None,
                 gpu_preprocess: bool | str = "auto", device: int = 0, batch_size: int = 8,
                 workers: int | str = "auto"):
        if not isinstance(model, LoadedModel):
            raise UsageError(f"Segmenter takes an opened model (a LoadedModel); for a model file use "
                             f"Segmenter.from_path(...), got a {type(model).__name__}")
        given = batch_size
        batch_size = _whole(batch_size)
        if batch_size is None or batch_size < 1:
            raise UsageError(f"batch size must be a positive integer, got {given!r}")
        given = workers
        workers = default_workers() if isinstance(workers, str) and workers == "auto" else _whole(workers)
        if workers is None or workers < 0:
            raise UsageError(f"workers must be 'auto' or an integer >= 0, got {given!r}")
        self.workers = workers
        self.model = model
        self.runner: Runner = model.runner
        self.metadata: ModelMetadata = model.metadata
        self.spec = model.metadata.preprocess
        if postprocess_config is not None and not isinstance(postprocess_config, PostprocessConfig):
            raise UsageError(f"postprocess must be a PostprocessConfig or None, got a "
                             f"{type(postprocess_config).__name__} (PostprocessConfig.from_dict reads a dict)")
        self.postprocess_config = postprocess_config or deployment_postprocess(model.metadata.image_size,
                                                                               model.metadata.threshold)
        self.batch_size = batch_size
        self.device = device
        self.gpu = self._gpu_preprocessor(gpu_preprocess)
        self.pipeline = Pipeline(self.runner, self.spec, self.postprocess_config, self.gpu, batch_size)
        log.info("preprocessing on %s (%s backend)", "GPU (CuPy kernels)" if self.gpu else "CPU (OpenCV reference)",
                 model.backend)

    @classmethod
    def from_path(cls, model: str | Path, backend: str = "auto", device: int = 0,
                  postprocess: PostprocessConfig | None = None, gpu_preprocess: bool | str = "auto",
                  batch_size: int = 8, workers: int | str = "auto", threads: int = 0) -> "Segmenter":
        """``threads`` > 0: that many inference threads for a CPU engine (ONNX Runtime, OpenVINO), to keep it off a
        workstation's other cores; 0: the engine's default (every core)."""
        index = _whole(device)
        if index is None or index < 0:
            raise UsageError(f"device must be a GPU index (an integer >= 0), got {device!r}")
        count = _whole(threads)
        if count is None or count < 0:
            raise UsageError(f"threads must be an integer >= 0 (0: the engine's default), got {threads!r}")
        loaded = open_model(model, backend, index, count)
        try:
            loaded = with_verification(loaded)  # warned of as by hemseg predict: a verdict that does not vouch for this run
            warn_threshold_notes(loaded)
            return cls(loaded, postprocess, gpu_preprocess, device, batch_size, workers)
        except BaseException:
            loaded.runner.close()
            raise

    @property
    def backend(self) -> str:
        return self.model.backend

    @property
    def preprocess_route(self) -> str:
        return "gpu" if self.gpu is not None else "cpu"

    def _gpu_preprocessor(self, mode: bool | str):
        if mode not in (True, False, "auto"):
            raise UsageError(f"gpu_preprocess must be True, False or 'auto', got {mode!r}")
        if mode is False:
            return None
        if not self.runner.on_gpu:
            if mode is True:
                raise BackendUnavailable(f"GPU preprocessing needs a GPU backend; {self.backend} runs on the CPU")
            return None
        try:
            from hemseg.runtime.cuda.gpu_preprocess import GpuPreprocessor

            return GpuPreprocessor(self.spec, self.device)
        except (ImportError, DependencyError, BackendUnavailable) as exc:
            if mode is True:
                raise BackendUnavailable(f"GPU preprocessing unavailable: {exc}") from None
            log.warning("GPU preprocessing unavailable (%s); preprocessing on the CPU", exc)
            return None

    # -- inputs --------------------------------------------------------------------------------------------------
    def prepare(self, image: np.ndarray | ImageVolume | str | Path) -> PreparedInput:
        """Read (for a path), check and map one input to uint8. Raises InputError (with a path) or UsageError."""
        read_ms = 0.0
        if isinstance(image, (str, Path)):
            t0 = now_ms()
            image = read_image(image)
            read_ms = now_ms() - t0
        t0 = now_ms()
        if isinstance(image.data if isinstance(image, ImageVolume) else image, np.ma.MaskedArray):
            # its mask was ignored: the data under it segmented
            raise UsageError(f"{'an ImageVolume of ' if isinstance(image, ImageVolume) else ''}a masked array: its "
                             "mask would be ignored; pass its .filled(value) (or .data) to say what the masked "
                             "pixels hold")
        if isinstance(image, ImageVolume):
            # (path None: a volume held in memory, e.g. a viewer's, with its spacing; errors name it <array>)
            if not (image.path is None or isinstance(image.path, (str, Path))):
                raise UsageError("an ImageVolume's path must be a str or Path, or None for a volume in memory, got a "
                                 f"{type(image.path).__name__}")
            if not isinstance(image.data, np.ndarray):
                raise UsageError(f"an ImageVolume's data must be a numpy array (N, H, W), got a "
                                 f"{type(image.data).__name__}")
            source = Path(image.path) if image.path is not None and str(image.path) else None
            data, spacing, is_volume = image.data, image.spacing, True
            if data.ndim != 3 or data.shape[0] < 1:
                raise InputError(source or ARRAY, f"expected (N, H, W) slices, got an array of shape {data.shape}")
            spacing = _checked_spacing(source or Path(ARRAY), spacing)
        elif isinstance(image, np.ndarray):
            if image.dtype.kind in "USO":  # an array of paths: "wrap a stack of slices" was the advice
                raise UsageError(f"an array of {image.dtype} values: pass images as numeric arrays and paths as a "
                                 "list of str or Path")
            if image.ndim == 3 and image.shape[-1] in (3, 4) and image.shape[0] > 4:
                raise UsageError(f"expected a 2D gray image array, got shape {image.shape}, a color image: pass its "
                                 "file path (read as BT.601 luma) or convert it to gray first")
            if image.ndim != 2:
                raise UsageError(f"expected a 2D image array, got shape {image.shape}; wrap a stack of slices in an "
                                 "ImageVolume(path or None, data (N, H, W), kind, spacing (row mm, column mm) or None)")
            data, source, spacing, is_volume = image[None], None, None, False
        else:
            raise UsageError(f"cannot segment a {type(image).__name__}: pass 2D numpy arrays, ImageVolumes or paths")
        h, w = data.shape[1:]
        try:  # the readers' size limits, for arrays too: a file and the same array get the same answer
            check_dims(source if source is not None else ARRAY, h, w, data.shape[0], in_memory=source is None)
        except InputError as exc:
            self._bad(source, exc.reason)
        if data.dtype.kind not in "biuf":
            self._bad(source, f"pixel data of type {data.dtype} are not real numbers")
        u8 = to_uint8(data, source)
        warnings = tuple(input_warnings(image))
        for w in warnings:  # said here, for the API as for hemseg predict and the node (the API said nothing)
            log.warning("%s: %s", source or ARRAY, w)
        # the geometry without the pixels (a zero-stride view of the data's shape: the raw data is not held on to)
        # (its path the source's: None for an ImageVolume held in memory, named <array> in errors, not '.' for '')
        geometry = None if not is_volume else replace(
            image, path=source, data=np.broadcast_to(np.zeros((), np.uint8), data.shape))
        return PreparedInput(u8=np.ascontiguousarray(u8), is_volume=is_volume, source=source, spacing=spacing,
                             read_ms=read_ms, prep_ms=now_ms() - t0, warnings=warnings, volume=geometry)

    @staticmethod
    def _bad(source: Path | None, reason: str):
        if source is not None:
            raise InputError(source, reason)
        raise UsageError(reason)

    # -- running -------------------------------------------------------------------------------------------------
    def __call__(self, images, return_prob: bool = False) -> list[Prediction]:
        """One input (2D array, ImageVolume or path) or a list of them -> one :class:`Prediction` each."""
        if isinstance(images, (np.ndarray, ImageVolume, str, Path)):
            items: Sequence = [images]
        elif isinstance(images, (bytes, bytearray, memoryview, dict, set, frozenset)) or not hasattr(images, "__iter__"):
            # a dict was segmented by its keys, a set in no stated order
            # None, a number, raw bytes: say what is accepted (a bare TypeError came from list() before)
            raise UsageError(f"cannot segment a {type(images).__name__}: pass a 2D numpy array, an ImageVolume, a "
                             "path, or a sequence of them")
        else:
            items = list(images)
            if items and all(isinstance(i, (list, tuple)) for i in items):  # was "input 1 of 96: cannot segment a list"
                raise UsageError(f"cannot segment a {type(images).__name__} of {type(items[0]).__name__}s (the rows of "
                                 "an image?): pass np.asarray(rows) as one 2D array, or a list of 2D arrays, "
                                 "ImageVolumes or paths")
        prepared = []
        for k, item in enumerate(items):
            try:
                prepared.append(self.prepare(item))
            except (UsageError, InputError) as exc:
                if len(items) == 1 or (isinstance(exc, InputError) and str(exc.path) != ARRAY):
                    raise  # one input, or a file that names itself
                # which array of the list (in a list of 200 slices the message did not say)
                if isinstance(exc, InputError):
                    raise InputError(f"<array: input {k + 1} of {len(items)}>", exc.reason) from None
                raise UsageError(f"input {k + 1} of {len(items)}: {exc}") from None
        return self.run(prepared, return_prob=return_prob)

    def run(self, prepared: Iterable[PreparedInput], return_prob: bool = False) -> list[Prediction]:
        """Segment inputs already prepared with :meth:`prepare` (lets a caller handle bad inputs one by one)."""
        prepared = list(prepared)
        bad = next((p for p in prepared if not isinstance(p, PreparedInput)), None)
        if bad is not None:
            raise UsageError(f"run() takes what prepare() returns, got a {type(bad).__name__}; call the Segmenter "
                             "itself with arrays, ImageVolumes or paths")
        masks = [np.zeros(p.u8.shape, np.uint8) for p in prepared]
        probs = [np.zeros(p.u8.shape, np.float32) for p in prepared] if return_prob else None
        times = [dict.fromkeys(STAGES, 0.0) for _ in prepared]
        for t, p in zip(times, prepared):
            t["read"], t["preprocess"] = p.read_ms, p.prep_ms
        work = [(i, k) for i, p in enumerate(prepared) for k in range(p.u8.shape[0])]
        batches = [work[start:start + self.batch_size] for start in range(0, len(work), self.batch_size)]
        if self.gpu is None and self.workers > 0 and len(batches) > 1:
            self._run_pipelined(prepared, batches, masks, probs, times)
        else:
            for batch in batches:
                self._run_batch(prepared, batch, masks, probs, times)
        out = []
        for i, p in enumerate(prepared):
            times[i]["total"] = sum(times[i][s] for s in STAGES)
            mask = masks[i] if p.is_volume else masks[i][0]
            prob = None if probs is None else (probs[i] if p.is_volume else probs[i][0])
            out.append(Prediction(mask=mask, prob=prob, timings=times[i], source=p.source, spacing=p.spacing,
                                  warnings=p.warnings, volume=p.volume))
        return out

    def _run_batch(self, prepared, batch, masks, probs, times) -> None:
        """One batch of slices through the runtime's one pipeline (:func:`hemseg.runtime.pipeline.run_batch`)."""
        result = self.pipeline.run([prepared[i].u8[k] for i, k in batch], return_prob=probs is not None)
        for j, (i, k) in enumerate(batch):
            masks[i][k] = result.masks[j]
            if probs is not None:
                probs[i][k] = result.probs[j]
            times[i]["preprocess"] += result.preprocess_ms[j]
            times[i]["postprocess"] += result.postprocess_ms[j]
        self._share(batch, result.stages, times)

    @staticmethod
    def _share(batch, stage_ms: dict[str, float], times) -> None:
        """Engine stage times measured for a whole batch, shared among its inputs in proportion to their slices."""
        share: dict[int, float] = {}
        for i, _ in batch:
            share[i] = share.get(i, 0) + 1.0 / len(batch)
        for i, s in share.items():
            for key in ("copy_in", "infer", "copy_out"):
                times[i][key] += stage_ms[key] * s

    def _run_pipelined(self, prepared, batches, masks, probs, times) -> None:
        """Preprocess ahead and post-process behind on a thread pool while the calling thread infers (module
        docstring). Results and timings are stored on the calling thread only."""
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="hemseg-pre")
        queued: deque[tuple[list, list[Future]]] = deque()
        post: list[tuple[list, list[Future]]] = []
        todo = iter(batches)
        want_prob = probs is not None

        def submit_next() -> None:
            batch = next(todo, None)
            if batch is not None:
                queued.append((batch, [pool.submit(preprocess_slice, prepared[i].u8[k], self.spec)
                                       for i, k in batch]))

        try:
            for _ in range(1 + PREFETCH_BATCHES):
                submit_next()
            while queued:
                batch, futures = queued.popleft()
                done = [f.result() for f in futures]
                submit_next()
                logits = infer_host(self.runner, [x for x, _ in done])
                for (i, _), (_, ms) in zip(batch, done):
                    times[i]["preprocess"] += ms
                self._share(batch, self.runner.last_timings.as_dict(), times)
                post.append((batch, [pool.submit(postprocess_slice, logit, self.postprocess_config,
                                                 prepared[i].u8.shape[1:], want_prob)
                                     for (i, _), logit in zip(batch, logits)]))
            for batch, futures in post:
                for (i, k), f in zip(batch, futures):
                    mask, prob, ms = f.result()
                    masks[i][k] = mask
                    if want_prob:
                        probs[i][k] = prob
                    times[i]["postprocess"] += ms
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
