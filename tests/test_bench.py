"""hemseg-bench: the JSON schema, skipped paths with reasons, statistics, Markdown regeneration and the chart."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from hemseg.bench.output import console_table, markdown
from hemseg.bench.regen import regenerate
from hemseg.bench.stats import summarize
from hemseg.cli.bench_cmd import bench

DATA = Path(__file__).parent / "data"
RESULT_KEYS = {"path", "batch_size", "end_to_end_ms", "stages_ms", "throughput", "speedup_vs_torch", "dice_vs_torch"}
SERIES_KEYS = {"path", "slices", "batch_size", "workers", "sequential_slices_per_s", "pipelined_slices_per_s",
               "pipelined_vs_sequential", "sequential_wall_s", "pipelined_wall_s", "identical_masks",
               "stage_ms_per_slice", "stage_bound_slices_per_s", "batch1_latency_ms_p50", "speedup_vs_torch_sequential",
               "speedup_vs_torch_pipelined"}
FLAG_KEYS = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}
HAS_OPENVINO = __import__("importlib").util.find_spec("openvino") is not None


def test_summarize_known_values():
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["p50"] == 3.0 and s["mean"] == 22.0 and s["n"] == 5 and s["max"] == 100.0
    assert s["p95"] == pytest.approx(80.8)
    assert s["stdev"] == pytest.approx(np.std([1, 2, 3, 4, 100], ddof=1))
    empty = summarize([])
    assert empty["n"] == 0 and math.isnan(empty["p50"])


@pytest.fixture()
def export_dir(tmp_path):
    d = tmp_path / "export"
    d.mkdir()
    shutil.copy(DATA / "tiny_64.onnx", d / "model.onnx")
    return d


def _run(args):
    return CliRunner().invoke(bench, args, catch_exceptions=False)


def test_smoke_bench_schema(export_dir, tmp_path):
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    png = tmp_path / "bench.png"
    res = _run([str(export_dir), "--paths", "torch,ort,ort-int8,trt,torch-cuda,openvino,openvino-bf16,openvino-int8,"
                "torch-bf16", "--batch-sizes", "1,2", "--iters", "2", "--warmup", "1", "--images", "3",
                "--series", "5", "--series-batch-size", "2", "--series-workers", "2", "--json", str(out),
                "--markdown", str(md), "--plot", str(png), "-q"])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["schema"] == "hemseg-bench/1"
    for key in ("cpu", "cores", "date", "libraries", "cpu_flags"):
        assert key in doc["machine"]
    assert FLAG_KEYS <= set(doc["machine"]["cpu_flags"])
    assert doc["config"]["series_slices"] == 5 and doc["config"]["series_batch_size"] == 2
    ort_rows = [r for r in doc["results"] if r["path"] == "ort"]
    assert [r["batch_size"] for r in ort_rows] == [1, 2]
    for r in ort_rows:
        assert RESULT_KEYS <= set(r)
        for k in ("p50", "p95", "p99", "mean"):
            assert r["end_to_end_ms"][k] > 0
        assert set(r["stages_ms"]) == {"preprocess", "copy_in", "infer", "copy_out", "postprocess"}
        assert r["throughput"] > 0 and r["iterations"] == 2
        # the tiny model has no checkpoint: the torch path is skipped, so there is nothing to compare against
        assert r["speedup_vs_torch"] is None and r["dice_vs_torch"] is None
    skipped = {s["path"]: s["reason"] for s in doc["skipped"]}
    assert {"torch", "ort-int8", "trt", "torch-cuda", "openvino-int8", "torch-bf16"} <= set(skipped)
    assert "model_int8.onnx" in skipped["ort-int8"]
    assert all(reason for reason in skipped.values())
    from hemseg.runtime import cpu_features

    if cpu_features.bf16_flag() is None:  # bf16 paths skip with the missing flags named
        assert "amx_bf16" in skipped["torch-bf16"]
        assert "amx_bf16" in skipped["openvino-bf16"] if HAS_OPENVINO else "not installed" in skipped["openvino-bf16"]
    # series throughput next to batch-1 latency, for every path that ran
    ran = sorted({r["path"] for r in doc["results"]})
    bf16_ov = ["openvino-bf16"] if HAS_OPENVINO and cpu_features.bf16_flag() else []  # runs on bf16 CPUs only
    assert ran == sorted(["ort"] + (["openvino"] if HAS_OPENVINO else []) + bf16_ov)
    assert sorted(s["path"] for s in doc["series"]) == ran
    for s in doc["series"]:
        assert SERIES_KEYS <= set(s)
        assert s["slices"] == 5 and s["workers"] == 2 and s["identical_masks"] is True
        assert s["sequential_slices_per_s"] > 0 and s["pipelined_slices_per_s"] > 0
        assert s["batch1_latency_ms_p50"] == next(r["end_to_end_ms"]["p50"] for r in doc["results"]
                                                  if r["path"] == s["path"] and r["batch_size"] == 1)
        assert s["speedup_vs_torch_sequential"] is None  # no torch path to compare with
    if HAS_OPENVINO:
        ov = [r for r in doc["results"] if r["path"] == "openvino"]
        assert [r["batch_size"] for r in ov] == [1, 2] and "OpenVINO" in ov[0]["description"]
        assert "model_ov_int8.xml" in skipped["openvino-int8"]
    text = md.read_text()
    assert "| ort | 1 |" in text and "Series throughput" in text and "CPU flags: avx2" in text
    assert "series of 5 slices" in res.output
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 50
    assert "skipped trt" in res.output


def test_the_results_name_the_model_bytes_timed_and_their_export_verification(export_dir, tmp_path):
    """A model changed after its export, or a --no-verify export, was timed without a word, and the JSON did not tie
    a number to the bytes timed (a QA finding of stop 52): each file's digest and the export's verdict on it are
    recorded, and a file the gates do not vouch for is warned of, as hemseg predict does."""
    import hashlib

    out = tmp_path / "b.json"
    res = _run([str(export_dir), "--paths", "ort", "--batch-sizes", "1", "--iters", "1", "--warmup", "0",
                "--images", "1", "--series", "0", "--json", str(out), "-q"])
    assert res.exit_code == 0, res.output
    files = json.loads(out.read_text())["model"]["files"]
    digest = hashlib.sha256((export_dir / "model.onnx").read_bytes()).hexdigest()
    assert files == {"model.onnx": {"sha256": digest, "export_verification": None}}
    assert "model.onnx: its export verification is absent (no export report lists it)" in res.output


def test_unknown_path_and_missing_dir(tmp_path, export_dir):
    res = CliRunner().invoke(bench, [str(export_dir), "--paths", "ort,warp-drive"])
    assert res.exit_code != 0 and "warp-drive" in str(res.exception)
    res = CliRunner().invoke(bench, [str(tmp_path / "nope")])
    assert res.exit_code != 0


def _doc(dice=1.0):
    stage = summarize([1.0, 2.0])
    row = {"path": "ort", "batch_size": 1, "end_to_end_ms": summarize([3.0, 4.0]),
           "stages_ms": {s: stage for s in ("preprocess", "copy_in", "infer", "copy_out", "postprocess")},
           "throughput": 250.0, "speedup_vs_torch": 2.0, "dice_vs_torch": dice, "dice_flag": dice < 0.98,
           "peak_rss_mb": 300.0, "achieved_gflops": 10.0}
    return {"schema": "hemseg-bench/1",
            "machine": {"date": "2026-11-24T00:00:00+00:00", "cpu": "Test CPU", "cores": 2, "gpu": None,
                        "libraries": {"numpy": "2"}},
            "model": {"model": "fcn_resnet50", "image_size": 256, "gflop_per_image": 69.2},
            "config": {"inputs": "3 phantom slices"}, "results": [row], "skipped": [{"path": "trt", "reason": "no"}],
            "command": "hemseg-bench x"}


def test_flagged_dice_shows_in_tables():
    assert "masks differ" in console_table(_doc(0.5))
    assert "masks differ" not in console_table(_doc(0.999))
    assert "masks differ" in markdown(_doc(0.5))


def test_regenerate_markdown(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "2026-11-24_cpu.json").write_text(json.dumps(_doc()))
    (res / "train_gpu.json").write_text(json.dumps({"date": "2026-11-23", "what": "training"}))
    out = tmp_path / "BENCHMARKS.md"
    text = regenerate(res, out)
    assert out.read_text() == text
    assert "Test CPU" in text and "`hemseg-bench x`" in text and "train_gpu.json" in text
    assert "| ort | 1 |" in text


def _roofline_doc(reachable_ort: bool) -> dict:
    target = {"target_speedup": 1.6, "inference_budget_ms": 617.0, "needed_rate": 112.0, "best_kernel_rate_here": 75.0,
              "speedup_if_whole_model_at_that_rate": 1.12, "reachable": reachable_ort}
    return {"schema": "hemseg-roofline/1", "date": "2026-11-25T10:00:00+00:00",
            "machine": {"date": "2026-11-25T10:00:00+00:00", "cpu": "Test CPU", "cores": 2},
            "command": "python benchmarks/roofline/cpu_roofline.py X", "model": "fcn_resnet50", "image_size": 256,
            "batch_size": 1, "preprocess_ms": 88.0, "sgemm_gflops": 73.5, "int8_gemm_gops": 74.2,
            "head_conv": {"shape": "2048->512 3x3 at 32x32", "gop": 19.3, "fp32_gflops": 75.0, "int8_gops": 74.0,
                          "int8_over_fp32": 0.98},
            "paths": {"torch": {"infer_ms": 1039.0, "gflops": 67.0, "end_to_end_ms": 1127.0, "speedup_vs_torch": 1.0},
                      "ort": {"infer_ms": 907.0, "gflops": 76.0, "conv_time_share": 1.0, "end_to_end_ms": 995.0,
                              "speedup_vs_torch": 1.13}},
            "targets": {"ort": target}}


def test_regenerate_renders_roofline_results(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "2026-11-24_cpu.json").write_text(json.dumps(_doc()))
    (res / "2026-11-25_roofline.json").write_text(json.dumps(_roofline_doc(False)))
    text = regenerate(res, tmp_path / "BENCHMARKS.md")
    # newest first, rendered as a table with its command, not as a bare link
    assert text.index("roofline on Test CPU") < text.index("| ort | 1 |")
    assert "`python benchmarks/roofline/cpu_roofline.py X`" in text and "Other measurement" not in text
    assert "| ort | 907 | 76 | 100 % | 995 | 1.13x |" in text
    assert "ONNX Runtime FP32 >= 1.6x" in text and "**not reachable on this machine**" in text
    (res / "2026-11-25_roofline.json").write_text(json.dumps(_roofline_doc(True)))
    assert "not reachable" not in regenerate(res, tmp_path / "BENCHMARKS.md")


def test_saved_results_regenerate(tmp_path):
    """Every file in benchmarks/results/ renders (a malformed saved result would break the committed BENCHMARKS.md)."""
    res = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    text = regenerate(res, tmp_path / "BENCHMARKS.md")
    assert all(f.name in text for f in res.glob("*.json"))


@pytest.mark.torch
def test_torch_bf16_runner_autocasts_channels_last_and_stays_close_to_fp32():
    import torch

    from hemseg.train.torch_runner import TorchRunner

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 1)).eval()
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    ref = TorchRunner(net, device="cpu").infer(x)
    bf16 = TorchRunner(net, device="cpu", cpu_bf16=True)
    assert bf16.name == "torch-bf16"
    w = bf16.model[0].weight
    assert w.dtype == torch.float32 and w.is_contiguous(memory_format=torch.channels_last)
    got = bf16.infer(x)
    assert got.dtype == np.float32 and got.shape == ref.shape
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert 0 < rel < 3e-2  # bf16 differs from FP32, but not by much
    with pytest.raises(ValueError):
        TorchRunner(net, device="cuda", cpu_bf16=True)


def test_series_rows_render_and_old_results_without_series_still_do():
    doc = _doc()
    assert "Series throughput" not in markdown(doc)  # results saved before series existed
    doc["series"] = [{"path": "ort", "slices": 32, "batch_size": 8, "workers": 2, "sequential_slices_per_s": 1.0,
                      "pipelined_slices_per_s": 1.5, "pipelined_vs_sequential": 1.5, "identical_masks": True,
                      "stage_bound_slices_per_s": 2.0, "batch1_latency_ms_p50": 900.0,
                      "speedup_vs_torch_sequential": 1.2}]
    text = markdown(doc)
    assert "Series throughput: 32 slices" in text and "| ort | 900.0 | 1.00 | 1.50 | 2 | 1.50x | 1.20x | 2.00 | yes |" in text
    assert "series of 32 slices" in console_table(doc)


@pytest.mark.torch
def test_torch_runner_precisions():
    import torch

    from hemseg.train.torch_runner import TorchRunner

    model = torch.nn.Conv2d(3, 1, 1)
    cpu = TorchRunner(model, device="cpu")
    assert cpu.precision == "fp32" and cpu.dtype == torch.float32 and cpu.name == "torch"
    out = cpu.infer(np.zeros((2, 3, 8, 8), np.float32))
    assert out.shape == (2, 1, 8, 8) and out.dtype == np.float32
    for kwargs in ({"precision": "bf16"}, {"precision": "fp16"}, {"half": True}, {"cuda_graph": True}):
        with pytest.raises(ValueError, match="CUDA-only"):
            TorchRunner(model, device="cpu", **kwargs)
    with pytest.raises(ValueError, match="unknown precision"):
        TorchRunner(model, device="cpu", precision="int8")


def test_result_paths_and_the_checkpoint_are_checked_before_measuring(export_dir, tmp_path):
    """A --json under a file failed after the whole run (nothing written); --plot x.jpg wrote PNG bytes; a
    --checkpoint that is not the export's source was compared as if it were."""
    (tmp_path / "afile").write_text("x")
    res = CliRunner().invoke(bench, [str(export_dir), "--json", str(tmp_path / "afile" / "b.json")])
    assert res.exit_code != 0 and "is a file, not a folder" in str(res.exception)
    res = CliRunner().invoke(bench, [str(export_dir), "--plot", str(tmp_path / "b.jpg")])
    assert res.exit_code != 0 and "give a .png name" in str(res.exception)
    # tests/data/tiny_64.onnx records checkpoint_sha256 "000...0": no file has that SHA-256
    other = tmp_path / "other.pt"
    other.write_bytes(b"not the export's checkpoint")
    res = CliRunner().invoke(bench, [str(export_dir), "--checkpoint", str(other)])
    assert res.exit_code != 0 and "is not the checkpoint" in str(res.exception)


def test_machine_info_records_a_cpu_flag_override_and_the_thread_settings(monkeypatch):
    """A bench run with HEMSEG_CPU_FLAGS set reported the pinned flags as the CPU's; thread settings, which move
    the speed-ups, were not recorded."""
    from hemseg.bench.machine import machine_info

    monkeypatch.setenv("HEMSEG_CPU_FLAGS", "avx2 fma")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    info = machine_info()
    assert info["cpu_flags_override"] == "avx2 fma" and info["threads"]["OMP_NUM_THREADS"] == "1"
    assert info["cpu_flags"]["avx2"] and not info["cpu_flags"]["avx512f"]
    monkeypatch.delenv("HEMSEG_CPU_FLAGS")
    real = machine_info()
    assert real["cpu_flags_override"] is None and real["cpu_flags_hardware"] is None
    assert info["cpu_flags_hardware"] == real["cpu_flags"]  # the CPU's own flags stay on record (QA, stop 59)


def test_result_paths_never_replace_another_file_and_are_checked_writable(export_dir, tmp_path):
    """--json e/model.onnx replaced the model being measured (exit 0); --json x --markdown x left Markdown in x; an
    unwritable --json failed only after the whole measurement. A rerun may still replace its own results."""
    from hemseg.bench import output
    from hemseg.cli.bench_cmd import _check_outputs
    from hemseg.errors import UsageError

    model = export_dir / "model.onnx"
    before = model.read_bytes()
    res = CliRunner().invoke(bench, [str(export_dir), "--json", str(model)])
    assert res.exit_code != 0 and "is not an earlier hemseg-bench JSON result" in str(res.exception)
    assert model.read_bytes() == before
    same = tmp_path / "x.json"
    with pytest.raises(UsageError, match="name the same file"):
        _check_outputs(same, same, None)
    with pytest.raises(UsageError, match="cannot write in /proc"):
        _check_outputs(Path("/proc/hemseg-bench.json"), None, None)
    mine = tmp_path / "README.md"
    mine.write_text("# my notes\n")
    with pytest.raises(UsageError, match="not an earlier hemseg-bench Markdown table"):
        _check_outputs(None, mine, None)
    image = tmp_path / "scan.png"
    cv2.imwrite(str(image), np.zeros((8, 8), np.uint8))
    with pytest.raises(UsageError, match="not an earlier hemseg-bench plot"):
        _check_outputs(None, None, image)
    # earlier results of each kind are replaced on a rerun
    root = Path(__file__).resolve().parents[1]
    doc = json.loads((root / "benchmarks/results/2026-11-24_cpu-2core_fcn256_random-init.json").read_text())
    output.write_json(doc, tmp_path / "r.json")
    output.write_markdown(doc, tmp_path / "r.md")
    output.plot(doc, tmp_path / "r.png")
    assert cv2.imread(str(tmp_path / "r.png")) is not None
    _check_outputs(tmp_path / "r.json", tmp_path / "r.md", tmp_path / "r.png")


def _with_props(src: Path, dst: Path, **props) -> Path:
    """A copy of the ONNX model ``src`` with some hemseg metadata properties replaced."""
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(src))
    kept = [(e.key, e.value) for e in model.metadata_props if e.key not in props]
    del model.metadata_props[:]
    for key, value in kept + [(k, str(v)) for k, v in props.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(dst))
    return dst


def test_a_checkpoint_changed_since_the_export_is_refused_not_compared(tmp_path):
    """Without --checkpoint, the recorded checkpoint was used unchecked: retrained in the same run folder, it made an
    accurate engine look like '!! masks differ' (exit 0)."""
    ckpt = tmp_path / "run" / "best.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"retrained since the export")
    d = tmp_path / "export"
    d.mkdir()
    _with_props(DATA / "tiny_64.onnx", d / "model.onnx", **{"hemseg.checkpoint_path": ckpt})
    res = CliRunner().invoke(bench, [str(d), "--paths", "torch,ort", "--iters", "1", "--batch-sizes", "1"])
    assert res.exit_code != 0 and "has changed since" in str(res.exception) and str(ckpt) in str(res.exception)
    res = CliRunner().invoke(bench, [str(d), "--checkpoint", str(tmp_path / "nothere.pt")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_an_unusable_model_file_is_an_error_and_a_run_that_measures_nothing_fails(export_dir, tmp_path):
    """A corrupt model_int8.onnx was 'skipped' (exit 0); a run whose every path was skipped exited 0 with an empty
    table and no --plot."""
    from hemseg.errors import BackendUnavailable, ModelError

    (export_dir / "model_int8.onnx").write_bytes(b"junk")
    res = CliRunner().invoke(bench, [str(export_dir), "--paths", "ort-int8", "--iters", "1", "--batch-sizes", "1"])
    assert isinstance(res.exception, ModelError) and "model_int8.onnx" in str(res.exception)
    png = tmp_path / "b.png"
    res = CliRunner().invoke(bench, [str(export_dir), "--paths", "trt,torch-cuda", "--plot", str(png)])
    assert isinstance(res.exception, BackendUnavailable) and "nothing was measured" in str(res.exception)
    assert "trt skipped" in str(res.exception) and not png.exists()


@pytest.mark.parametrize("args, words", [
    (["--paths", ""], "names no path"),
    (["--paths", "ort,torch,ort"], "names ort more than once"),
    (["--batch-sizes", "1,1"], "Invalid value for '--batch-sizes': a batch size is named twice"),
    (["--batch-sizes", "0"], "Invalid value for '--batch-sizes': batch sizes must be between 1 and 1024"),
    (["--batch-sizes", "1025"], "Invalid value for '--batch-sizes': batch sizes must be between 1 and 1024"),
])
def test_empty_or_repeated_paths_and_batch_sizes_are_refused(export_dir, args, words):
    """--paths '' ran every path; repeated paths gave speed-ups against the last torch row."""
    res = CliRunner().invoke(bench, [str(export_dir), *args])
    assert res.exit_code != 0 and words in (res.output + str(res.exception))


def test_two_outputs_through_dot_dot_are_one_file(tmp_path):
    from hemseg.cli.bench_cmd import _check_outputs
    from hemseg.errors import UsageError

    (tmp_path / "sub").mkdir()
    with pytest.raises(UsageError, match="name the same file"):
        _check_outputs(tmp_path / "same.json", tmp_path / "sub" / ".." / "same.json", None)


def test_a_k_fold_export_folder_points_at_its_folds(tmp_path):
    from hemseg.bench.inputs import read_export_metadata
    from hemseg.errors import UsageError

    for k in (1, 2):
        (tmp_path / f"fold_{k}").mkdir()
        shutil.copy(DATA / "tiny_64.onnx", tmp_path / f"fold_{k}" / "model.onnx")
    with pytest.raises(UsageError, match="a K-fold export .*fold_1"):
        read_export_metadata(tmp_path)


def test_series_without_workers_reports_no_pipelined_run(export_dir, tmp_path, monkeypatch):
    """--series-workers 0: the 'pipelined' run was the sequential code timed a second time (warm, after the cold
    sequential one), reported as a 1.34x pipelining speed-up above the stage bound. It is not run: its columns
    are '-'. The timed runs follow an untimed pass, so the first timed one is not the cold one."""
    import hemseg.bench.series as series_module

    calls = []
    timed = series_module._timed
    monkeypatch.setattr(series_module, "_timed", lambda seg, images: calls.append(seg.workers) or timed(seg, images))
    out = tmp_path / "b.json"
    md = tmp_path / "b.md"
    res = _run([str(export_dir), "--paths", "ort", "--batch-sizes", "1", "--iters", "1", "--warmup", "0",
                "--images", "2", "--series", "3", "--series-batch-size", "2", "--series-workers", "0",
                "--json", str(out), "--markdown", str(md), "-q"])
    assert res.exit_code == 0, res.output
    (s,) = json.loads(out.read_text())["series"]
    assert s["workers"] == 0 and s["sequential_slices_per_s"] > 0
    assert s["pipelined_slices_per_s"] is None and s["pipelined_vs_sequential"] is None
    assert s["identical_masks"] is None and s["speedup_vs_torch_sequential"] is None
    assert calls == [0]  # one timed sequential run, no second timing of the same code
    row = next(line for line in md.read_text().splitlines() if line.startswith("| ort |") and line.count("|") == 10)
    assert row.endswith("| - | 0 | - | - | " + row.split(" | ")[-2] + " | - |")


def test_markdown_names_usable_cores_and_threads():
    """taskset -c 0 hemseg-bench ...: the header said '(2 cores)', the whole machine's count, and not the thread
    setting the engines ran with."""
    doc = _doc()
    doc["machine"]["cores"], doc["machine"]["usable_cores"] = 2, 1
    doc.setdefault("config", {})["engine_threads"] = 1
    head = markdown(doc).splitlines()[0]
    assert "(2 cores, 1 usable by the benchmark)" in head and "engine threads: 1" in head
    doc["machine"]["usable_cores"] = 2
    assert "(2 cores)" in markdown(doc).splitlines()[0]
    from hemseg.bench.machine import machine_info
    from hemseg.runtime.cpu_features import usable_cpus

    assert machine_info()["usable_cores"] == usable_cpus()


def test_markdown_says_when_the_cpu_flags_are_overridden():
    doc = _doc()
    doc["machine"]["cpu_flags"] = {"avx2": True, "amx_bf16": False}
    assert "CPU flags: avx2 yes" in markdown(doc)
    doc["machine"]["cpu_flags_override"] = "avx2 fma"
    assert "overridden by HEMSEG_CPU_FLAGS" in markdown(doc)


def test_threads_reach_onnx_runtime_and_openvino():
    """--threads set torch's threads only; ONNX Runtime and OpenVINO ran on their own defaults."""
    from hemseg.runtime.backends.ort import OrtRunner

    runner = OrtRunner.from_path(DATA / "tiny_64.onnx", "ort-cpu", threads=1)
    assert runner.session.get_session_options().intra_op_num_threads == 1
    if HAS_OPENVINO:
        from hemseg.runtime.backends.openvino import OpenVinoRunner

        ov = OpenVinoRunner.from_path(DATA / "tiny_64.onnx", "f32", cache_dir=False, threads=1)
        assert int(ov.compiled.get_property("INFERENCE_NUM_THREADS")) == 1


def test_a_bench_whose_plot_cannot_be_written_replaces_none_of_its_outputs(export_dir, tmp_path, monkeypatch):
    """A full disk at --plot: b.json and b.md were the new run's, b.png the old run's, a mix of two runs. All three
    are written first now and renamed into place together."""
    import errno

    import hemseg.runtime.io.writers as writers

    outs = [tmp_path / "b.json", tmp_path / "b.md", tmp_path / "b.png"]
    args = [str(export_dir), "--paths", "ort", "--batch-sizes", "1", "--iters", "1", "--warmup", "0", "--images", "2",
            "--series", "0", "--json", str(outs[0]), "--markdown", str(outs[1]), "--plot", str(outs[2]), "-q"]
    assert _run(args).exit_code == 0
    before = [p.read_bytes() for p in outs]
    real = writers._write_temp

    def full(path, data):
        if path.suffix == ".png":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(writers, "_write_temp", full)
    res = CliRunner().invoke(bench, args)
    assert res.exit_code != 0 and isinstance(res.exception, OSError) and res.exception.filename == str(outs[2])
    assert [p.read_bytes() for p in outs] == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary file left


def test_a_model_re_exported_while_the_benchmark_runs_is_refused(export_dir, monkeypatch):
    """hemseg-export into the folder while hemseg-bench ran: the torch row was the old model, the engine rows the
    new one, one report (Dice vs torch 0, 'masks differ'), exit 0. A model file that records another checkpoint
    than the export the run started with is refused now."""
    onnx = pytest.importorskip("onnx")  # the torch-free install has no onnx package

    from hemseg.runtime.backends.ort import OrtRunner

    model = onnx.load(str(export_dir / "model.onnx"))
    for prop in model.metadata_props:
        if prop.key == "hemseg.checkpoint_sha256":
            prop.value = "f" * 64  # another checkpoint's export
    onnx.save(model, str(export_dir.parent / "other.onnx"))
    real = OrtRunner.from_path.__func__

    def re_exported(cls, path, *args, **kwargs):
        os.replace(export_dir.parent / "other.onnx", export_dir / "model.onnx")
        return real(cls, path, *args, **kwargs)

    monkeypatch.setattr(OrtRunner, "from_path", classmethod(re_exported))
    res = CliRunner().invoke(bench, [str(export_dir), "--paths", "ort", "--batch-sizes", "1", "--iters", "1",
                                     "--warmup", "0", "--images", "2", "--series", "0"])
    assert res.exit_code != 0 and "not " in str(res.exception) and "re-exported while hemseg-bench ran" in str(
        res.exception), res.output


def test_the_help_names_every_path_and_what_openvino_runs():
    """--paths named no path in --help (only the error for a wrong one listed them), and bench's 'openvino' (f32) is
    not predict's --backend openvino (bf16 on an AMX CPU) without a word."""
    from click.testing import CliRunner

    from hemseg.bench.paths import ALL_PATHS
    from hemseg.cli.bench_cmd import bench

    text = " ".join(CliRunner().invoke(bench, ["--help"]).output.split())
    assert all(name in text.replace("- ", "-") for name in ALL_PATHS)
    assert "openvino runs f32" in text


def test_the_table_says_the_stage_columns_are_means(tmp_path):
    """The table put p50 / p95 / p99 end-to-end columns beside 'preproc ms' / 'infer ms' / 'post ms' that were means
    without a word (they do not add up to a percentile). Tables written before still count as earlier results."""
    from hemseg.bench import output
    from hemseg.cli.bench_cmd import _check_outputs

    root = Path(__file__).resolve().parents[1]
    doc = json.loads((root / "benchmarks/results/2026-11-24_cpu-2core_fcn256_random-init.json").read_text())
    text = output.markdown(doc)
    header = next(line for line in text.splitlines() if line.startswith("| path | batch"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    for stage, column in (("preprocess", "preproc mean ms"), ("infer", "infer mean ms"),
                          ("postprocess", "post mean ms")):
        i = cells.index(column)
        row = output.table_rows(doc)[0]
        assert row[i] == f"{doc['results'][0]['stages_ms'][stage]['mean']:.1f}"
    assert "preproc mean ms" in output.console_table(doc)
    old = tmp_path / "old.md"
    old.write_text(text.replace("preproc mean ms", "preproc ms").replace("infer mean ms", "infer ms")
                   .replace("post mean ms", "post ms").replace("| timed runs ", ""))
    _check_outputs(None, old, None)
    older = tmp_path / "older.md"  # a table of stop 55 (the stage means named, no runs column)
    older.write_text(text.replace("| timed runs ", ""))
    _check_outputs(None, older, None)


def test_the_table_shows_the_runs_and_no_percentile_of_too_few_runs(tmp_path):
    """A 'p99' of 3 timed runs is their maximum: the table printed it beside p50 without the count (QA, stop 56).
    The runs are a column; p95 / p99 show from 20 / 100 runs; the engine threads of each path are said."""
    from hemseg.bench import output

    root = Path(__file__).resolve().parents[1]
    doc = json.loads((root / "benchmarks/results/2026-11-24_cpu-2core_fcn256_random-init.json").read_text())
    r = doc["results"][0]
    i = output.HEADER.index
    for n, p95, p99 in ((3, "-", "-"), (20, f"{r['end_to_end_ms']['p95']:.1f}", "-"),
                        (100, f"{r['end_to_end_ms']['p95']:.1f}", f"{r['end_to_end_ms']['p99']:.1f}")):
        r["end_to_end_ms"]["n"] = n
        row = output.table_rows(doc)[0]
        assert (row[i("timed runs")], row[i("p95 ms")], row[i("p99 ms")]) == (str(n), p95, p99)
    r["engine_threads"] = "ONNX Runtime's default (one intra-op thread per physical core)"
    doc["model"]["files"] = {"model_ov_int8.xml": {"sha256": "x", "export_verification": None}}
    for text in (output.markdown(doc), output.console_table(doc)):
        assert f"Engine threads: {r['path']} ONNX Runtime's default" in text
        assert "model_ov_int8.xml (verification absent)" in text and "fewer than 20 / 100 timed runs" in text


def test_a_dataset_smaller_than_images_is_said(export_dir, tmp_path):
    """--images 5 with a dataset of 2 slices benchmarked on 2 without a word (only the JSON's n_images told)."""
    data = tmp_path / "d"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for k in range(2):
        cv2.imwrite(str(data / "images" / f"s{k}.png"), np.full((64, 64), 40 + k, np.uint8))
        cv2.imwrite(str(data / "masks" / f"s{k}.png"), np.zeros((64, 64), np.uint8))
    res = _run([str(export_dir), "--paths", "ort", "--iters", "1", "--warmup", "0", "--images", "5", "--series", "0",
                "--batch-sizes", "1", "--data", str(data), "--json", str(tmp_path / "b.json"), "-q"])
    assert res.exit_code == 0, res.output
    assert "--images 5, but" in res.output and "holds 2 slice(s)" in res.output
    assert json.loads((tmp_path / "b.json").read_text())["config"]["n_images"] == 2


def test_a_model_name_that_is_no_file_is_said_as_such(tmp_path):
    """A folder named model.onnx was reported as 'no model.onnx or model.plan.json' (QA, stop 56)."""
    from hemseg.bench.inputs import read_export_metadata
    from hemseg.errors import ModelError, UsageError

    with pytest.raises(UsageError, match="no model.onnx or model.plan.json"):
        read_export_metadata(tmp_path)
    (tmp_path / "model.onnx").mkdir()
    with pytest.raises(ModelError, match="not a regular file") as exc:
        read_export_metadata(tmp_path)
    assert exc.value.path == tmp_path / "model.onnx"
