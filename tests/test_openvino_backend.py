"""The OpenVINO backend: CPU flags, precision selection, parity with ONNX Runtime, the model cache, ``auto``.

Runs in the torch-free venv. Precision selection is tested with injected CPU flags (this project's machines are
AVX2-only, so real bf16 inference runs only where the CPU has amx_bf16 / avx512_bf16: ``test_bf16_runs_close_to_f32``
is skipped elsewhere). The tests that need OpenVINO itself skip when the ``[openvino]`` extra is not installed.
The runner tests OpenVINO shares with ONNX Runtime are in test_ort_backend.py (``cpu_backend``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from hemseg.errors import BackendUnavailable, ModelError, UsageError
from hemseg.runtime import cpu_features
from hemseg.runtime.backends import select
from hemseg.runtime.backends.openvino import (
    BACKEND_PRECISION,
    choose_precision,
    default_cache_dir,
)

DATA = Path(__file__).resolve().parent / "data"
TINY = DATA / "tiny_64.onnx"
CONVNET = DATA / "tiny_64_convnet.onnx"
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO is not installed (pip install hemseg[openvino])")
CPU_HAS_BF16 = cpu_features.bf16_flag() is not None

AMX = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile", "avx512_vnni"}
ZEN4 = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}
AVX2 = {"avx", "avx2", "fma"}

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
flags\t\t: fpu sse2
"""


def batch(n=2, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, 64, 64)).astype(np.float32)


# -- CPU flags -----------------------------------------------------------------------------------------------------
def test_cpuinfo_flags_are_parsed_from_the_first_processor():
    flags = cpu_features.parse_cpuinfo_flags(CPUINFO)
    assert {"avx2", "amx_bf16", "avx512_bf16", "amx_int8"} <= flags and "fpu" in flags
    assert cpu_features.parse_cpuinfo_flags("processor : 0\nmodel name : x\n") == frozenset()


def test_flags_of_interest_and_the_bf16_and_int8_rules():
    assert cpu_features.flags_of_interest(AMX) == {"avx2": True, "avx512f": True, "avx512_vnni": True,
                                                   "avx512_bf16": True, "amx_bf16": True, "amx_int8": True}
    assert cpu_features.bf16_flag(AMX) == "amx_bf16"
    assert cpu_features.bf16_flag(ZEN4) == "avx512_bf16"
    assert cpu_features.bf16_flag(AVX2) is None
    assert cpu_features.int8_flag(AMX) == "amx_int8" and cpu_features.int8_flag(ZEN4) == "avx512_vnni"
    assert cpu_features.int8_flag(AVX2) is None
    assert cpu_features.describe(AVX2).startswith("avx2 yes, avx512f no")
    assert cpu_features.describe(set()).startswith("unknown")


def test_this_machines_flags_come_from_proc_cpuinfo():
    flags = cpu_features.cpu_flags()
    if Path("/proc/cpuinfo").is_file():
        assert flags == cpu_features.parse_cpuinfo_flags(Path("/proc/cpuinfo").read_text())
    assert cpu_features.bf16_flag() == cpu_features.bf16_flag(flags)


# -- precision selection (injected flags) ----------------------------------------------------------------------------
@pytest.mark.parametrize("flags, want, why", [
    (AMX, "bf16", "amx_bf16"),
    (ZEN4, "bf16", "avx512_bf16"),
    (AVX2, "f32", "neither amx_bf16 nor avx512_bf16"),
    (set(), "f32", "neither"),
])
def test_auto_precision_is_bf16_exactly_where_the_cpu_has_bf16(flags, want, why):
    choice = choose_precision("auto", flags)
    assert choice.precision == want and why in choice.reason


def test_auto_keeps_int8_models_in_f32_and_f32_is_always_possible():
    assert choose_precision("auto", AMX, model_precision="int8").precision == "f32"
    for flags in (AMX, AVX2, set()):
        assert choose_precision("f32", flags).precision == "f32"


def test_bf16_on_a_cpu_without_bf16_is_an_error_naming_the_missing_flags():
    assert choose_precision("bf16", ZEN4).precision == "bf16"
    with pytest.raises(BackendUnavailable, match="neither amx_bf16 nor avx512_bf16"):
        choose_precision("bf16", AVX2)
    with pytest.raises(UsageError, match="unknown OpenVINO precision"):
        choose_precision("fp8", AMX)


def test_backend_names_map_to_precisions():
    assert BACKEND_PRECISION == {"openvino": "auto", "openvino-f32": "f32", "openvino-bf16": "bf16"}
    for name in BACKEND_PRECISION:
        assert name in select.BACKENDS


# -- auto backend selection ------------------------------------------------------------------------------------------
@pytest.fixture
def cpu_like(monkeypatch):
    """Pretend the CPU has the given flags (for select/doctor, which read cpu_features.cpu_flags())."""
    def set_flags(flags):
        monkeypatch.setattr(cpu_features, "cpu_flags", lambda: frozenset(flags))
    return set_flags


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(select, "tensorrt_available", lambda: (False, "TensorRT is not installed"))
    monkeypatch.setattr(select, "_ort_cuda_available", lambda: False)


def test_auto_picks_openvino_on_a_bf16_cpu_with_openvino_installed(monkeypatch, cpu_like, no_gpu):
    from hemseg.runtime.backends import openvino as ov_backend

    cpu_like(AMX)
    monkeypatch.setattr(ov_backend, "openvino_version", lambda: "2026.4.1")
    cands = select.candidates(TINY)
    assert [c.backend for c in cands] == ["openvino", "ort-cpu"]
    assert "OpenVINO 2026.4.1 is installed and the CPU has amx_bf16" in cands[0].reason


def test_auto_skips_openvino_on_avx2_or_without_openvino_and_says_why(monkeypatch, cpu_like, no_gpu):
    from hemseg.runtime.backends import openvino as ov_backend

    monkeypatch.setattr(ov_backend, "openvino_version", lambda: "2026.4.1")
    cpu_like(AVX2)
    [cand] = select.candidates(TINY)
    assert cand.backend == "ort-cpu" and "neither amx_bf16 nor avx512_bf16" in cand.reason
    cpu_like(AMX)
    monkeypatch.setattr(ov_backend, "openvino_version", lambda: None)
    [cand] = select.candidates(TINY)
    assert cand.backend == "ort-cpu" and "pip install 'hemseg[openvino]'" in cand.reason


def test_auto_order_is_trt_then_cuda_then_openvino_then_cpu(monkeypatch, cpu_like, tmp_path):
    from hemseg.runtime.backends import openvino as ov_backend

    d = tmp_path / "export"
    d.mkdir()
    (d / "model.onnx").write_bytes(TINY.read_bytes())
    (d / "model.plan").write_bytes(b"engine")
    cpu_like(AMX)
    monkeypatch.setattr(ov_backend, "openvino_version", lambda: "2026.4.1")
    monkeypatch.setattr(select, "tensorrt_available", lambda: (True, "10.9.0"))
    monkeypatch.setattr(select, "_ort_cuda_available", lambda: True)
    assert [c.backend for c in select.candidates(d)] == ["trt", "ort-cuda", "openvino", "ort-cpu"]


@needs_openvino
def test_auto_opens_openvino_and_logs_the_precision(monkeypatch, caplog, cpu_like, no_gpu):
    """On a (pretended) bf16 CPU ``auto`` opens OpenVINO; here OpenVINO then computes in f32, which the runner
    refuses, so ``auto`` moves on to ort-cpu with a warning. On a real bf16 CPU it stays on OpenVINO bf16."""
    cpu_like(AMX)
    with caplog.at_level(logging.INFO):
        loaded = select.open_model(TINY, "auto")
    if CPU_HAS_BF16:
        assert loaded.backend == "openvino" and loaded.runner.precision == "bf16"
        assert "inference precision bf16" in loaded.reason
    else:
        assert loaded.backend == "ort-cpu" and "openvino unusable" in loaded.reason
        assert any("openvino is unusable" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    loaded.runner.close()


# -- the runner ------------------------------------------------------------------------------------------------------
@needs_openvino
def test_f32_parity_with_onnxruntime_on_a_small_cnn():
    from hemseg.runtime.backends.openvino import OpenVinoRunner
    from hemseg.runtime.backends.ort import OrtRunner

    x = batch(4, seed=1)
    ref = OrtRunner.from_path(CONVNET, "ort-cpu").infer(x)
    ov = OpenVinoRunner.from_path(CONVNET, "f32")
    got = ov.infer(x)
    assert ov.precision == "f32" and got.dtype == np.float32 and got.shape == (4, 1, 64, 64)
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert rel < 1e-5, rel
    assert np.array_equal(got > 0, ref > 0)
    assert ov.metadata.threshold == pytest.approx(0.4) and ov.metadata.image_size == 64


@needs_openvino
def test_open_model_named_openvino_f32_runs_and_reports_precision():
    loaded = select.open_model(TINY, "openvino-f32")
    assert loaded.backend == "openvino-f32" and loaded.runner.name == "openvino-f32"
    assert loaded.runner.precision == "f32" and "inference precision f32 (requested)" in loaded.reason
    np.testing.assert_allclose(loaded.runner.infer(batch(1)), 10 * batch(1)[:, :1], rtol=1e-6, atol=1e-6)


@needs_openvino
@pytest.mark.skipif(CPU_HAS_BF16, reason="this CPU has bf16")
def test_bf16_request_on_this_non_bf16_cpu_is_refused():
    from hemseg.runtime.backends.openvino import OpenVinoRunner

    with pytest.raises(BackendUnavailable, match="neither amx_bf16 nor avx512_bf16"):
        OpenVinoRunner.from_path(TINY, "bf16")
    with pytest.raises(BackendUnavailable, match="neither amx_bf16 nor avx512_bf16"):
        select.open_model(TINY, "openvino-bf16")


@needs_openvino
@pytest.mark.skipif(CPU_HAS_BF16, reason="this CPU has bf16")
def test_openvino_silently_computing_f32_for_bf16_is_caught():
    """Pretend flags say bf16, but OpenVINO (rightly) compiles f32 on this CPU: refused, not run at f32."""
    from hemseg.runtime.backends.openvino import OpenVinoRunner

    with pytest.raises(BackendUnavailable, match="with inference precision f32, not the bf16 asked for"):
        OpenVinoRunner.from_path(TINY, "bf16", flags=AMX, cache_dir=False)


@needs_openvino
@pytest.mark.skipif(not CPU_HAS_BF16, reason="needs a CPU with amx_bf16 or avx512_bf16 (not available here)")
def test_bf16_runs_close_to_f32():
    from hemseg.runtime.backends.openvino import OpenVinoRunner

    x = batch(4, seed=2)
    f32 = OpenVinoRunner.from_path(CONVNET, "f32").infer(x)
    bf16 = OpenVinoRunner.from_path(CONVNET, "bf16")
    assert bf16.precision == "bf16"
    got = bf16.infer(x)
    assert np.linalg.norm(got - f32) / np.linalg.norm(f32) < 2e-2


@needs_openvino
def test_the_model_cache_is_filled_then_reused(tmp_path):
    import hashlib

    from hemseg.runtime.backends.openvino import OpenVinoRunner

    cache = tmp_path / "ovcache"
    first = OpenVinoRunner.from_path(CONVNET, "f32", cache_dir=cache)
    from hemseg.runtime.model_file import model_digest

    own = cache / hashlib.sha256(model_digest(CONVNET).encode()).hexdigest()[:16]  # the model's subfolder, by content
    blobs = sorted(p.name for p in own.iterdir())
    assert first.cache_dir == own and not first.from_cache and blobs
    second = OpenVinoRunner.from_path(CONVNET, "f32", cache_dir=cache)
    assert second.from_cache and sorted(p.name for p in own.iterdir()) == blobs
    x = batch(2, seed=3)
    np.testing.assert_array_equal(first.infer(x), second.infer(x))
    off = OpenVinoRunner.from_path(CONVNET, "f32", cache_dir=False)
    assert off.cache_dir is None and not off.from_cache


@needs_openvino
def test_a_damaged_cached_compiled_model_is_not_run(tmp_path, caplog):
    """OpenVINO imports a cached blob unchecked: 4 MB of an FCN blob overwritten (same size) ran, its masks changed,
    every status 'passed' (a QA finding of stop 52). Each blob's SHA-256 is recorded when compiled and checked before
    a model is opened: a damaged one is removed with a warning and the model compiled anew; an unrecorded one too."""
    import json

    from hemseg.runtime.backends.openvino import BLOB_RECORD, OpenVinoRunner

    cache, x = tmp_path / "ovcache", batch(2, seed=5)
    first = OpenVinoRunner.from_path(CONVNET, "f32", cache_dir=cache)
    reference = first.infer(x)
    [blob] = first.cache_dir.glob("*.blob")
    assert json.loads((first.cache_dir / BLOB_RECORD).read_text())[blob.name]["sha256"] == sha256_of(blob)
    assert OpenVinoRunner.from_path(CONVNET, "f32", cache_dir=cache).from_cache
    data = bytearray(blob.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)  # damaged in place, same size
    blob.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="hemseg.runtime.backends.openvino"):
        again = OpenVinoRunner.from_path(CONVNET, "f32", cache_dir=cache)
    assert not again.from_cache and "differs from the one compiled there" in caplog.text
    np.testing.assert_array_equal(again.infer(x), reference)
    assert OpenVinoRunner.from_path(CONVNET, "f32", cache_dir=cache).from_cache  # recorded anew: used again
    (again.cache_dir / BLOB_RECORD).unlink()  # a blob no record names (an earlier hemseg's, a stranger's)
    assert not OpenVinoRunner.from_path(CONVNET, "f32", cache_dir=cache).from_cache


@needs_openvino
def test_an_unchanged_cached_blob_is_not_hashed_again(tmp_path, monkeypatch):
    """Each start hashed every cached blob (0.13-0.21 s for a 124 MB FCN-ResNet50 blob on a 2-core EPYC) and a fresh
    compile hashed again the blobs just checked. The record keeps each blob's file version: one still at it is not
    hashed; one whose version changed with the same bytes (touched, copied) is hashed once, accepted and re-recorded;
    a record of the first form (name -> SHA-256) is hashed, accepted and rewritten with versions."""
    import json

    from hemseg.runtime.backends.openvino import BLOB_RECORD, OpenVinoRunner
    from hemseg.runtime.io import hashing

    hashed = []
    real = hashing.sha256_file
    monkeypatch.setattr(hashing, "sha256_file", lambda path, *a, **k: hashed.append(Path(path).name) or real(path))
    cache = tmp_path / "ovcache"
    first = OpenVinoRunner.from_path(CONVNET, "f32", cache_dir=cache)
    [blob] = first.cache_dir.glob("*.blob")
    assert hashed.count(blob.name) == 1  # recorded after the compile
    hashed.clear()
    assert OpenVinoRunner.from_path(CONVNET, "f32", cache_dir=cache).from_cache
    assert blob.name not in hashed
    os.utime(blob, (1, 1))  # same bytes, another version
    assert OpenVinoRunner.from_path(CONVNET, "f32", cache_dir=cache).from_cache
    assert hashed.count(blob.name) == 1
    hashed.clear()
    assert OpenVinoRunner.from_path(CONVNET, "f32", cache_dir=cache).from_cache and blob.name not in hashed
    (first.cache_dir / BLOB_RECORD).write_text(json.dumps({blob.name: sha256_of(blob)}))  # the first form
    assert OpenVinoRunner.from_path(CONVNET, "f32", cache_dir=cache).from_cache
    assert hashed.count(blob.name) == 1
    assert json.loads((first.cache_dir / BLOB_RECORD).read_text())[blob.name]["sha256"] == sha256_of(blob)
    hashed.clear()
    assert OpenVinoRunner.from_path(CONVNET, "f32", cache_dir=cache).from_cache and blob.name not in hashed


@needs_openvino
def test_a_cached_blob_that_is_not_a_regular_file_is_never_opened(tmp_path, caplog):
    """A named pipe at a blob's name hung hemseg predict in OpenVINO's import (SIGTERM ignored), and a folder there
    kept the cache from ever being filled, each start saying it used the cache (QA findings of stop 53): the pipe is
    removed and the model compiled anew; a folder that cannot be removed means compiling without the cache, said.
    Record entries naming no blob are dropped."""
    import json

    from hemseg.runtime.backends.openvino import BLOB_RECORD, OpenVinoRunner

    cache = tmp_path / "ovcache"
    first = OpenVinoRunner.from_path(CONVNET, "f32", cache_dir=cache)
    [blob] = first.cache_dir.glob("*.blob")
    record = json.loads((first.cache_dir / BLOB_RECORD).read_text())
    record["gone.blob"] = {"sha256": "0" * 64, "version": [1, 2, 3, 4, 5]}
    (first.cache_dir / BLOB_RECORD).write_text(json.dumps(record))
    blob.unlink()
    os.mkfifo(blob)
    threading.Thread(target=_unblock_fifo, args=(blob, 20.0), daemon=True).start()  # so a regression fails, not hangs
    with caplog.at_level("WARNING", logger="hemseg.runtime.backends.openvino"):
        again = OpenVinoRunner.from_path(CONVNET, "f32", cache_dir=cache)  # would block in the pipe's open
    assert not again.from_cache and "is not a regular file: removed" in caplog.text and blob.is_file()
    assert sorted(json.loads((first.cache_dir / BLOB_RECORD).read_text())) == [blob.name]
    blob.unlink()
    blob.mkdir()
    caplog.clear()
    with caplog.at_level("WARNING", logger="hemseg.runtime.backends.openvino"):
        third = OpenVinoRunner.from_path(CONVNET, "f32", cache_dir=cache)
    assert third.cache_dir is None and not third.from_cache
    assert "is not a regular file and cannot be removed" in caplog.text and "without the model cache" in caplog.text
    # the record itself: a named pipe hung every start in its read, a folder kept the cache from working (stop 53)
    blob.rmdir()
    assert not OpenVinoRunner.from_path(CONVNET, "f32", cache_dir=cache).from_cache  # the blob and record again
    record = first.cache_dir / BLOB_RECORD
    record.unlink()
    os.mkfifo(record)
    threading.Thread(target=_unblock_fifo, args=(record, 20.0), daemon=True).start()
    caplog.clear()
    with caplog.at_level("WARNING", logger="hemseg.runtime.backends.openvino"):
        OpenVinoRunner.from_path(CONVNET, "f32", cache_dir=cache)
    assert "record" in caplog.text and "was not a regular file: removed" in caplog.text and record.is_file()
    assert OpenVinoRunner.from_path(CONVNET, "f32", cache_dir=cache).from_cache  # recorded again: used
    record.unlink()
    record.mkdir()
    caplog.clear()
    with caplog.at_level("WARNING", logger="hemseg.runtime.backends.openvino"):
        fourth = OpenVinoRunner.from_path(CONVNET, "f32", cache_dir=cache)
    assert fourth.cache_dir is None and "record" in caplog.text and "cannot be removed" in caplog.text


def _unblock_fifo(path: Path, after: float, until: float = 120.0) -> None:
    """From ``after`` seconds on, while ``path`` is a named pipe (for at most ``until`` seconds), open it for writing
    and close it again and again: a reader blocked in its open then reads end-of-file (so that a regression fails
    its test rather than hangs it)."""
    import stat
    import time

    time.sleep(after)
    end = time.monotonic() + until
    while time.monotonic() < end:
        try:
            if not stat.S_ISFIFO(os.stat(path).st_mode):
                return
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        time.sleep(0.2)


def sha256_of(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@needs_openvino
def test_old_models_cache_subfolders_are_pruned_and_a_used_one_is_kept(tmp_path):
    """The cache was never pruned: every replaced model left its blobs (118 MB for FCN-ResNet50). Compiling a model
    anew removes other models' subfolders unused for 30 days; opening a model marks its subfolder used; folders not
    named like a subfolder are never touched."""
    import time

    from hemseg.runtime.backends.openvino import PRUNE_AFTER_DAYS, OpenVinoRunner

    cache, day = tmp_path / "ovcache", 86400

    def age(folder, days):
        t = time.time() - days * day
        os.utime(folder, (t, t))

    used = OpenVinoRunner.from_path(TINY, "f32", cache_dir=cache).cache_dir
    age(used, PRUNE_AFTER_DAYS + 5)  # a model last opened 35 days ago ...
    assert OpenVinoRunner.from_path(TINY, "f32", cache_dir=cache).from_cache  # ... is opened again: used now
    assert time.time() - used.stat().st_mtime < day
    stale, recent, other = cache / ("a" * 16), cache / ("b" * 16), cache / "my-notes"
    for folder, days in ((stale, PRUNE_AFTER_DAYS + 1), (recent, PRUNE_AFTER_DAYS - 1), (other, 400)):
        folder.mkdir()
        (folder / "blob").write_bytes(b"x")
        age(folder, days)
    fresh = OpenVinoRunner.from_path(CONVNET, "f32", cache_dir=cache)  # another model, compiled anew
    assert not fresh.from_cache and not stale.exists()
    assert recent.exists() and other.exists() and used.exists() and fresh.cache_dir.exists()
    age(used, PRUNE_AFTER_DAYS + 5)
    assert OpenVinoRunner.from_path(CONVNET, "f32", cache_dir=cache).from_cache  # from the cache: prunes nothing
    assert used.exists()


@needs_openvino
def test_a_model_replaced_by_one_of_the_same_size_and_time_is_compiled_anew(tmp_path):
    """OpenVINO keys its cache by the model file's path, size and modification time: a model replaced by other
    weights of the same size with the old time kept (cp -p, rsync, tar; an IR's .bin replaced alone) was served
    from the cache with the old weights (a QA finding of stop 51). The cache is kept per model content now."""
    import shutil

    from hemseg.runtime.backends.openvino import OpenVinoRunner

    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    model = onnx.load(str(CONVNET))
    init = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    weights = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array((-weights).astype(weights.dtype), init.name))
    other = model.SerializeToString()
    path, cache = tmp_path / "m.onnx", tmp_path / "ovcache"
    shutil.copy2(CONVNET, path)
    if len(other) != path.stat().st_size:
        pytest.skip("the changed model serializes to another size")
    before = path.stat()
    x = batch(2, seed=4)
    old = OpenVinoRunner.from_path(path, "f32", cache_dir=cache).infer(x)
    path.write_bytes(other)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    again = OpenVinoRunner.from_path(path, "f32", cache_dir=cache)
    reference = OpenVinoRunner.from_path(path, "f32", cache_dir=False).infer(x)
    assert not again.from_cache
    np.testing.assert_array_equal(again.infer(x), reference)
    assert not np.array_equal(reference, old)


def test_cache_dir_defaults_and_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HEMSEG_OPENVINO_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.setenv("HEMSEG_OPENVINO_CACHE", "off")
    assert default_cache_dir() is None
    monkeypatch.delenv("HEMSEG_OPENVINO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "hemseg" / "openvino"


@needs_openvino
def test_an_unusable_cache_folder_is_a_warning_not_an_error(tmp_path, caplog):
    from hemseg.runtime.backends.openvino import OpenVinoRunner

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        r = OpenVinoRunner.from_path(TINY, "f32", cache_dir=blocker / "sub")
    assert r.cache_dir is None and any("cannot use the model cache folder" in m.message for m in caplog.records)


@needs_openvino
def test_a_model_openvino_cannot_compile_is_a_model_error(tmp_path):
    from hemseg.runtime.backends.openvino import OpenVinoRunner

    data = TINY.read_bytes()
    # a valid protobuf that is not a model OpenVINO can read: the good file with its graph field's ops renamed
    bad = data.replace(b"Conv", b"Cnvv")
    path = tmp_path / "bad.onnx"
    path.write_bytes(bad)
    with pytest.raises(ModelError, match="OpenVINO cannot compile"):
        OpenVinoRunner.from_path(path, "f32", cache_dir=False)


@needs_openvino
def test_an_int8_model_openvino_cannot_compile_in_bf16_says_what_runs_it(monkeypatch):
    """OpenVINO's CPU plugin has no bf16 kernels for some quantized graphs ('No suitable implementations'): the
    error now says that --backend openvino runs an INT8 model, without OpenVINO's internals ('... provided memory
    descriptors ...', a QA finding of stop 51); other models' failures keep OpenVINO's reason."""
    import dataclasses

    import openvino as ov

    from hemseg.runtime.backends import openvino as ov_backend

    real_meta = ov_backend.metadata_from_props

    def failing_compile(self, *a, **k):
        raise RuntimeError("No suitable implementations.")

    monkeypatch.setattr(ov.Core, "compile_model", failing_compile)
    for precision, hinted in (("int8", True), ("fp32", False)):
        monkeypatch.setattr(ov_backend, "metadata_from_props",
                            lambda props, path, p=precision: dataclasses.replace(real_meta(props, path), precision=p))
        with pytest.raises(ModelError) as exc:
            ov_backend.OpenVinoRunner.from_path(TINY, "bf16", cache_dir=False, flags={"amx_bf16"})
        assert ("cannot run this INT8 (QDQ) model with inference precision bf16; --backend openvino runs it"
                in exc.value.reason) == hinted
        assert ("No suitable implementations" in exc.value.reason) != hinted


def test_openvino_is_imported_lazily():
    """Importing the runtime (and the backend module) must not import openvino."""
    import subprocess

    code = ("import sys; import hemseg.runtime.segmenter, hemseg.runtime.backends.openvino, "
            "hemseg.runtime.backends.select; print('openvino' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@needs_openvino
def test_a_runner_serves_several_threads_at_once():
    """One infer request per thread: four threads sharing a runner (as a Segmenter used by a web server's workers
    is) got 'Infer Request is busy' in three of them; now each gets the result a lone call gets."""
    from concurrent.futures import ThreadPoolExecutor

    from hemseg.runtime.backends.openvino import OpenVinoRunner

    runner = OpenVinoRunner.from_path(TINY, precision="f32", cache_dir=False)
    x = batch(2)
    expected = runner.infer(x)

    def many(_):
        return [runner.infer(x) for _ in range(20)]

    with ThreadPoolExecutor(4) as pool:
        results = [y for ys in pool.map(many, range(4)) for y in ys]
    assert len(results) == 80 and all(np.array_equal(y, expected) for y in results)
    runner.close()
    with pytest.raises(BackendUnavailable):
        runner.infer(x)


def test_openvino_messages_keep_the_reason_a_line_ending_in_a_colon_introduces():
    """'OpenVINO cannot read the model: While validating node 'opset1::Reshape Reshape_47' ...:' ended there,
    without the reason on the next line."""
    from hemseg.runtime.backends.openvino import _first_line

    exc = RuntimeError("Exception from src/core/src/node.cpp:12:\nWhile validating node 'Reshape_47':\n"
                       "Requested output shape [1,3] is incompatible with input shape [2,3]\nmore detail\n")
    assert _first_line(exc) == ("While validating node 'Reshape_47': Requested output shape [1,3] is incompatible "
                                "with input shape [2,3]")
    assert _first_line(RuntimeError("Exception from x.cpp:1:\nplain reason\nnext")) == "plain reason"
    assert _first_line(RuntimeError("")) == "RuntimeError"


_FIFO_THEN_SIGINT = """
import gc, os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from hemseg.runtime.backends.openvino import OpenVinoRunner
a = OpenVinoRunner.from_path(sys.argv[1], "f32", backend="openvino-f32")
b = OpenVinoRunner.from_path(sys.argv[1], "f32", backend="openvino-f32")
del a; gc.collect()
del b; gc.collect()
try:
    os.kill(os.getpid(), signal.SIGINT)
except KeyboardInterrupt:
    print("interrupted")
"""


@needs_openvino
def test_a_ctrl_c_after_two_models_were_closed_in_the_order_opened_is_an_interrupt_not_a_crash(tmp_path):
    """Each openvino.Core's CPU plugin installs an alternate signal stack and puts back the one it found when it
    goes: two closed in the order they were opened left the first one's (unmapped) stack installed, and the next
    signal killed the process with SIGSEGV (the test suite died with exit 139 on an AVX512-BF16 CPU; stop 59).
    hemseg opens every model with one Core. (Where OpenVINO installs no stack, this passes either way.)"""
    import subprocess

    res = subprocess.run([sys.executable, "-c", _FIFO_THEN_SIGINT, str(TINY)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "HEMSEG_OPENVINO_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 0 and res.stdout.strip() == "interrupted", (res.returncode, res.stderr[-2000:])
