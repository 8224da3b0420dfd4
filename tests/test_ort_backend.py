"""ONNX Runtime backends, model-file vetting and backend selection (torch-free: needs only onnxruntime).

The models are the tiny committed ONNX files of tests/data (see tests/data/make_tiny_onnx.py): one 1x1 convolution
with ``logits = 10 * x[:, 0]``, threshold 0.4, spec size 64.

The CPU runner tests run on every CPU backend (``cpu_backend``): ONNX Runtime, and OpenVINO FP32 where the
``[openvino]`` extra is installed (the OpenVINO-only tests are in test_openvino_backend.py).
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from hemseg.errors import BackendUnavailable, ModelError, UsageError
from hemseg.runtime.backends import select
from hemseg.runtime.backends.ort import OrtRunner, provider_available
from hemseg.runtime.model_file import artifacts, read_model_bytes, resolve, vet_onnx_bytes
from hemseg.runtime.onnx_scan import BUILTIN_DOMAINS, ScanError, scan_onnx

DATA = Path(__file__).resolve().parent / "data"
TINY = DATA / "tiny_64.onnx"
REAL_CUDA = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
CPU_BACKENDS = ["ort-cpu", pytest.param("openvino-f32", marks=pytest.mark.skipif(
    not HAS_OPENVINO, reason="OpenVINO is not installed (pip install hemseg[openvino])"))]


def open_cpu(path, backend: str):
    """A CPU runner of ``backend`` ("ort-cpu" or "openvino-f32") for ``path``."""
    if backend == "ort-cpu":
        return OrtRunner.from_path(path, "ort-cpu")
    from hemseg.runtime.backends.openvino import OpenVinoRunner

    return OpenVinoRunner.from_path(path, "f32")


cpu_backend = pytest.mark.parametrize("backend", CPU_BACKENDS)


def batch(n=2, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, 64, 64)).astype(np.float32)


pytestmark = pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")


@pytest.fixture
def fake_cuda_listed(monkeypatch):
    """onnxruntime claims a CUDA provider that this CPU build cannot actually use."""
    real = onnxruntime.get_available_providers
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider"] + [p for p in real() if p != "CUDAExecutionProvider"])


@pytest.fixture
def no_cuda(monkeypatch):
    real = onnxruntime.get_available_providers
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: [p for p in real() if p != "CUDAExecutionProvider"])


# -- the runner --------------------------------------------------------------------------------------------------
@cpu_backend
def test_cpu_runner_runs_the_tiny_model_exactly(backend):
    r = open_cpu(TINY, backend)
    assert r.name == backend and not r.on_gpu and r.input_dtype == np.float32
    assert r.metadata.threshold == pytest.approx(0.4) and r.metadata.image_size == 64
    x = batch(3)
    y = r.infer(x)
    assert y.dtype == np.float32 and y.shape == (3, 1, 64, 64)
    np.testing.assert_allclose(y, 10 * x[:, :1], rtol=1e-6, atol=1e-6)
    t = r.last_timings.as_dict()
    assert set(t) == {"copy_in", "infer", "copy_out"} and t["infer"] > 0
    r.close()


@cpu_backend
def test_fp16_model_takes_float32_batches_and_returns_float32(backend):
    r = open_cpu(DATA / "tiny_64_fp16.onnx", backend)
    assert r.input_dtype == np.float16
    x = batch(2)
    y = r.infer(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, 10 * x[:, :1], atol=0.05)


@cpu_backend
def test_symbolic_spatial_dims_are_accepted(backend):
    r = open_cpu(DATA / "tiny_64_dynamic.onnx", backend)
    assert r.infer(batch(1)).shape == (1, 1, 64, 64)


@cpu_backend
def test_wrong_batch_shape_is_a_usage_error(backend):
    r = open_cpu(TINY, backend)
    with pytest.raises(UsageError, match="expected"):
        r.infer(np.zeros((1, 3, 32, 32), np.float32))


@cpu_backend
def test_cpu_runner_has_no_device_input(backend):
    with pytest.raises(BackendUnavailable):
        open_cpu(TINY, backend).infer_device(None)


# -- no silent CPU fallback ------------------------------------------------------------------------------------
def test_ort_cuda_without_the_provider_is_refused(no_cuda):
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider"):
        OrtRunner.from_path(TINY, "ort-cuda")


@pytest.mark.skipif(REAL_CUDA, reason="this onnxruntime has a CUDA provider")
def test_ort_cuda_listed_but_unusable_is_refused_not_run_on_cpu(fake_cuda_listed):
    """The session falls back to CPU inside onnxruntime; we notice via get_providers() and refuse."""
    with pytest.raises(BackendUnavailable, match="not falling back"):
        OrtRunner.from_path(TINY, "ort-cuda")


# -- vetting ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, fragment", [
    ("bad_input_shape.onnx", r"expected input 'image' float/float16 \(N, 3, 64, 64\); the model's input is "
                             r"tensor\(float\) \((N|\?), 1, 64, 64\)"),  # OpenVINO names no symbolic dimension
    ("bad_output_shape.onnx", r"\((N|\?), 2, 64, 64\)"),
    ("bad_input_name.onnx", r"has input\(s\) 'input'"),
    ("no_metadata.onnx", r"hemseg\.preprocess' is missing"),
    ("custom_op.onnx", r"custom operators in domain\(s\) \['com.example.custom'\]"),
    ("external/tiny_ext.onnx", r"external data in tiny_ext.onnx.data"),
])
@cpu_backend
def test_bad_models_are_refused_with_a_clear_model_error(name, fragment, backend):
    with pytest.raises(ModelError, match=fragment) as info:
        open_cpu(DATA / name, backend)
    assert info.value.path == DATA / name


@cpu_backend
def test_external_data_is_refused_even_if_the_side_file_is_missing(tmp_path, backend):
    shutil.copy(DATA / "external" / "tiny_ext.onnx", tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="external data"):
        open_cpu(tmp_path / "m.onnx", backend)


@pytest.mark.parametrize("content, fragment", [
    (b"", "empty"),
    (b"\x00" * 100, "not an ONNX model"),
    (b"this is not a model, just text\n" * 10, "not an ONNX model"),
    (bytes(range(256)) * 8, "not an ONNX model"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "not an ONNX model"),
])
@cpu_backend
def test_garbage_model_files_are_model_errors(tmp_path, content, fragment, backend):
    path = tmp_path / "m.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=fragment):
        open_cpu(path, backend)


@cpu_backend
def test_truncated_model_is_a_model_error(tmp_path, backend):
    data = TINY.read_bytes()
    for cut in (len(data) // 3, len(data) // 2, len(data) - 5):
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(data[:cut])
        with pytest.raises(ModelError):
            open_cpu(path, backend)


def test_missing_and_unreadable_model_files(tmp_path):
    with pytest.raises(ModelError, match="No such file"):
        read_model_bytes(tmp_path / "none.onnx")
    with pytest.raises(ModelError, match="directory"):
        read_model_bytes(tmp_path)
    locked = tmp_path / "locked.onnx"
    shutil.copy(TINY, locked)
    locked.chmod(0)
    try:
        if locked.open("rb").readable():  # root ignores permissions: nothing to test
            pytest.skip("running as root: file permissions are not enforced")
    except PermissionError:
        with pytest.raises(ModelError, match="cannot read"):
            read_model_bytes(locked)
    finally:
        locked.chmod(0o644)


def test_scanner_reads_the_good_model():
    scan = scan_onnx(TINY.read_bytes())
    assert scan.has_graph and scan.node_count == 1 and scan.ir_version == 8
    assert scan.node_domains == {""} and not scan.external_tensors and not scan.custom_domains
    # the metadata_props, as onnxruntime reads them
    meta = OrtRunner.from_path(TINY, "ort-cpu").session.get_modelmeta().custom_metadata_map
    assert scan.metadata_props == dict(meta) and "hemseg.preprocess" in scan.metadata_props
    assert vet_onnx_bytes(TINY.read_bytes(), TINY).metadata_props == scan.metadata_props  # no exception


def test_scanner_rejects_malformed_protobuf():
    with pytest.raises(ScanError):
        scan_onnx(b"\x3a\xff\xff\xff\xff\x0f")  # graph field claiming 4 GiB
    with pytest.raises(ScanError):
        scan_onnx(b"\x08")  # truncated varint


def test_scanner_knows_local_function_domains():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    fn = helper.make_function("local.fns", "Twice", ["x"], ["y"], [helper.make_node("Add", ["x", "x"], ["y"])],
                              [helper.make_opsetid("", 17)])
    graph = helper.make_graph([helper.make_node("Twice", ["a"], ["b"], domain="local.fns")], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, functions=[fn],
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local.fns", 1)])
    scan = scan_onnx(model.SerializeToString())
    assert scan.node_domains == {"", "local.fns"} and scan.function_domains == {"local.fns"}
    assert scan.custom_domains == set()
    assert "com.microsoft" in BUILTIN_DOMAINS
    # a Constant node whose tensor is external is found inside node attributes, and inside an If sub-graph
    t = helper.make_tensor("c", TensorProto.FLOAT, [1], [1.0])
    t.data_location = TensorProto.EXTERNAL
    const = helper.make_node("Constant", [], ["c"], value=t)
    sub = helper.make_graph([const], "then", [], [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])])
    node = helper.make_node("If", ["cond"], ["c"], then_branch=sub, else_branch=sub)
    g2 = helper.make_graph([node], "g2", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                           [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])])
    scan = scan_onnx(helper.make_model(g2).SerializeToString())
    assert scan.external_tensors == ["c", "c"]
    assert onnx is not None


# -- model paths -------------------------------------------------------------------------------------------------
def export_dir(tmp_path, onnx=True, plan=True) -> Path:
    d = tmp_path / "export"
    d.mkdir()
    if onnx:
        shutil.copy(TINY, d / "model.onnx")
    if plan:
        (d / "model.plan").write_bytes(b"not really an engine")
    return d


def test_resolve_prefers_the_artifact_of_the_backend(tmp_path):
    d = export_dir(tmp_path)
    assert artifacts(d) == {"onnx": d / "model.onnx", "plan": d / "model.plan"}
    assert resolve(d, "onnx").path == d / "model.onnx"
    assert resolve(d, "plan").path == d / "model.plan"
    assert resolve(TINY, "onnx").path == TINY


def test_resolve_explains_what_is_missing(tmp_path):
    d = export_dir(tmp_path, onnx=False)
    with pytest.raises(ModelError, match="has model.plan"):
        resolve(d, "onnx")
    with pytest.raises(ModelError, match="needs a TensorRT engine"):
        resolve(TINY, "plan")
    (tmp_path / "best.pt").write_bytes(b"PK\x03\x04 a zip, as torch.save writes")
    with pytest.raises(ModelError, match="this is a PyTorch checkpoint; export it first"):
        resolve(tmp_path / "best.pt", "onnx")
    (tmp_path / "text.pt").write_text("hello\n")  # was called a checkpoint by its name alone
    with pytest.raises(ModelError, match=r"named like a PyTorch checkpoint but not one \(the file looks like text\)"):
        resolve(tmp_path / "text.pt", "onnx")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="unknown model file type"):
        resolve(tmp_path / "model.bin", "onnx")
    with pytest.raises(ModelError, match="no such file"):
        resolve(tmp_path / "nope", "onnx")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(ModelError, match=r"not an export folder: no model in it \(model.onnx, model.plan or an "):
        resolve(empty, "onnx")  # it said "this backend needs ..." under --backend auto
    # a training run's folder given where an export is needed: say what it is and how to export it
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"x")
    with pytest.raises(ModelError, match="a training run, not an export: `hemseg-export .*best.pt --out EXP`"):
        resolve(run, "onnx")
    cv = tmp_path / "cv"
    for k in (1, 2):
        (cv / f"fold_{k}").mkdir(parents=True)
        (cv / f"fold_{k}" / "best.pt").write_bytes(b"x")
    with pytest.raises(ModelError, match="a K-fold training run \\(2 folds' best.pt\\)"):
        resolve(cv, "onnx")


# -- selection ---------------------------------------------------------------------------------------------------
def trt_installed(monkeypatch, ok: bool):
    """Pins TensorRT's availability, and keeps OpenVINO out of ``auto`` (whether this CPU can do bf16 must not
    change these tests; OpenVINO in ``auto`` is tested in test_openvino_backend.py)."""
    monkeypatch.setattr(select, "tensorrt_available", lambda: (ok, "10.9.0" if ok else "TensorRT is not installed"))
    monkeypatch.setattr(select, "openvino_preferred", lambda: (False, "OpenVINO kept out by the test"))


def test_auto_picks_cpu_when_nothing_else_is_there(monkeypatch, no_cuda):
    trt_installed(monkeypatch, False)
    assert [c.backend for c in select.candidates(TINY)] == ["ort-cpu"]
    choice = select.choose_backend(TINY)
    assert choice.backend == "ort-cpu" and "no usable CUDAExecutionProvider" in choice.reason


def test_auto_order_trt_then_cuda_then_cpu(monkeypatch, tmp_path, fake_cuda_listed):
    d = export_dir(tmp_path)
    trt_installed(monkeypatch, True)
    assert [c.backend for c in select.candidates(d)] == ["trt", "ort-cuda", "ort-cpu"]
    assert [c.backend for c in select.candidates(TINY)] == ["ort-cuda", "ort-cpu"]
    assert [c.backend for c in select.candidates(d / "model.plan")] == ["trt"]
    trt_installed(monkeypatch, False)
    cands = select.candidates(d)
    assert [c.backend for c in cands] == ["ort-cuda", "ort-cpu"]
    assert "model.plan present but TensorRT is unusable" in cands[0].reason


def test_auto_with_only_an_engine_and_no_tensorrt_is_refused(monkeypatch, tmp_path):
    trt_installed(monkeypatch, False)
    d = export_dir(tmp_path, onnx=False)
    with pytest.raises(BackendUnavailable, match="TensorRT engine"):
        select.candidates(d)
    with pytest.raises(BackendUnavailable, match="TensorRT engine"):
        select.candidates(d / "model.plan")


def test_named_backend_is_used_as_is_and_unknown_names_refused():
    assert select.candidates(TINY, "ort-cuda") == [select.BackendChoice("ort-cuda", "requested")]
    with pytest.raises(UsageError, match="unknown backend"):
        select.candidates(TINY, "cuda")


def test_open_model_auto_moves_past_an_unusable_cuda_with_a_warning(monkeypatch, caplog, fake_cuda_listed):
    if REAL_CUDA:
        pytest.skip("this onnxruntime has a real CUDA provider")
    trt_installed(monkeypatch, False)
    with caplog.at_level(logging.INFO, logger="hemseg.runtime.backends.select"):
        loaded = select.open_model(TINY, "auto")
    assert loaded.backend == "ort-cpu" and loaded.path == TINY
    assert "ort-cuda unusable" in loaded.reason
    assert any("ort-cuda is unusable" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    assert any("backend ort-cpu for" in r.message for r in caplog.records)


def test_open_model_named_cuda_never_falls_back(fake_cuda_listed):
    with pytest.raises(BackendUnavailable):
        select.open_model(TINY, "ort-cuda")


def test_open_model_on_an_export_dir_uses_model_onnx(monkeypatch, tmp_path, no_cuda):
    trt_installed(monkeypatch, False)
    d = export_dir(tmp_path)
    loaded = select.open_model(d, "auto")
    assert loaded.backend == "ort-cpu" and loaded.path == d / "model.onnx"
    loaded = select.open_model(d, "ort-cpu")
    assert loaded.metadata.threshold == pytest.approx(0.4)


def test_open_model_trt_without_tensorrt_is_backend_unavailable(tmp_path):
    d = export_dir(tmp_path)
    (d / "model.plan.json").write_text("{}")
    with pytest.raises((BackendUnavailable, ModelError)):
        select.open_model(d, "trt")


def test_provider_available_reflects_onnxruntime(no_cuda):
    assert provider_available("ort-cpu") and not provider_available("ort-cuda")


@cpu_backend
def test_a_closed_runner_refuses_to_run(backend):
    r = open_cpu(TINY, backend)
    r.close()
    with pytest.raises(BackendUnavailable, match="closed"):
        r.infer(batch(1))
