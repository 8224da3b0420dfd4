"""``hemseg doctor``: one line per component, never a traceback, never imports torch."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from hemseg.cli import doctor as doctor_mod
from hemseg.cli import main

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["hemseg", "python", "platform", "numpy", "opencv", "onnxruntime", "pydicom", "nibabel", "dicom extra", "cpu", "cpu flags", "allocator",
         "openvino", "cuda", "tensorrt", "torch", "export"]


def run_doctor() -> list[str]:
    res = CliRunner().invoke(main, ["doctor"])
    assert res.exit_code == 0, res.output
    return res.stdout.splitlines()


def test_one_line_per_component_in_order():
    lines = run_doctor()
    assert [ln.split(":", 1)[0] for ln in lines] == NAMES
    assert all(ln.split(":", 1)[1].strip() for ln in lines)


def test_the_export_line_says_which_formats_this_installation_makes(monkeypatch):
    """doctor listed torch, but nothing said whether hemseg-export (onnx, onnxscript) or --format openvino-int8
    (nncf) could run here (a QA finding of stop 51)."""
    import importlib.metadata as md

    real = md.version

    def without(*dists):
        def version(name):
            if name in dists:
                raise md.PackageNotFoundError(name)
            return "1.0"
        return version

    monkeypatch.setattr(md, "version", without())
    line = doctor_mod._export()
    assert line.startswith("hemseg-export makes onnx, onnx-fp16, onnx-int8, openvino-int8") and "need" not in line
    monkeypatch.setattr(md, "version", without("nncf"))
    line = doctor_mod._export()
    assert line.startswith("hemseg-export makes onnx, onnx-fp16, onnx-int8;")
    assert "openvino-int8 need nncf (pip install 'hemseg[train,nncf]')" in line
    monkeypatch.setattr(md, "version", without("torch", "onnxscript"))
    line = doctor_mod._export()
    assert line.startswith("hemseg-export cannot run here") and "need torch, onnxscript" in line
    monkeypatch.setattr(md, "version", real)


def test_versions_and_providers_are_reported():
    import cv2
    import numpy
    import onnxruntime

    info = {ln.split(":", 1)[0]: ln.split(":", 1)[1].strip() for ln in run_doctor()}
    assert info["numpy"] == numpy.__version__ and info["opencv"] == cv2.__version__
    assert info["onnxruntime"].startswith(onnxruntime.__version__) and "CPUExecutionProvider" in info["onnxruntime"]
    assert "logical cores" in info["cpu"]
    if importlib.util.find_spec("cupy") is None:
        assert info["cuda"].startswith("CuPy not installed")
    if importlib.util.find_spec("tensorrt") is None:
        assert info["tensorrt"].startswith("unavailable")


def test_a_crashing_probe_reports_on_its_own_line(monkeypatch):
    def boom() -> str:
        raise RuntimeError("driver exploded")

    probes = tuple((name, boom if name == "cuda" else fn) for name, fn in doctor_mod.PROBES)
    monkeypatch.setattr(doctor_mod, "PROBES", probes)
    lines = run_doctor()
    assert len(lines) == len(NAMES)
    [cuda] = [ln for ln in lines if ln.startswith("cuda:")]
    assert "check failed (RuntimeError: driver exploded)" in cuda


def _doctor_in_subprocess(prelude: str) -> subprocess.CompletedProcess:
    code = prelude + ("\nfrom hemseg.cli import main\nimport sys\ntry:\n    main(['doctor'], prog_name='hemseg')\n"
                      "except SystemExit:\n    pass\nprint('TORCH_LOADED', 'torch' in sys.modules and "
                      "sys.modules['torch'] is not None)\n")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_runtime_only_install_says_torch_is_not_installed():
    proc = _doctor_in_subprocess("import sys\nsys.modules['torch'] = None")
    assert proc.returncode == 0, proc.stderr
    [line] = [ln for ln in proc.stdout.splitlines() if ln.startswith("torch:")]
    assert line.split(":", 1)[1].strip() == "not installed (runtime-only install)"


def test_doctor_never_imports_torch():
    proc = _doctor_in_subprocess("")
    assert proc.returncode == 0, proc.stderr
    assert "TORCH_LOADED False" in proc.stdout
    if importlib.util.find_spec("torch") is not None:
        [line] = [ln for ln in proc.stdout.splitlines() if ln.startswith("torch:")]
        assert "installed" in line and "not installed" not in line


def _doctor_info() -> dict[str, str]:
    return {ln.split(":", 1)[0]: ln.split(":", 1)[1].strip() for ln in run_doctor()}


def test_cpu_flags_line_lists_the_flags_that_matter(monkeypatch):
    from hemseg.runtime import cpu_features

    monkeypatch.delenv(cpu_features.ENV, raising=False)
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "amx_bf16"}))
    line = _doctor_info()["cpu flags"]
    assert line == ("avx2 yes, avx512f yes, avx512_vnni no, avx512_bf16 no, amx_bf16 yes, amx_int8 no")


def test_cpu_flags_set_by_the_environment_are_said_to_be(monkeypatch):
    """HEMSEG_CPU_FLAGS=avx2 made doctor report an AMX CPU as AVX2-only, as if read from the CPU."""
    from hemseg.runtime import cpu_features

    monkeypatch.setenv(cpu_features.ENV, "avx2")
    line = _doctor_info()["cpu flags"]
    assert line.startswith("avx2 yes, avx512f no") and f"set by {cpu_features.ENV}" in line
    monkeypatch.setenv(cpu_features.ENV, " ")  # it said "unknown (no flags line in /proc/cpuinfo)"
    assert _doctor_info()["cpu flags"] == f"none ({cpu_features.ENV} is set and empty, not read from this CPU)"


def test_openvino_is_recommended_exactly_on_bf16_cpus_without_it(monkeypatch):
    from hemseg.runtime import cpu_features
    from hemseg.runtime.backends import openvino as ov_backend

    monkeypatch.setattr(ov_backend, "openvino_version", lambda: None)
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    line = _doctor_info()["openvino"]
    assert "RECOMMENDED" in line and "amx_bf16" in line and "pip install 'hemseg[openvino]'" in line
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: frozenset({"avx2"}))
    line = _doctor_info()["openvino"]
    assert "RECOMMENDED" not in line and "not installed" in line
    monkeypatch.setattr(ov_backend, "openvino_version", lambda: "2026.4.1")
    assert "auto keeps ONNX Runtime" in _doctor_info()["openvino"]
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    assert _doctor_info()["openvino"] == "2026.4.1 (auto uses it: bf16 on this CPU's avx512_bf16)"


def test_the_dicom_extra_line_says_what_needs_it(monkeypatch):
    """A vendor could not tell from doctor that DICOM SEG output (predict's default for DICOM) and serve need it."""
    import importlib.metadata

    from hemseg.cli import doctor as doctor_mod

    real = importlib.metadata.version

    def version(dist):
        if dist == "highdicom":
            raise importlib.metadata.PackageNotFoundError(dist)
        return real(dist)

    monkeypatch.setattr(importlib.metadata, "version", version)
    line = doctor_mod._dicom_extra()
    assert "highdicom" not in line.split(";")[0] and "pip install 'hemseg[dicom]'" in line and "hemseg serve" in line


def test_the_cuda_line_says_whether_onnxruntime_has_cuda(monkeypatch):
    """Without CuPy it said 'ort-cuda may still work' where onnxruntime had no CUDAExecutionProvider."""
    import builtins

    import onnxruntime

    real_import = builtins.__import__

    def no_cupy(name, *args, **kwargs):
        if name == "cupy":
            raise ImportError("no cupy")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cupy)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert "ort-cuda unavailable too (onnxruntime has no CUDAExecutionProvider" in doctor_mod._cuda()
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider",
                                                                         "CPUExecutionProvider"])
    assert "ort-cuda available" in doctor_mod._cuda()


def test_the_tensorrt_line_says_unusable_when_tensorrt_imports_without_a_gpu(monkeypatch):
    """It said '10.9.0 (available)' while the cuda line said TensorRT was unavailable (no CuPy): QA, stop 58."""
    import sys

    from hemseg.cli import doctor
    from hemseg.runtime.backends import trt

    monkeypatch.setattr(trt, "tensorrt_available", lambda: (True, "10.9.0"))
    monkeypatch.setitem(sys.modules, "cupy", None)
    line = doctor._tensorrt()
    assert line.startswith("10.9.0 importable, but unusable here: CuPy is needed"), line
