"""The TensorRT sidecar (model.plan.json): round trip, refusal of missing/malformed files, the compatibility rule,
and the CuPy GPU query (with a fake cupy module). No TensorRT or GPU needed."""

from __future__ import annotations

import json
import sys
import types

import pytest

from hemseg.errors import BackendUnavailable, ModelError
from hemseg.runtime.model_meta import MetadataError, ModelMetadata
from hemseg.runtime.preprocess import PreprocessSpec
from hemseg.runtime.trt_sidecar import (
    REBUILD_HINT,
    TrtSidecar,
    check_compatible,
    current_gpu,
    read_sidecar,
    sidecar_path,
    version_tuple,
    write_sidecar,
)


def make_sidecar(**changes) -> TrtSidecar:
    spec = PreprocessSpec(size=64)
    meta = ModelMetadata(preprocess=spec, threshold=0.4, model="unet", version="0.1.0", precision="fp16")
    fields = dict(
        tensorrt_version="10.7.0",
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability="9.0",
        profile={"min": 1, "opt": 4, "max": 8},
        image_size=64,
        precision="fp16",
        source_onnx="model_fp16.onnx",
        source_onnx_sha256="ab" * 32,
        preprocess=spec.to_dict(),
        metadata=meta.to_props(),
        hemseg_version="0.1.0",
        created="2025-01-01T00:00:00+00:00",
    )
    fields.update(changes)
    return TrtSidecar(**fields)


def test_sidecar_path_appends_json(tmp_path):
    assert sidecar_path(tmp_path / "model.plan") == tmp_path / "model.plan.json"


def test_write_read_round_trip(tmp_path):
    plan = tmp_path / "model.plan"
    sidecar = make_sidecar(plan_sha256="cd" * 32)
    path = write_sidecar(plan, sidecar)
    assert path == tmp_path / "model.plan.json"
    assert read_sidecar(plan) == sidecar
    data = json.loads(path.read_text())
    assert data["format"] == "hemseg-trt-sidecar" and data["compute_capability"] == "9.0"
    assert data["metadata"]["hemseg.image_size"] == "64"
    assert not list(tmp_path.glob("*.tmp")), "atomic write leaves no temp file"
    meta = read_sidecar(plan).model_metadata()
    assert meta.threshold == 0.4 and meta.image_size == 64 and meta.model == "unet"


def test_missing_sidecar_is_refused_with_rebuild_hint(tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine")
    with pytest.raises(ModelError) as info:
        read_sidecar(plan)
    assert "model.plan.json" in str(info.value) and "hemseg-export" in str(info.value)
    assert info.value.path == plan


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("not json", "unusable TensorRT sidecar"),
        ("[1, 2]", "not a JSON object"),
        ('{"format": "something-else"}', "not a hemseg TensorRT sidecar"),
        ('{"format": "hemseg-trt-sidecar", "format_version": 1}', "lacks"),
        ('{"format": "hemseg-trt-sidecar", "format_version": 99}', "newer than this hemseg"),
    ],
)
def test_malformed_sidecar_is_refused(tmp_path, text, fragment):
    plan = tmp_path / "model.plan"
    sidecar_path(plan).write_text(text)
    with pytest.raises(ModelError) as info:
        read_sidecar(plan)
    assert fragment in str(info.value)
    assert info.value.path == sidecar_path(plan)


def test_bad_profile_in_sidecar_is_refused(tmp_path):
    plan = tmp_path / "model.plan"
    data = make_sidecar().to_dict()
    data["profile"] = {"min": 8, "opt": 4, "max": 2}
    sidecar_path(plan).write_text(json.dumps(data))
    with pytest.raises(ModelError, match="min <= opt <= max"):
        read_sidecar(plan)


def test_metadata_inconsistent_with_sidecar_is_detected():
    with pytest.raises(MetadataError, match="image_size"):
        make_sidecar(image_size=128).model_metadata()
    other = PreprocessSpec(size=64, clahe=False).to_dict()
    with pytest.raises(MetadataError, match="disagrees"):
        make_sidecar(preprocess=other).model_metadata()


def test_version_tuple():
    assert version_tuple("10.7.0") == (10, 7, 0)
    assert version_tuple("10.13.3.9") == (10, 13, 3, 9)
    assert version_tuple("11.0.0.post1") == (11, 0, 0)
    with pytest.raises(ValueError):
        version_tuple("unknown")


def test_same_build_is_compatible_without_warnings():
    assert check_compatible(make_sidecar(), "10.7.0", "NVIDIA H100 80GB HBM3", "9.0") == []


def test_different_trt_minor_is_refused_with_both_sides_and_command():
    with pytest.raises(ModelError) as info:
        check_compatible(make_sidecar(), "10.8.0", "NVIDIA H100 80GB HBM3", "9.0", plan_path="/x/model.plan")
    msg = str(info.value)
    assert "built with TensorRT 10.7.0 on NVIDIA H100 80GB HBM3 (sm_90)" in msg
    assert "this machine has TensorRT 10.8.0 on NVIDIA H100 80GB HBM3 (sm_90)" in msg
    assert REBUILD_HINT in msg and "major.minor" in msg
    assert str(info.value.path) == "/x/model.plan"


def test_different_trt_major_is_refused():
    with pytest.raises(ModelError, match="major.minor"):
        check_compatible(make_sidecar(), "11.0.0", "NVIDIA H100 80GB HBM3", "9.0")


def test_different_compute_capability_is_refused():
    with pytest.raises(ModelError) as info:
        check_compatible(make_sidecar(), "10.7.0", "NVIDIA A100-SXM4-40GB", "8.0")
    assert "sm_80" in str(info.value) and "architecture" in str(info.value)


def test_patch_difference_and_gpu_name_difference_only_warn():
    warnings = check_compatible(make_sidecar(), "10.7.2", "NVIDIA H100 PCIe", "9.0")
    assert len(warnings) == 2
    assert "different patch" in warnings[0]
    assert "different GPU model" in warnings[1] and "NVIDIA H100 PCIe" in warnings[1]


def test_unreadable_version_is_refused():
    with pytest.raises(ModelError, match="version number"):
        check_compatible(make_sidecar(), "dev", "NVIDIA H100 80GB HBM3", "9.0")


def _fake_cupy(props=None, error=None):
    def get_props(dev):
        if error is not None:
            raise error
        return props

    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceProperties=get_props))
    return cupy


def test_current_gpu_reads_cupy_properties(monkeypatch):
    props = {"name": b"NVIDIA H100 80GB HBM3", "major": 9, "minor": 0, "totalGlobalMem": 1}
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(props))
    gpu = current_gpu(0)
    assert gpu.name == "NVIDIA H100 80GB HBM3" and gpu.compute_capability == "9.0"


def test_current_gpu_without_cupy_is_backend_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(BackendUnavailable, match="hemseg\\[gpu\\]"):
        current_gpu(0)


def test_current_gpu_without_device_is_backend_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(error=RuntimeError("cudaErrorNoDevice")))
    with pytest.raises(BackendUnavailable, match="cudaErrorNoDevice"):
        current_gpu(3)
