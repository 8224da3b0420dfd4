"""GPU preprocessing with CuPy: hemseg's preprocessing chain as CUDA kernels, batched and device-resident.

The chain is the one of :mod:`hemseg.runtime.preprocess` (resize INTER_LINEAR -> CLAHE -> non-local means ->
bilateral -> normalize), computed by the kernels in ``preprocess.cu`` with OpenCV's CPU arithmetic
(see :mod:`hemseg.runtime.cuda.reference` for the numpy mirror and ``tests/test_cuda_reference.py`` for how close
it is to OpenCV). Images are uploaded once (one host-to-device copy per distinct input size), stay on the device
between the steps, and the last kernel writes the normalized (N, channels, S, S) float32 or float16 tensor
straight into a caller-given device buffer, e.g. the input binding of a TensorRT engine.

CuPy is optional and imported only when a :class:`GpuPreprocessor` is created; importing this module never needs
it. Missing CuPy raises :class:`~hemseg.errors.DependencyError`, no CUDA device
:class:`~hemseg.errors.BackendUnavailable`; nothing falls back to the CPU silently.

The kernel-launching logic is written against an array module ``xp`` and a ``kernels`` object with
``launch(name, grid, block, args, shared_mem)``; production uses CuPy (:class:`CupyKernels`), and the test suite
drives the very same launches through a CPU emulation of the kernels (``tests/cuda_emu``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from hemseg.errors import BackendUnavailable, DependencyError, UsageError
from hemseg.runtime.cuda.tables import bilateral_tables, clahe_geometry, nlm_tables, resize_axis
from hemseg.runtime.preprocess import PreprocessSpec

log = logging.getLogger(__name__)

CU_SOURCE = Path(__file__).with_name("preprocess.cu")
KERNEL_NAMES = ("resize_linear_u8", "clahe_lut_u8", "clahe_interp_u8", "nlm_u8", "bilateral_u8",
                "normalize_f32", "normalize_f16")
#: NVRTC options; no -use_fast_math (the kernels rely on IEEE float32 arithmetic).
NVRTC_OPTIONS = ("--std=c++14",)

PIXEL_BLOCK = (32, 8, 1)          # resize, CLAHE interpolation
CLAHE_LUT_THREADS = 256
NLM_BLOCK = (16, 16, 1)
BILATERAL_BLOCK = (16, 16, 1)
NORMALIZE_THREADS = 256
MAX_SHARED_BYTES = 48 * 1024      # dynamic shared memory available without opting in
MAX_GRID_YZ = 65535
OUTPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


def kernel_source() -> str:
    """The CUDA C source of the kernels (compiled by NVRTC at run time)."""
    return CU_SOURCE.read_text(encoding="utf-8")


def nlm_shared_bytes(block: tuple[int, int, int], template_half: int, search_half: int) -> int:
    """Dynamic shared memory of ``nlm_u8`` for a block (see the kernel's comment)."""
    bx, by = block[0], block[1]
    border = template_half + search_half
    dw, dh = bx + 2 * template_half, by + 2 * template_half
    return 4 * (dh * dw + by * dw) + (by + 2 * border) * (bx + 2 * border)


def bilateral_shared_bytes(block: tuple[int, int, int], radius: int, maxk: int) -> int:
    """Dynamic shared memory of ``bilateral_u8`` for a block (see the kernel's comment)."""
    bx, by = block[0], block[1]
    return 4 * (256 + 3 * maxk) + (by + 2 * radius) * (bx + 2 * radius)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def import_cupy() -> Any:
    """Import CuPy or raise DependencyError with a one-line message."""
    try:
        import cupy
    except ImportError as exc:
        raise DependencyError(f"GPU preprocessing needs CuPy (pip install 'hemseg[gpu]'): {exc}") from None
    return cupy


class CupyKernels:
    """The kernels of ``preprocess.cu`` compiled with NVRTC through ``cupy.RawModule``."""

    def __init__(self, cupy: Any):
        self._cp = cupy
        self._module = cupy.RawModule(code=kernel_source(), options=NVRTC_OPTIONS)
        try:
            self._functions = {name: self._module.get_function(name) for name in KERNEL_NAMES}
        except Exception as exc:   # cupy.cuda.compiler.CompileException, CUDADriverError, ...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendUnavailable(f"compiling the CUDA preprocessing kernels failed: {first}") from exc
        log.debug("compiled %d CUDA preprocessing kernels with NVRTC %s", len(self._functions), NVRTC_OPTIONS)

    def launch(self, name: str, grid: tuple[int, int, int], block: tuple[int, int, int], args: tuple,
               shared_mem: int = 0) -> None:
        self._functions[name](grid, block, args, shared_mem=shared_mem)


class CudaEventClock:
    """Stage timing with CUDA events on the current stream."""

    def __init__(self, cupy: Any):
        self._cp = cupy

    def mark(self) -> Any:
        event = self._cp.cuda.Event()
        event.record()
        return event

    def finish(self, last: Any) -> None:
        last.synchronize()

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._cp.cuda.get_elapsed_time(start, end))


class HostClock:
    """Stage timing with the host clock (for array modules that run synchronously, e.g. the CPU emulation)."""

    def mark(self) -> float:
        return time.perf_counter()

    def finish(self, last: float) -> None:
        return None

    def elapsed_ms(self, start: float, end: float) -> float:
        return (end - start) * 1000.0


def _device_count(cupy: Any) -> int:
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:   # CUDARuntimeError when there is no driver or no device
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackendUnavailable(f"GPU preprocessing needs a CUDA device, none is usable: {first}") from None


class GpuPreprocessor:
    """Runs a :class:`~hemseg.runtime.preprocess.PreprocessSpec` on a CUDA device.

    ``run(images)`` takes uint8 (H, W) images (numpy arrays, CuPy arrays, or one (N, H, W) CuPy/numpy array;
    sizes may differ) and returns the normalized (N, channels, size, size) CuPy array; ``out`` may be a
    preallocated device buffer of that shape (float32 or float16), which is then filled and returned.
    ``filter_uint8_batch(images)`` returns the uint8 (N, size, size) batch after the bilateral step (what
    :func:`hemseg.runtime.preprocess.filter_uint8` returns per image). ``last_timings`` holds the milliseconds of
    each stage of the last call, measured with CUDA events (``upload``, ``resize``, ``clahe``, ``nlm``,
    ``bilateral``, ``normalize`` for the stages that ran, and ``total``); each call synchronizes once at its end
    to read them.
    """

    def __init__(self, spec: PreprocessSpec, device: int = 0):
        cupy = import_cupy()
        count = _device_count(cupy)
        if count < 1:
            raise BackendUnavailable("GPU preprocessing needs a CUDA device, none was found")
        if not 0 <= int(device) < count:
            raise BackendUnavailable(f"CUDA device {device} does not exist ({count} device(s) found)")
        dev = cupy.cuda.Device(int(device))
        with dev:
            kernels = CupyKernels(cupy)
        self._setup(spec, cupy, kernels, CudaEventClock(cupy), lambda: dev)

    @classmethod
    def with_backend(cls, spec: PreprocessSpec, xp: Any, kernels: Any, clock: Any | None = None) -> "GpuPreprocessor":
        """A preprocessor on another array module / kernel launcher (the test suite's CPU emulation uses it)."""
        self = cls.__new__(cls)
        self._setup(spec, xp, kernels, clock or HostClock(), contextlib.nullcontext)
        return self

    def _setup(self, spec: PreprocessSpec, xp: Any, kernels: Any, clock: Any,
               device_ctx: Callable[[], Any]) -> None:
        if not isinstance(spec, PreprocessSpec):
            raise UsageError(f"GpuPreprocessor needs a PreprocessSpec, got {type(spec).__name__}")
        self.spec = spec
        self._xp = xp
        self._kernels = kernels
        self._clock = clock
        self._device_ctx = device_ctx
        self._resize_cache: dict[tuple[int, int], tuple[Any, Any, Any, Any]] = {}
        self._buffers: dict[str, Any] = {}
        self.last_timings: dict[str, float] = {}
        with self._device_ctx():
            self._prepare_tables()

    # -- host tables, uploaded once --------------------------------------------------------------------------
    def _prepare_tables(self) -> None:
        spec, xp = self.spec, self._xp
        size = int(spec.size)
        self._clahe = None
        if spec.clahe:
            tiles = int(spec.clahe_tiles)
            self._clahe = clahe_geometry(size, size, float(spec.clahe_clip), tiles, tiles)
        self._nlm = None
        if spec.nlm:
            t = nlm_tables(float(spec.nlm_h), int(spec.nlm_template), int(spec.nlm_search))
            smem = nlm_shared_bytes(NLM_BLOCK, t.template_half, t.search_half)
            if smem > MAX_SHARED_BYTES:
                raise UsageError(f"NLM windows template={spec.nlm_template} search={spec.nlm_search} are too large "
                                 f"for the GPU kernel ({smem} bytes of shared memory > {MAX_SHARED_BYTES})")
            self._nlm = (t, xp.asarray(t.weights), smem)
        self._bilateral = None
        if spec.bilateral:
            b = bilateral_tables(int(spec.bilateral_d), float(spec.bilateral_sigma_color),
                                 float(spec.bilateral_sigma_space))
            smem = bilateral_shared_bytes(BILATERAL_BLOCK, b.radius, len(b.ofs_y))
            if smem > MAX_SHARED_BYTES:
                raise UsageError(f"bilateral diameter {spec.bilateral_d} is too large for the GPU kernel "
                                 f"({smem} bytes of shared memory > {MAX_SHARED_BYTES})")
            self._bilateral = (b, xp.asarray(b.ofs_y), xp.asarray(b.ofs_x), xp.asarray(b.space_weight),
                               xp.asarray(b.color_weight), smem)

    def _resize_tables(self, h: int, w: int) -> tuple[Any, Any, Any, Any]:
        key = (h, w)
        if key not in self._resize_cache:
            size = int(self.spec.size)
            xa = resize_axis(w, size, horizontal=True)
            ya = resize_axis(h, size, horizontal=False)
            xp = self._xp
            self._resize_cache[key] = (xp.asarray(xa.ofs), xp.asarray(xa.coef), xp.asarray(ya.ofs), xp.asarray(ya.coef))
        return self._resize_cache[key]

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
        """A reusable device buffer with at least ``shape[0]`` rows; returns the leading ``shape[0]`` (contiguous)."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape[0] < shape[0] or buf.shape[1:] != shape[1:]:
            buf = self._xp.empty(shape, dtype=dtype)
            self._buffers[name] = buf
        return buf[: shape[0]]

    # -- input -----------------------------------------------------------------------------------------------
    def _is_device_array(self, a: Any) -> bool:
        return not isinstance(a, np.ndarray) and hasattr(a, "__cuda_array_interface__")

    def _check_image(self, a: Any, index: int) -> tuple[int, int]:
        shape = getattr(a, "shape", None)
        if shape is None or len(shape) != 2:
            raise UsageError(f"GPU preprocessing expects 2D images; image {index} has shape {shape}")
        if np.dtype(a.dtype) != np.uint8:
            raise UsageError(f"GPU preprocessing expects uint8 (map intensities with to_uint8 first); "
                             f"image {index} is {a.dtype}")
        if min(shape) < 2:
            raise UsageError(f"image {index} of {shape[1]}x{shape[0]} px is too small to segment")
        return int(shape[0]), int(shape[1])

    def _groups(self, images: Any) -> tuple[int, list[tuple[Any, np.ndarray]]]:
        """Upload the images: one contiguous (n, h, w) device stack per distinct size, with its batch slots."""
        xp = self._xp
        if getattr(images, "ndim", None) == 3:
            stack = xp.ascontiguousarray(xp.asarray(images))
            n = int(stack.shape[0])
            if n == 0:
                return 0, []
            self._check_image(stack[0], 0)
            return n, [(stack, np.arange(n, dtype=np.int32))]
        if getattr(images, "ndim", None) == 2:
            raise UsageError("GpuPreprocessor.run takes a list of images or an (N, H, W) array, got one 2D image")
        seq: Sequence[Any] = list(images)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, a in enumerate(seq):
            by_shape.setdefault(self._check_image(a, i), []).append(i)
        groups = []
        for idx in by_shape.values():
            members = [seq[i] for i in idx]
            if any(self._is_device_array(a) for a in members):
                stack = xp.stack([xp.asarray(a) for a in members])
            else:
                stack = xp.asarray(np.stack(members))          # one host-to-device copy per size
            groups.append((xp.ascontiguousarray(stack), np.asarray(idx, dtype=np.int32)))
        return len(seq), groups

    # -- stages ----------------------------------------------------------------------------------------------
    def _resize(self, groups: list[tuple[Any, np.ndarray]], dst: Any) -> None:
        size = int(self.spec.size)
        for stack, slots in groups:
            n, h, w = (int(v) for v in stack.shape)
            xofs, xcoef, yofs, ycoef = self._resize_tables(h, w)
            grid = (_cdiv(size, PIXEL_BLOCK[0]), _cdiv(size, PIXEL_BLOCK[1]), n)
            self._kernels.launch("resize_linear_u8", grid, PIXEL_BLOCK, (
                stack, np.int32(h), np.int32(w), xofs, xcoef, yofs, ycoef,
                dst, np.int32(size), np.int32(size), self._xp.asarray(slots), np.int32(n)))

    def _clahe_step(self, src: Any, dst: Any) -> None:
        g = self._clahe
        n, size = int(src.shape[0]), int(self.spec.size)
        tiles = g.tiles_x * g.tiles_y
        lut = self._buffer("clahe_lut", (n, tiles, 256), np.uint8)
        self._kernels.launch("clahe_lut_u8", (tiles, n, 1), (CLAHE_LUT_THREADS, 1, 1), (
            src, np.int32(size), np.int32(size), np.int32(g.tiles_x), np.int32(g.tiles_y),
            np.int32(g.tile_w), np.int32(g.tile_h), np.int32(g.clip_limit), np.float32(g.lut_scale), lut))
        grid = (_cdiv(size, PIXEL_BLOCK[0]), _cdiv(size, PIXEL_BLOCK[1]), n)
        self._kernels.launch("clahe_interp_u8", grid, PIXEL_BLOCK, (
            src, dst, np.int32(size), np.int32(size), lut, np.int32(g.tiles_x), np.int32(g.tiles_y),
            np.float32(g.inv_tw), np.float32(g.inv_th)))

    def _nlm_step(self, src: Any, dst: Any) -> None:
        t, weights, smem = self._nlm
        n, size = int(src.shape[0]), int(self.spec.size)
        grid = (_cdiv(size, NLM_BLOCK[0]), _cdiv(size, NLM_BLOCK[1]), n)
        self._kernels.launch("nlm_u8", grid, NLM_BLOCK, (
            src, dst, np.int32(size), np.int32(size), np.int32(t.template_half), np.int32(t.search_half),
            np.int32(t.shift), weights, np.int32(t.used)), shared_mem=smem)

    def _bilateral_step(self, src: Any, dst: Any) -> None:
        b, ofs_y, ofs_x, space_w, color_w, smem = self._bilateral
        n, size = int(src.shape[0]), int(self.spec.size)
        grid = (_cdiv(size, BILATERAL_BLOCK[0]), _cdiv(size, BILATERAL_BLOCK[1]), n)
        self._kernels.launch("bilateral_u8", grid, BILATERAL_BLOCK, (
            src, dst, np.int32(size), np.int32(size), np.int32(b.radius), ofs_y, ofs_x, space_w,
            np.int32(len(b.ofs_y)), color_w), shared_mem=smem)

    def _normalize_step(self, src: Any, out: Any) -> None:
        n, size = int(src.shape[0]), int(self.spec.size)
        total = n * size * size
        blocks = max(1, min(_cdiv(total, NORMALIZE_THREADS), 1 << 20))
        name = "normalize_f16" if np.dtype(out.dtype) == np.float16 else "normalize_f32"
        self._kernels.launch(name, (blocks, 1, 1), (NORMALIZE_THREADS, 1, 1), (
            src, out, np.int32(n), np.int32(size * size), np.int32(self.spec.channels),
            np.float32(1.0 / 255.0), np.float32(self.spec.mean), np.float32(self.spec.std)))

    def _filter(self, images: Any) -> tuple[Any, list[tuple[str, Any]]]:
        """Upload + steps 1-4; returns the uint8 (N, S, S) device batch and the timing marks."""
        clock = self._clock
        marks: list[tuple[str, Any]] = [("start", clock.mark())]
        n, groups = self._groups(images)
        marks.append(("upload", clock.mark()))
        size = int(self.spec.size)
        if n > MAX_GRID_YZ:
            raise UsageError(f"GPU preprocessing takes at most {MAX_GRID_YZ} images per call, got {n}")
        cur = self._buffer("ping", (n, size, size), np.uint8)
        nxt = self._buffer("pong", (n, size, size), np.uint8)
        if n:
            self._resize(groups, cur)
        marks.append(("resize", clock.mark()))
        steps = (("clahe", self._clahe, self._clahe_step), ("nlm", self._nlm, self._nlm_step),
                 ("bilateral", self._bilateral, self._bilateral_step))
        for name, enabled, step in steps:
            if enabled is None:
                continue
            if n:
                step(cur, nxt)
                cur, nxt = nxt, cur
            marks.append((name, clock.mark()))
        return cur, marks

    def _record(self, marks: list[tuple[str, Any]]) -> None:
        clock = self._clock
        clock.finish(marks[-1][1])
        timings = {name: clock.elapsed_ms(marks[k - 1][1], mark) for k, (name, mark) in enumerate(marks) if k}
        timings["total"] = clock.elapsed_ms(marks[0][1], marks[-1][1])
        self.last_timings = timings
        log.debug("GPU preprocessing stage times (ms): %s", timings)

    # -- public API --------------------------------------------------------------------------------------------
    def filter_uint8_batch(self, images: Any) -> Any:
        """Steps 1-4 on the device: a new uint8 (N, size, size) device array."""
        with self._device_ctx():
            batch, marks = self._filter(images)
            result = batch.copy()
            self._record(marks)
        return result

    def run(self, images: Any, out: Any | None = None, dtype: Any | None = None) -> Any:
        """The whole chain: images -> normalized (N, channels, size, size) device array (float32 by default)."""
        with self._device_ctx():
            batch, marks = self._filter(images)
            out = self._output(int(batch.shape[0]), out, dtype)
            if batch.shape[0]:
                self._normalize_step(batch, out)
            marks.append(("normalize", self._clock.mark()))
            self._record(marks)
        return out

    def _output(self, n: int, out: Any | None, dtype: Any | None) -> Any:
        shape = (n, int(self.spec.channels), int(self.spec.size), int(self.spec.size))
        if out is None:
            dt = np.dtype(dtype) if dtype is not None else np.dtype(np.float32)
            if dt not in OUTPUT_DTYPES:
                raise UsageError(f"GPU preprocessing writes float32 or float16, not {dt}")
            return self._xp.empty(shape, dtype=dt)
        dt = np.dtype(out.dtype)
        if dtype is not None and np.dtype(dtype) != dt:
            raise UsageError(f"out is {dt} but dtype={np.dtype(dtype)} was requested")
        if dt not in OUTPUT_DTYPES:
            raise UsageError(f"GPU preprocessing writes float32 or float16, out is {dt}")
        if tuple(out.shape) != shape:
            raise UsageError(f"out has shape {tuple(out.shape)}, expected {shape}")
        if not out.flags.c_contiguous:
            raise UsageError("out must be C-contiguous")
        if self._xp is not np and isinstance(out, np.ndarray):
            raise UsageError("out must be a device (CuPy) array, got a numpy array")
        return out

