"""The TensorRT runner's control flow, against fake ``tensorrt`` and ``cupy`` modules (neither TensorRT nor a GPU is
available here). The fake cupy keeps "device" arrays in host memory, and the fake execution context reads and
writes them through the raw addresses given to ``set_tensor_address``, so the data path (dtype conversion,
chunking by the profile maximum, output allocation) is exercised end to end.

What this does NOT show: that a real TensorRT engine loads and runs, or any latency.
"""

from __future__ import annotations

import ctypes
import enum
import hashlib
import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from hemseg.errors import BackendUnavailable, ModelError, UsageError
from hemseg.runtime.backends.trt import TrtRunner, discover_io
from hemseg.runtime.model_meta import ModelMetadata
from hemseg.runtime.preprocess import PreprocessSpec
from hemseg.runtime.trt_sidecar import TrtSidecar, write_sidecar

SIZE = 16
GPU = {"name": b"NVIDIA H100 80GB HBM3", "major": 9, "minor": 0}


# -- fake cupy: host memory pretending to be device memory ----------------------------------------------------------
class FakeDeviceArray(np.ndarray):
    @property
    def data(self):  # CuPy: a MemoryPointer whose .ptr is the device address
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])

    @property
    def device(self):  # CuPy: the Device the array lives on
        return types.SimpleNamespace(id=0)


def _dev(a) -> FakeDeviceArray:
    return np.asarray(a).view(FakeDeviceArray)


def make_fake_cupy(props=GPU):
    cp = types.ModuleType("cupy")
    cp.ndarray = FakeDeviceArray
    cp.float32 = np.float32
    cp.asarray = lambda a: _dev(np.array(a, copy=True))
    cp.ascontiguousarray = lambda a: _dev(np.ascontiguousarray(a))
    cp.empty = lambda shape, dtype: _dev(np.full(shape, np.nan, dtype=dtype))
    cp.zeros = lambda shape, dtype: _dev(np.zeros(shape, dtype=dtype))
    cp.concatenate = lambda parts, axis=0: _dev(np.concatenate(parts, axis=axis))
    cp.asnumpy = lambda a, stream=None: np.array(a).view(np.ndarray)
    cp.syncs = []

    class Device:
        def __init__(self, index):
            self.index = index

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    class Event:
        pass

    class Stream:
        def __init__(self, non_blocking=False):
            self.ptr = 0xC0FFEE
            self.waited = []

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def synchronize(self):
            cp.syncs.append(self)

        def record(self, event=None):
            return Event()

        def wait_event(self, event):
            self.waited.append(event)

    cp.cuda = types.SimpleNamespace(
        Device=Device,
        Stream=Stream,
        get_current_stream=lambda: Stream(),
        runtime=types.SimpleNamespace(getDeviceProperties=lambda dev: props),
    )
    return cp


def _view(ptr: int, shape, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    return np.frombuffer((ctypes.c_char * nbytes).from_address(ptr), dtype=dtype).reshape(shape)


# -- fake tensorrt (runtime side) -------------------------------------------------------------------------------------
def make_fake_trt(
    version="10.7.0",
    io=(("image", "INPUT", "FLOAT", (-1, 3, SIZE, SIZE)), ("logits", "OUTPUT", "FLOAT", (-1, 1, SIZE, SIZE))),
    deserialize_ok=True,
    context_ok=True,
    execute_ok=True,
    batch_range=(1, 2),
):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    calls: list[tuple] = []
    trt.calls = calls

    class ILogger:
        class Severity(enum.Enum):
            INTERNAL_ERROR = 0
            ERROR = 1
            WARNING = 2
            INFO = 3
            VERBOSE = 4

        def __init__(self):
            pass

    trt.ILogger = ILogger
    trt.TensorIOMode = enum.Enum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    trt.DataType = enum.Enum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2, "BOOL": 4})
    np_types = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "BOOL": np.bool_}
    trt.nptype = lambda t: np_types[t.name]

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name, shape):
            calls.append(("set_input_shape", name, tuple(shape)))
            if not batch_range[0] <= shape[0] <= batch_range[1]:
                return False
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            n, _, h, w = self.shapes["image"]
            return (n, 1, h, w)

        def set_tensor_address(self, name, ptr):
            calls.append(("set_tensor_address", name))
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream_handle):
            calls.append(("execute_async_v3", stream_handle))
            if not execute_ok:
                logger.log(ILogger.Severity.ERROR, "illegal memory access")
                return False
            in_shape = self.shapes["image"]
            x = _view(self.addresses["image"], in_shape, self.engine.dtype("image"))
            y = _view(self.addresses["logits"], self.get_tensor_shape("logits"), self.engine.dtype("logits"))
            y[...] = 2 * x.astype(np.float32).mean(axis=1, keepdims=True)
            return True

    class Engine:
        num_io_tensors = len(io)

        def get_tensor_name(self, i):
            return io[i][0]

        def _row(self, name):
            return next(r for r in io if r[0] == name)

        def get_tensor_mode(self, name):
            return trt.TensorIOMode[self._row(name)[1]]

        def get_tensor_dtype(self, name):
            return trt.DataType[self._row(name)[2]]

        def dtype(self, name):
            return np_types[self._row(name)[2]]

        def get_tensor_shape(self, name):
            return self._row(name)[3]

        def create_execution_context(self):
            calls.append(("create_execution_context",))
            return Context(self) if context_ok else None

    logger = None

    class Runtime:
        def __init__(self, log_):
            nonlocal logger
            logger = log_
            calls.append(("Runtime",))

        def deserialize_cuda_engine(self, blob):
            calls.append(("deserialize_cuda_engine", bytes(blob)))
            if not deserialize_ok:
                logger.log(ILogger.Severity.ERROR, "Serialization assertion plan version mismatch")
                return None
            return Engine()

    trt.Runtime = Runtime
    return trt


# -- an engine folder on disk -----------------------------------------------------------------------------------------
def write_engine(folder: Path, plan: bytes = b"ENGINE", **changes) -> Path:
    spec = PreprocessSpec(size=SIZE)
    meta = ModelMetadata(preprocess=spec, threshold=0.5, model="unet", version="0.1.0", precision="fp16")
    fields = dict(
        tensorrt_version="10.7.0",
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability="9.0",
        profile={"min": 1, "opt": 2, "max": 2},
        image_size=SIZE,
        precision="fp16",
        source_onnx="model_fp16.onnx",
        source_onnx_sha256="0" * 64,
        preprocess=spec.to_dict(),
        metadata=meta.to_props(),
        hemseg_version="0.1.0",
        created="2025-01-01T00:00:00+00:00",
        plan_sha256=hashlib.sha256(plan).hexdigest(),
    )
    fields.update(changes)
    plan_path = folder / "model.plan"
    plan_path.write_bytes(plan)
    write_sidecar(plan_path, TrtSidecar(**fields))
    return plan_path


@pytest.fixture
def engine_dir(tmp_path) -> Path:
    return write_engine(tmp_path)


def install(monkeypatch, cupy=True, **kwargs):
    trt = make_fake_trt(**kwargs)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    cp = make_fake_cupy() if cupy else None
    monkeypatch.setitem(sys.modules, "cupy", cp)
    return trt, cp


def batch(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)


def expected(x: np.ndarray) -> np.ndarray:
    return 2 * x.mean(axis=1, keepdims=True)


# -- refusals before TensorRT ------------------------------------------------------------------------------------
def test_sidecar_mismatch_is_refused_before_touching_tensorrt(monkeypatch, engine_dir):
    trt, _ = install(monkeypatch, version="10.8.1")
    with pytest.raises(ModelError) as info:
        TrtRunner.from_path(engine_dir)
    msg = str(info.value)
    assert "built with TensorRT 10.7.0" in msg and "this machine has TensorRT 10.8.1" in msg
    assert "hemseg-export CHECKPOINT --format trt --out DIR" in msg
    assert trt.calls == [], "no Runtime, no deserialize"


def test_other_gpu_architecture_is_refused_before_touching_tensorrt(monkeypatch, engine_dir):
    trt, _ = install(monkeypatch)
    monkeypatch.setitem(sys.modules, "cupy", make_fake_cupy({"name": b"NVIDIA A10", "major": 8, "minor": 6}))
    with pytest.raises(ModelError, match="sm_86"):
        TrtRunner.from_path(engine_dir)
    assert trt.calls == []


def test_missing_sidecar_is_refused_even_without_tensorrt(monkeypatch, tmp_path):
    (tmp_path / "model.plan").write_bytes(b"ENGINE")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ModelError, match="model.plan.json"):
        TrtRunner.from_path(tmp_path / "model.plan")


def test_missing_plan_is_model_error(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        TrtRunner.from_path(tmp_path / "model.plan")


def test_plan_not_matching_its_sidecar_is_refused(monkeypatch, tmp_path):
    plan = write_engine(tmp_path)
    plan.write_bytes(b"ANOTHER ENGINE")
    trt, _ = install(monkeypatch)
    with pytest.raises(ModelError, match="sha256"):
        TrtRunner.from_path(plan)
    assert trt.calls == []


def test_missing_tensorrt_is_backend_unavailable_with_install_hint(monkeypatch, engine_dir):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailable) as info:
        TrtRunner.from_path(engine_dir)
    assert "TensorRT is not installed" in str(info.value) and "pip install 'hemseg[trt]'" in str(info.value)


def test_missing_cupy_is_backend_unavailable(monkeypatch, engine_dir):
    install(monkeypatch, cupy=False)
    with pytest.raises(BackendUnavailable, match="CuPy is not installed"):
        TrtRunner.from_path(engine_dir)


def test_too_old_tensorrt_is_backend_unavailable(monkeypatch, engine_dir):
    install(monkeypatch, version="8.6.1")
    with pytest.raises(BackendUnavailable, match="too old"):
        TrtRunner.from_path(engine_dir)


# -- TensorRT return values -------------------------------------------------------------------------------------------
def test_deserialize_none_is_model_error_quoting_tensorrt(monkeypatch, engine_dir):
    install(monkeypatch, deserialize_ok=False)
    with pytest.raises(ModelError) as info:
        TrtRunner.from_path(engine_dir)
    msg = str(info.value)
    assert "could not deserialize" in msg and "plan version mismatch" in msg and "hemseg-export" in msg


def test_execution_context_none_is_model_error(monkeypatch, engine_dir):
    install(monkeypatch, context_ok=False)
    with pytest.raises(ModelError, match="execution context"):
        TrtRunner.from_path(engine_dir)


def test_refused_input_shape_is_model_error(monkeypatch, tmp_path):
    plan = write_engine(tmp_path, profile={"min": 2, "opt": 2, "max": 2})
    install(monkeypatch, batch_range=(3, 3))  # an engine that does not take what its sidecar says
    runner = TrtRunner.from_path(plan)
    with pytest.raises(ModelError, match="refused input shape \\(2, 3, 16, 16\\).*batch 2..2"):
        runner.infer(batch(1))


def test_a_tail_below_the_profile_minimum_is_padded(monkeypatch, tmp_path):
    """--batch 2,4,4 and 5 images: chunks of 4 and 1, and TensorRT refuses a shape below the profile (ModelError on a
    valid batch). The tail is padded to the minimum and its extra outputs dropped."""
    plan = write_engine(tmp_path, profile={"min": 2, "opt": 4, "max": 4})
    trt, _ = install(monkeypatch, batch_range=(2, 4))
    runner = TrtRunner.from_path(plan)
    for n, shapes in ((5, [4, 2]), (1, [2])):
        trt.calls.clear()
        x = batch(n)
        y = runner.infer(x)
        assert y.shape == (n, 1, SIZE, SIZE)
        np.testing.assert_allclose(y, expected(x), rtol=1e-6, atol=1e-6)
        assert [c[2][0] for c in trt.calls if c[0] == "set_input_shape"] == shapes


def test_a_batch_at_an_unaligned_address_is_copied(monkeypatch, engine_dir):
    """set_tensor_address wants 256-byte aligned addresses: a caller's view was passed through as it was."""
    from hemseg.runtime.backends.trt import TENSOR_ALIGNMENT

    trt, cp = install(monkeypatch)
    runner = TrtRunner.from_path(engine_dir)
    x = batch(2)
    raw = np.zeros(x.nbytes + 2 * TENSOR_ALIGNMENT, np.uint8)
    start = (-raw.ctypes.data) % TENSOR_ALIGNMENT + 4  # 4 bytes past an aligned address
    view = raw[start:start + x.nbytes].view(np.float32).reshape(x.shape)
    view[...] = x
    dev = view.view(FakeDeviceArray)
    assert dev.data.ptr % TENSOR_ALIGNMENT == 4
    recorded = []
    real = runner._enqueue
    monkeypatch.setattr(runner, "_enqueue", lambda chunk: recorded.append(chunk.data.ptr) or real(chunk))
    y = runner.infer_device(dev)
    np.testing.assert_allclose(np.asarray(y), expected(x), rtol=1e-6, atol=1e-6)
    assert recorded and recorded[0] != dev.data.ptr  # a copy was given, not the unaligned view


def test_execute_false_is_model_error(monkeypatch, engine_dir):
    install(monkeypatch, execute_ok=False)
    runner = TrtRunner.from_path(engine_dir)
    with pytest.raises(ModelError, match="execute_async_v3 failed.*illegal memory access"):
        runner.infer(batch(1))


# -- I/O discovery ----------------------------------------------------------------------------------------------------
def _engine(trt):
    return trt.Runtime(None).deserialize_cuda_engine(b"")


def test_discover_io_finds_input_and_output():
    trt = make_fake_trt(
        io=(("logits", "OUTPUT", "HALF", (-1, 1, SIZE, SIZE)), ("image", "INPUT", "FLOAT", (-1, 3, SIZE, SIZE)))
    )
    inp, out = discover_io(_engine(trt), trt, Path("m.plan"), "image", "logits")
    assert (inp.name, inp.is_input, inp.dtype, inp.shape) == ("image", True, np.dtype(np.float32), (-1, 3, SIZE, SIZE))
    assert (out.name, out.is_input, out.dtype) == ("logits", False, np.dtype(np.float16))


@pytest.mark.parametrize(
    "io, fragment",
    [
        (
            (("input", "INPUT", "FLOAT", (-1, 3, 8, 8)), ("logits", "OUTPUT", "FLOAT", (-1, 1, 8, 8))),
            "inputs \\['input'\\]",
        ),
        (
            (
                ("image", "INPUT", "FLOAT", (-1, 3, 8, 8)),
                ("mask", "INPUT", "FLOAT", (-1, 1, 8, 8)),
                ("logits", "OUTPUT", "FLOAT", (-1, 1, 8, 8)),
            ),
            "inputs \\['image', 'mask'\\]",
        ),
        ((("image", "INPUT", "INT8", (-1, 3, 8, 8)), ("logits", "OUTPUT", "FLOAT", (-1, 1, 8, 8))), "int8"),
        ((("image", "INPUT", "FLOAT", (-1, 3, 8)), ("logits", "OUTPUT", "FLOAT", (-1, 1, 8, 8))), "rank 4"),
        ((("image", "NONE", "FLOAT", (-1, 3, 8, 8)), ("logits", "OUTPUT", "FLOAT", (-1, 1, 8, 8))), "neither input"),
    ],
)
def test_discover_io_refuses_unexpected_engines(io, fragment):
    trt = make_fake_trt(io=io)
    with pytest.raises(ModelError, match=fragment):
        discover_io(_engine(trt), trt, Path("m.plan"), "image", "logits")


def test_engine_size_must_match_metadata(monkeypatch, engine_dir):
    io = (("image", "INPUT", "FLOAT", (-1, 3, 32, 32)), ("logits", "OUTPUT", "FLOAT", (-1, 1, 32, 32)))
    install(monkeypatch, io=io)
    with pytest.raises(ModelError, match="do not match"):
        TrtRunner.from_path(engine_dir)


# -- inference data path ----------------------------------------------------------------------------------------------
def test_infer_host_chunks_by_profile_max(monkeypatch, engine_dir):
    trt, _ = install(monkeypatch)
    runner = TrtRunner.from_path(engine_dir)
    assert (runner.name, runner.on_gpu, runner.max_batch, runner.image_size) == ("trt", True, 2, SIZE)
    x = batch(5)
    y = runner.infer(x)
    assert y.shape == (5, 1, SIZE, SIZE) and y.dtype == np.float32 and type(y) is np.ndarray
    np.testing.assert_allclose(y, expected(x), rtol=1e-6, atol=1e-6)
    shapes = [c[2][0] for c in trt.calls if c[0] == "set_input_shape"]
    assert shapes == [2, 2, 1]
    assert [c for c in trt.calls if c[0] == "execute_async_v3"][0][1] == 0xC0FFEE
    t = runner.last_timings
    assert t.copy_in >= 0 and t.infer >= 0 and t.copy_out >= 0


def test_fp16_engine_gets_fp16_input_and_returns_float32(monkeypatch, engine_dir):
    io = (("image", "INPUT", "HALF", (-1, 3, SIZE, SIZE)), ("logits", "OUTPUT", "HALF", (-1, 1, SIZE, SIZE)))
    _, cp = install(monkeypatch, io=io)
    runner = TrtRunner.from_path(engine_dir)
    assert runner.input_dtype == np.float16
    x = batch(2)
    y = runner.infer(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, expected(x), rtol=1e-2, atol=1e-2)
    y_dev = runner.infer_device(cp.asarray(x))  # a float32 device batch is cast on the device
    assert y_dev.dtype == np.float32
    np.testing.assert_allclose(np.asarray(y_dev), expected(x), rtol=1e-2, atol=1e-2)


def test_infer_device_takes_and_returns_device_arrays(monkeypatch, engine_dir):
    _, cp = install(monkeypatch)
    runner = TrtRunner.from_path(engine_dir)
    x = batch(3)
    y = runner.infer_device(cp.asarray(x))
    assert isinstance(y, cp.ndarray) and y.dtype == np.float32 and y.shape == (3, 1, SIZE, SIZE)
    np.testing.assert_allclose(np.asarray(y), expected(x), rtol=1e-6, atol=1e-6)
    assert runner._stream.waited, "the runner's stream waits for the caller's stream"
    assert runner.last_timings.copy_in == 0.0


def test_wrong_inputs_are_usage_errors(monkeypatch, engine_dir):
    _, cp = install(monkeypatch)
    runner = TrtRunner.from_path(engine_dir)
    with pytest.raises(UsageError, match="numpy"):
        runner.infer([1, 2, 3])
    with pytest.raises(UsageError, match="CuPy"):
        runner.infer_device(batch(1))
    runner.device = 1  # the batch (on GPU 0) is on another GPU than the engine
    with pytest.raises(UsageError, match="the batch is on GPU 0, this engine runs on GPU 1"):
        runner.infer_device(cp.asarray(batch(1)))
    runner.device = 0
    with pytest.raises(UsageError, match="\\(N, 3, 16, 16\\)"):
        runner.infer(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(UsageError):
        runner.infer(np.zeros((0, 3, SIZE, SIZE), np.float32))


def test_close_is_idempotent_and_final(monkeypatch, engine_dir):
    install(monkeypatch)
    with TrtRunner.from_path(engine_dir) as runner:
        runner.infer(batch(1))
    runner.close()
    with pytest.raises(BackendUnavailable, match="closed"):
        runner.infer(batch(1))


def test_same_architecture_other_gpu_model_loads_with_warning(monkeypatch, engine_dir, caplog):
    install(monkeypatch)
    monkeypatch.setitem(sys.modules, "cupy", make_fake_cupy({"name": b"NVIDIA H100 PCIe", "major": 9, "minor": 0}))
    with caplog.at_level(logging.WARNING):
        runner = TrtRunner.from_path(engine_dir)
    assert "different GPU model" in caplog.text
    assert runner.infer(batch(1)).shape == (1, 1, SIZE, SIZE)


# -- QA, stop 58: what happens where TensorRT imports but the engine or the machine does not fit ----------------------
def test_a_runtime_tensorrt_cannot_create_is_backend_unavailable(monkeypatch, engine_dir):
    """pybind11 raises TypeError ('factory function returned nullptr') when createInferRuntime fails: it was a raw
    traceback, and under auto it blocked the ONNX model beside the engine."""
    trt, _ = install(monkeypatch)

    def no_runtime(logger):
        raise TypeError("pybind11::init(): factory function returned nullptr")

    monkeypatch.setattr(trt, "Runtime", no_runtime)
    with pytest.raises(BackendUnavailable, match="could not create a runtime on CUDA device 0 .*nullptr"):
        TrtRunner.from_path(engine_dir)


def test_the_runner_reports_its_precision(monkeypatch, engine_dir):
    install(monkeypatch)
    assert TrtRunner.from_path(engine_dir).precision == "f16"  # summary.json backend_precision was None


def _export_folder_with_an_engine(tmp_path: Path) -> Path:
    import shutil

    folder = tmp_path / "exp"
    folder.mkdir()
    shutil.copy(Path(__file__).parent / "data" / "tiny_64.onnx", folder / "model.onnx")
    write_engine(folder)
    return folder


def test_auto_moves_past_an_engine_of_another_gpu_to_the_onnx_model_beside_it(monkeypatch, tmp_path, caplog):
    """NVIDIA's engines only run on the TensorRT major.minor and GPU architecture that built them: an export folder
    copied to another workstation (or a TensorRT upgrade) stopped every `--backend auto` run though model.onnx lay
    beside the engine. auto now warns and goes on; --backend trt still refuses."""
    from hemseg.runtime.backends import select

    install(monkeypatch)
    monkeypatch.setitem(sys.modules, "cupy", make_fake_cupy({"name": b"NVIDIA A100", "major": 8, "minor": 0}))
    monkeypatch.setattr(select, "openvino_preferred", lambda: (False, "OpenVINO kept out by the test"))
    monkeypatch.setattr(select, "_ort_cuda_available", lambda: False)
    folder = _export_folder_with_an_engine(tmp_path)
    with caplog.at_level(logging.WARNING):
        loaded = select.open_model(folder)
    assert loaded.backend == "ort-cpu" and loaded.path.name == "model.onnx"
    assert "trt is unusable" in caplog.text and "GPU architecture" in caplog.text
    assert "trt unusable" in loaded.reason and "sm_90" in loaded.reason
    with pytest.raises(ModelError, match="different GPU architecture"):
        select.open_model(folder, "trt")
    with pytest.raises(ModelError, match="different GPU architecture"):  # the engine alone: nothing to move on to
        select.open_model(folder / "model.plan")
    install(monkeypatch)  # the GPU it was built for, but a damaged engine: an error under auto too (QA, stop 58)
    monkeypatch.setattr(select, "_ort_cuda_available", lambda: False)
    with open(folder / "model.plan", "ab") as f:
        f.write(b"garbage")
    with pytest.raises(ModelError, match="does not match its sidecar"):
        select.open_model(folder)


def test_hemseg_bench_skips_trt_where_cupy_is_missing_and_refuses_an_engine_of_another_checkpoint(
        monkeypatch, tmp_path):
    """hemseg-bench stopped the whole run (losing the paths already measured) when TensorRT imported but CuPy or
    a GPU was missing, where --help says such paths are skipped; and it did not check an engine's checkpoint."""
    from hemseg.bench import paths
    from hemseg.errors import UsageError
    from hemseg.runtime.model_meta import PREFIX

    folder = _export_folder_with_an_engine(tmp_path)
    ctx = types.SimpleNamespace(model_dir=folder, metadata=types.SimpleNamespace(checkpoint_sha256="a" * 64))
    monkeypatch.setattr(paths, "_need_file", lambda ctx, name: ctx.model_dir / name)
    install(monkeypatch, cupy=False)
    with pytest.raises(paths.Skip, match="CuPy is not installed"):
        paths._trt_path("trt", ctx)
    install(monkeypatch)
    monkeypatch.setitem(sys.modules, "cupy", make_fake_cupy({"name": b"NVIDIA A100", "major": 8, "minor": 0}))
    with pytest.raises(paths.Skip, match="different GPU architecture"):  # it stopped the run: exit 1, no JSON
        paths._trt_path("trt", ctx)
    (folder / "model.plan.json").write_text("{broken")  # a damaged sidecar is an error, not a skip (QA, stop 58)
    with pytest.raises(ModelError, match="unusable TensorRT sidecar"):
        paths._trt_path("trt", ctx)
    install(monkeypatch)
    spec = PreprocessSpec(size=SIZE)
    meta = ModelMetadata(preprocess=spec, threshold=0.5, model="unet", version="0.1.0", precision="fp16")
    props = {**meta.to_props(), PREFIX + "checkpoint_sha256": "b" * 64}
    write_engine(folder, metadata=props)
    with pytest.raises(UsageError, match="records checkpoint bbbbbbbbbbbb, not aaaaaaaaaaaa"):
        paths._trt_path("trt", ctx)


def test_the_trt_format_is_refused_before_anything_is_written_without_a_gpu(monkeypatch):
    """TensorRT importable but no CuPy / CUDA device: hemseg-export built and gated onnx and onnx-fp16 first, then
    failed on the trt format ('CuPy is needed to query the GPU')."""
    import importlib.machinery

    from hemseg.errors import DependencyError
    from hemseg.export import chain

    trt, _ = install(monkeypatch, cupy=False)
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # found by find_spec, as an installed one
    with pytest.raises(DependencyError, match="built on a CUDA GPU: CuPy is needed"):
        chain.require_tensorrt()
    trt, _ = install(monkeypatch)
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    chain.require_tensorrt()  # TensorRT and a GPU: nothing to refuse


def test_a_skipped_trt_path_leaves_its_engine_out_of_the_files_timed(monkeypatch, tmp_path):
    """hemseg-bench listed a model.plan it skipped (CuPy missing) among the model files it timed, with a warning
    that the export's checks do not vouch for it (QA, stop 58): a skipped path's files are not the run's."""
    import json

    from click.testing import CliRunner

    from hemseg.cli.bench_cmd import bench

    install(monkeypatch, cupy=False)
    folder = _export_folder_with_an_engine(tmp_path)
    out = tmp_path / "b.json"
    res = CliRunner().invoke(bench, [str(folder), "--paths", "ort,trt", "--batch-sizes", "1", "--iters", "1",
                                     "--warmup", "0", "--images", "1", "--series", "0", "--json", str(out), "-q"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert [s["path"] for s in doc["skipped"]] == ["trt"]
    assert "CuPy is not installed" in doc["skipped"][0]["reason"]
    assert set(doc["model"]["files"]) == {"model.onnx"}
    assert "model.plan: its export verification" not in res.output
