"""The TensorRT engine builder's control flow, against a fake ``tensorrt`` module (TensorRT cannot be installed
here): strongly typed network flags for 10.x and 11.x, no FP16 builder flag ever, parser errors surfaced, ``None``
results refused, FP32-only ONNX refused for fp16, timing-cache reuse, profile shapes, the ``--batch`` parser.

What this does NOT show: that a real TensorRT accepts these calls or builds a working engine.
"""

from __future__ import annotations

import enum
import hashlib
import json
import sys
import types
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from hemseg.errors import BackendUnavailable, InputError, ModelError, UsageError  # noqa: E402
from hemseg.export.batch_profile import BatchProfile, parse_batch_profile  # noqa: E402
from hemseg.export.trt_build import build_engine, count_float16_tensors, select_onnx  # noqa: E402
from hemseg.runtime.backends.trt import tensorrt_available  # noqa: E402
from hemseg.runtime.model_meta import ModelMetadata  # noqa: E402
from hemseg.runtime.preprocess import PreprocessSpec  # noqa: E402
from hemseg.runtime.trt_sidecar import read_sidecar  # noqa: E402

SIZE = 64


# -- fixtures: tiny ONNX files ------------------------------------------------------------------------------------
def _save_model(path: Path, fp16: bool) -> Path:
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])
    if fp16:
        w = helper.make_tensor("w", TensorProto.FLOAT16, [1, 3, 1, 1], [0.5, 0.5, 0.5])
        nodes = [
            helper.make_node("Cast", ["image"], ["x16"], to=TensorProto.FLOAT16),
            helper.make_node("Conv", ["x16", "w"], ["y16"]),
            helper.make_node("Cast", ["y16"], ["logits"], to=TensorProto.FLOAT),
        ]
    else:
        w = helper.make_tensor("w", TensorProto.FLOAT, [1, 3, 1, 1], [0.5, 0.5, 0.5])
        nodes = [helper.make_node("Conv", ["image", "w"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=[w])
    onnx.save(helper.make_model(graph), str(path))
    return path


@pytest.fixture
def fp16_onnx(tmp_path) -> Path:
    return _save_model(tmp_path / "model_fp16.onnx", fp16=True)


@pytest.fixture
def fp32_onnx(tmp_path) -> Path:
    return _save_model(tmp_path / "model.onnx", fp16=False)


@pytest.fixture
def metadata() -> ModelMetadata:
    return ModelMetadata(preprocess=PreprocessSpec(size=SIZE), threshold=0.5, model="unet", version="0.1.0")


# -- the fake tensorrt ----------------------------------------------------------------------------------------------
def make_fake_trt(
    version: str = "10.7.0",
    strongly_typed: int | None = 1,
    fp16_flag: bool = True,
    parse_ok: bool = True,
    parser_errors: tuple[tuple[int, str], ...] = (),
    build_result: bytes | None = b"PLAN-BYTES",
    input_shape: tuple[int, ...] = (-1, 3, SIZE, SIZE),
    profile_index: int = 0,
    accept_timing_cache: bool = True,
):
    """A stand-in for the documented parts of the tensorrt module; every call lands in ``trt.calls``."""
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
            calls.append(("ILogger.__init__",))

    trt.ILogger = ILogger
    flags = {} if version.startswith("11") else {"EXPLICIT_BATCH": 0}
    if strongly_typed is not None:
        flags["STRONGLY_TYPED"] = strongly_typed
    trt.NetworkDefinitionCreationFlag = enum.IntEnum(
        "NetworkDefinitionCreationFlag", flags or {"PREFER_JIT_PYTHON_PLUGINS": 2}
    )
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", {"FP16": 0, "TF32": 1} if fp16_flag else {"TF32": 1})
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self):
            self.inputs, self.outputs = [], []

        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))

        def get_input(self, i):
            return self.inputs[i]

        def get_output(self, i):
            return self.outputs[i]

    class ParserError:
        def __init__(self, node, desc):
            self._node, self._desc = node, desc

        def node(self):
            return self._node

        def desc(self):
            return self._desc

        def code(self):
            return "ErrorCode.UNSUPPORTED_NODE"

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            calls.append(("OnnxParser",))

        def parse_from_file(self, path):
            calls.append(("parse_from_file", path))
            if parse_ok:
                self.network.inputs = [Tensor("image", input_shape)]
                self.network.outputs = [Tensor("logits", (-1, 1, SIZE, SIZE))]
            return parse_ok

        num_errors = property(lambda self: len(parser_errors))

        def get_error(self, i):
            return ParserError(*parser_errors[i])

    class TimingCache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return self.blob + b"|run"

    class Profile:
        def set_shape(self, name, min, opt, max):
            calls.append(("set_shape", name, tuple(min), tuple(opt), tuple(max)))

    class Config:
        def __init__(self):
            self.cache = None

        def set_flag(self, flag):
            calls.append(("set_flag", flag))

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool, size))

        def add_optimization_profile(self, profile):
            calls.append(("add_optimization_profile",))
            return profile_index

        def create_timing_cache(self, blob):
            calls.append(("create_timing_cache", bytes(blob)))
            return TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache", ignore_mismatch))
            self.cache = cache
            return accept_timing_cache

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            self.logger = logger
            calls.append(("Builder",))

        def create_network(self, flags=0):
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network",))
            if build_result is None:
                self.logger.log(ILogger.Severity.ERROR, "out of workspace memory for tactic 42")
            return build_result

    trt.OnnxParser, trt.Builder = OnnxParser, Builder
    return trt


@pytest.fixture
def fake_gpu(monkeypatch):
    cupy = types.ModuleType("cupy")
    props = {"name": b"NVIDIA H100 80GB HBM3", "major": 9, "minor": 0}
    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceProperties=lambda dev: props))
    monkeypatch.setitem(sys.modules, "cupy", cupy)


def install(monkeypatch, **kwargs):
    trt = make_fake_trt(**kwargs)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def names(trt) -> list[str]:
    return [c[0] for c in trt.calls]


# -- batch profile --------------------------------------------------------------------------------------------------
def test_parse_batch_profile_valid():
    assert parse_batch_profile("1,8,32") == BatchProfile(1, 8, 32)
    assert parse_batch_profile(" 2 , 2 ,2 ") == BatchProfile(2, 2, 2)
    assert str(BatchProfile(1, 4, 16)) == "1,4,16"
    assert BatchProfile(1, 4, 16).shapes(3, 64, 48) == ((1, 3, 64, 48), (4, 3, 64, 48), (16, 3, 64, 48))


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("1,8", "MIN,OPT,MAX"),
        ("1,8,32,64", "MIN,OPT,MAX"),
        ("1,,32", "MIN,OPT,MAX"),
        ("1,x,32", "OPT must be an integer"),
        ("1.5,2,3", "MIN must be an integer"),
        ("0,1,2", "min must be >= 1"),
        ("1,16,8", "min <= opt <= max"),
        ("4,2,8", "min <= opt <= max"),
    ],
)
def test_parse_batch_profile_errors(text, fragment):
    with pytest.raises(UsageError, match=fragment):
        parse_batch_profile(text)


def test_batch_profile_rejects_non_ints():
    with pytest.raises(UsageError, match="integer"):
        BatchProfile(1, 2.0, 4)
    with pytest.raises(UsageError, match="integer"):
        BatchProfile(True, 2, 4)


# -- input file choice and the fp16 check -------------------------------------------------------------------------
def test_select_onnx_picks_fp16_file(fp16_onnx):
    assert select_onnx(fp16_onnx.parent, "fp16") == fp16_onnx


def test_select_onnx_missing_names_file_and_command(tmp_path):
    with pytest.raises(InputError) as info:
        select_onnx(tmp_path, "fp16")
    assert info.value.path == tmp_path / "model_fp16.onnx"
    assert "--format onnx-fp16" in str(info.value)


def test_select_onnx_rejects_other_precisions(tmp_path):
    with pytest.raises(UsageError, match="fp16"):
        select_onnx(tmp_path, "fp32")


def test_count_float16_tensors(fp16_onnx, fp32_onnx, tmp_path):
    assert count_float16_tensors(fp16_onnx) >= 2  # the fp16 weight and the Cast to fp16
    assert count_float16_tensors(fp32_onnx) == 0
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01 not a protobuf")
    with pytest.raises(ModelError):
        count_float16_tensors(bad)


def test_fp32_only_onnx_is_refused_before_tensorrt(monkeypatch, fake_gpu, fp32_onnx, metadata, tmp_path):
    trt = install(monkeypatch)
    with pytest.raises(ModelError) as info:
        build_engine(fp32_onnx, tmp_path / "out", BatchProfile(1, 4, 8), metadata=metadata)
    assert "no float16 tensors" in str(info.value) and "onnx-fp16" in str(info.value)
    assert info.value.path == fp32_onnx
    assert trt.calls == []
    assert not (tmp_path / "out" / "model.plan").exists()


def test_missing_onnx_is_input_error(monkeypatch, metadata, tmp_path):
    with pytest.raises(InputError, match="onnx-fp16"):
        build_engine(tmp_path / "model_fp16.onnx", tmp_path, BatchProfile(1, 1, 1), metadata=metadata)


def test_bad_arguments_are_usage_errors(fp16_onnx, metadata, tmp_path):
    with pytest.raises(UsageError, match="ModelMetadata"):
        build_engine(fp16_onnx, tmp_path, BatchProfile(1, 1, 1))
    with pytest.raises(UsageError, match="workspace"):
        build_engine(fp16_onnx, tmp_path, BatchProfile(1, 1, 1), workspace_mb=0, metadata=metadata)
    with pytest.raises(UsageError, match="fp16 only"):
        build_engine(fp16_onnx, tmp_path, BatchProfile(1, 1, 1), metadata=metadata, precision="int8")


# -- a whole build --------------------------------------------------------------------------------------------------
def test_build_on_trt10_uses_strongly_typed_flag_and_writes_plan_and_sidecar(
    monkeypatch, fake_gpu, fp16_onnx, metadata, tmp_path
):
    trt = install(monkeypatch, version="10.7.0", strongly_typed=1)
    out = tmp_path / "out"
    plan = build_engine(fp16_onnx, out, BatchProfile(1, 4, 8), workspace_mb=256, metadata=metadata)

    assert plan == out / "model.plan" and plan.read_bytes() == b"PLAN-BYTES"
    assert ("create_network", 1 << 1) in trt.calls  # STRONGLY_TYPED is bit 1 in TensorRT 10.x
    assert not [c for c in trt.calls if c[0] == "set_flag"], "never a weak-typing precision flag"
    assert ("set_memory_pool_limit", trt.MemoryPoolType.WORKSPACE, 256 << 20) in trt.calls
    assert ("set_shape", "image", (1, 3, SIZE, SIZE), (4, 3, SIZE, SIZE), (8, 3, SIZE, SIZE)) in trt.calls
    assert ("parse_from_file", str(fp16_onnx)) in trt.calls
    assert names(trt).index("add_optimization_profile") < names(trt).index("build_serialized_network")

    sidecar = read_sidecar(plan)
    assert sidecar.tensorrt_version == "10.7.0"
    assert sidecar.gpu_name == "NVIDIA H100 80GB HBM3" and sidecar.compute_capability == "9.0"
    assert sidecar.profile == {"min": 1, "opt": 4, "max": 8}
    assert sidecar.image_size == SIZE and sidecar.precision == "fp16"
    assert sidecar.source_onnx == "model_fp16.onnx"
    assert sidecar.source_onnx_sha256 == hashlib.sha256(fp16_onnx.read_bytes()).hexdigest()
    assert sidecar.plan_sha256 == hashlib.sha256(b"PLAN-BYTES").hexdigest()
    meta = sidecar.model_metadata()
    assert meta.precision == "fp16" and meta.model == "unet" and meta.image_size == SIZE
    assert sidecar.extra["network_typing"] == "STRONGLY_TYPED flag"
    assert not list(out.glob("*.tmp"))


def test_trt11_with_the_deprecated_flag_does_not_pass_it(monkeypatch, fake_gpu, fp16_onnx, metadata, tmp_path):
    """TensorRT 11: 'STRONGLY_TYPED: [DEPRECATED] ... Strongly typed mode is always enabled. This flag is retained for
    API compatibility but is ignored.' The documented API, not the deprecated one."""
    trt = install(monkeypatch, version="11.0.0", strongly_typed=0, fp16_flag=False)
    build_engine(fp16_onnx, tmp_path, BatchProfile(1, 1, 2), metadata=metadata)
    assert ("create_network", 0) in trt.calls


def test_trt11_without_the_flag_builds_with_zero_flags(monkeypatch, fake_gpu, fp16_onnx, metadata, tmp_path):
    trt = install(monkeypatch, version="11.2.0", strongly_typed=None, fp16_flag=False)
    plan = build_engine(fp16_onnx, tmp_path, BatchProfile(1, 1, 2), metadata=metadata)
    assert ("create_network", 0) in trt.calls
    assert read_sidecar(plan).extra["network_typing"].startswith("strongly typed (always")


def test_trt10_without_strong_typing_is_refused(monkeypatch, fake_gpu, fp16_onnx, metadata, tmp_path):
    trt = install(monkeypatch, version="10.0.0", strongly_typed=None)
    with pytest.raises(BackendUnavailable, match="STRONGLY_TYPED"):
        build_engine(fp16_onnx, tmp_path, BatchProfile(1, 1, 2), metadata=metadata)
    assert "create_network" not in names(trt)


def test_parser_errors_are_all_surfaced(monkeypatch, fake_gpu, fp16_onnx, metadata, tmp_path):
    errors = ((3, "Unsupported operator GridSample"), (7, "Invalid weights for Conv_7"))
    install(monkeypatch, parse_ok=False, parser_errors=errors)
    with pytest.raises(ModelError) as info:
        build_engine(fp16_onnx, tmp_path / "out", BatchProfile(1, 1, 2), metadata=metadata)
    msg = str(info.value)
    assert "ONNX parser failed" in msg
    assert "node 3: Unsupported operator GridSample" in msg and "node 7: Invalid weights for Conv_7" in msg
    assert info.value.path == fp16_onnx
    assert not (tmp_path / "out").exists()


def test_failed_parse_without_recorded_errors_still_fails(monkeypatch, fake_gpu, fp16_onnx, metadata, tmp_path):
    install(monkeypatch, parse_ok=False)
    with pytest.raises(ModelError, match="no error"):
        build_engine(fp16_onnx, tmp_path, BatchProfile(1, 1, 2), metadata=metadata)


def test_build_returning_none_is_an_error_quoting_tensorrt(monkeypatch, fake_gpu, fp16_onnx, metadata, tmp_path):
    install(monkeypatch, build_result=None)
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.plan").write_bytes(b"OLD")
    with pytest.raises(ModelError) as info:
        build_engine(fp16_onnx, out, BatchProfile(1, 1, 2), metadata=metadata)
    assert "failed to build" in str(info.value) and "out of workspace memory for tactic 42" in str(info.value)
    assert (out / "model.plan").read_bytes() == b"OLD", "a failed build leaves the previous engine alone"


def test_refused_optimization_profile_is_an_error(monkeypatch, fake_gpu, fp16_onnx, metadata, tmp_path):
    install(monkeypatch, profile_index=-1)
    with pytest.raises(ModelError, match="optimization profile"):
        build_engine(fp16_onnx, tmp_path, BatchProfile(1, 1, 2), metadata=metadata)


def test_input_size_must_match_metadata(monkeypatch, fake_gpu, fp16_onnx, metadata, tmp_path):
    install(monkeypatch, input_shape=(-1, 3, 128, 128))
    with pytest.raises(ModelError, match="image size 64"):
        build_engine(fp16_onnx, tmp_path, BatchProfile(1, 1, 2), metadata=metadata)


def test_dynamic_hw_is_refused(monkeypatch, fake_gpu, fp16_onnx, metadata, tmp_path):
    """An engine with a dynamic height and width was built, and the runner then refused it (its input shape is
    (-1, 3, -1, -1)): refused at build time, naming why."""
    install(monkeypatch, input_shape=(-1, 3, -1, -1))
    with pytest.raises(ModelError, match="fixed height and width"):
        build_engine(fp16_onnx, tmp_path, BatchProfile(2, 2, 4), metadata=metadata)


def test_static_batch_conflicting_with_profile_is_refused(monkeypatch, fake_gpu, fp16_onnx, metadata, tmp_path):
    install(monkeypatch, input_shape=(1, 3, SIZE, SIZE))
    with pytest.raises(ModelError, match="dynamic batch"):
        build_engine(fp16_onnx, tmp_path, BatchProfile(1, 4, 8), metadata=metadata)


def test_timing_cache_is_created_saved_and_reused(monkeypatch, fake_gpu, fp16_onnx, metadata, tmp_path):
    cache = tmp_path / "cache" / "trt.cache"
    trt = install(monkeypatch)
    build_engine(fp16_onnx, tmp_path / "a", BatchProfile(1, 1, 2), timing_cache=cache, metadata=metadata)
    assert ("create_timing_cache", b"") in trt.calls
    assert ("set_timing_cache", False) in trt.calls
    assert cache.read_bytes() == b"|run"

    trt = install(monkeypatch)
    build_engine(fp16_onnx, tmp_path / "b", BatchProfile(1, 1, 2), timing_cache=cache, metadata=metadata)
    assert ("create_timing_cache", b"|run") in trt.calls, "the second build starts from the saved cache"
    assert cache.read_bytes() == b"|run|run"


def test_rejected_timing_cache_names_the_file(monkeypatch, fake_gpu, fp16_onnx, metadata, tmp_path):
    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"from another gpu")
    install(monkeypatch, accept_timing_cache=False)
    with pytest.raises(ModelError) as info:
        build_engine(fp16_onnx, tmp_path / "out", BatchProfile(1, 1, 2), timing_cache=cache, metadata=metadata)
    assert info.value.path == cache and "delete it" in str(info.value)
    assert cache.read_bytes() == b"from another gpu"


def test_no_timing_cache_path_means_no_cache_file(monkeypatch, fake_gpu, fp16_onnx, metadata, tmp_path):
    trt = install(monkeypatch)
    build_engine(fp16_onnx, tmp_path / "out", BatchProfile(1, 1, 2), metadata=metadata)
    assert ("create_timing_cache", b"") in trt.calls
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.plan", "model.plan.json"]


def test_sidecar_json_is_plain_json(monkeypatch, fake_gpu, fp16_onnx, metadata, tmp_path):
    install(monkeypatch)
    plan = build_engine(fp16_onnx, tmp_path, BatchProfile(1, 2, 4), metadata=metadata)
    data = json.loads((tmp_path / "model.plan.json").read_text())
    assert data["profile"] == {"min": 1, "opt": 2, "max": 4} and data["precision"] == "fp16"
    assert data["metadata"]["hemseg.precision"] == "fp16"
    assert data["created"].endswith("+00:00") and plan.exists()


# -- missing / old tensorrt -----------------------------------------------------------------------------------------
def test_missing_tensorrt_is_backend_unavailable_with_hint(monkeypatch, fake_gpu, fp16_onnx, metadata, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailable, match="hemseg\\[trt\\]"):
        build_engine(fp16_onnx, tmp_path, BatchProfile(1, 1, 2), metadata=metadata)
    ok, reason = tensorrt_available()
    assert not ok and "not installed" in reason and "hemseg[trt]" in reason


def test_tensorrt_available_reports_version_or_too_old(monkeypatch):
    install(monkeypatch, version="10.7.0")
    assert tensorrt_available() == (True, "10.7.0")
    install(monkeypatch, version="8.6.1")
    ok, reason = tensorrt_available()
    assert not ok and "too old" in reason
