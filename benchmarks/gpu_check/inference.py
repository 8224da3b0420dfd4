"""Phase 3: FCN-ResNet50 inference on the GPU: PyTorch CUDA FP32 / FP16 / BF16, eager and CUDA graph, batch 1/64/16.

For each configuration, in priority order (the figures the goals need first):

- ``model``: the network alone on a device-resident, preprocessed batch (``TorchRunner.run_device``), timed with
  CUDA events over enough iterations to last ~0.25 s, and the achieved TFLOP/s = FLOPs per image x batch / time;
- ``e2e``: uint8 host slices -> CUDA preprocessing (``GpuPreprocessor``) -> the network -> logits to the host ->
  masks at the slice size, i.e. ``hemseg.bench``'s ``BenchPath`` with a GPU preprocessor, timed by
  ``hemseg.bench.harness.measure`` (host wall clock per batch, after warm-up).

FLOPs per image come from ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add, convolutions and matrix
products) on the model itself, not from a hard-coded figure. TFLOP/s are compared with the datasheet's dense peak
of the precision (see ``common.DATASHEET_PEAKS_TFLOPS``) and with a matrix product measured here (8192^3, the same
precision). The weights are random (seed 0): speed does not depend on them.

Dry run: CPU, FP32 eager only, 32 px, batches 1 and 2, OpenCV preprocessing; everything else is reported skipped.
"""

from __future__ import annotations

import copy
import time

from gpu_check.common import PhaseRecord, datasheet_peaks

CUDA_CONFIGS = (("fp16", True), ("bf16", True), ("fp16", False), ("bf16", False), ("fp32", True), ("fp32", False))
CUDA_BATCHES = (1, 64, 16)
MODEL_SECONDS = 0.25
E2E_SECONDS = 0.3


def matmul_ceilings(torch, n: int = 8192) -> dict:
    """TFLOP/s of an n^3 matrix product per precision (mean of 10 after 3 warm-ups), the measured ceilings."""
    out = {}
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        for key, dtype, tf32 in (("bf16", torch.bfloat16, False), ("fp16", torch.float16, False),
                                 ("tf32", torch.float32, True), ("fp32", torch.float32, False)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.randn(n, n, device="cuda", dtype=dtype)
            b = torch.randn(n, n, device="cuda", dtype=dtype)
            for _ in range(3):
                a @ b
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(10):
                a @ b
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end) / 10
            out[key] = round(2 * n**3 / (ms / 1000) / 1e12, 1)
            del a, b
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
        torch.cuda.empty_cache()
    return out


def time_model(torch, runner, x, cuda: bool, seconds: float, min_iters: int) -> tuple[float, int]:
    """Mean milliseconds of ``runner.run_device(x)`` and the iteration count."""
    def sync():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(3 if cuda else 1):
        runner.run_device(x)
    sync()
    t0 = time.perf_counter()
    runner.run_device(x)
    sync()
    one = max(time.perf_counter() - t0, 1e-6)
    n = int(min(500, max(min_iters, seconds / one)))
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            runner.run_device(x)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / n, n
    t0 = time.perf_counter()
    for _ in range(n):
        runner.run_device(x)
    return (time.perf_counter() - t0) * 1000.0 / n, n


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"


def _pool(size: int, n: int) -> list:
    from hemseg.phantom import CATEGORIES, render_case

    return [render_case(CATEGORIES[i % len(CATEGORIES)], 1234 + i, size=(size, size))[0] for i in range(n)]


def _device_batch(torch, runner, images, spec, gpu_pre):
    """The preprocessed batch as the runner takes it on its device (channels-last on CUDA)."""
    if gpu_pre is not None:
        x = torch.from_dlpack(gpu_pre.run(images, dtype=runner.input_dtype))
    else:
        from hemseg.runtime.preprocess import preprocess_batch

        x = torch.from_numpy(preprocess_batch(images, spec))
    x = x.to(runner.device, runner.dtype)
    return x.contiguous(memory_format=torch.channels_last) if runner.on_gpu else x


def run(rec: PhaseRecord, args) -> None:
    import torch

    from hemseg.bench.harness import BenchConfig, measure
    from hemseg.bench.inputs import count_gflop
    from hemseg.bench.pipeline import BenchPath
    from hemseg.runtime.preprocess import PreprocessSpec
    from hemseg.train.models import build_model
    from hemseg.train.torch_runner import TorchRunner

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        rec.skip("all inference configurations", "torch.cuda.is_available() is False on this machine")
        rec.finish(ran_something=False)
        return
    size = 256 if cuda else 32
    configs = CUDA_CONFIGS if cuda else (("fp32", False),)
    batches = CUDA_BATCHES if cuda else (1, 2)
    if not cuda:
        rec.skip("CUDA FP32/FP16/BF16, CUDA graphs, CUDA preprocessing, batch 16/64",
                 "dry run: CPU FP32 eager at 32 px only")
    torch.manual_seed(0)
    model = build_model("fcn_resnet50").eval()
    gflop = count_gflop(model, size)
    spec = PreprocessSpec(size=size)
    rec.doc.update({"model": "fcn_resnet50 (random init, seed 0)", "image_size": size, "gflop_per_image": gflop,
                    "flop_counter": "torch.utils.flop_counter.FlopCounterMode, 2 FLOPs per multiply-add",
                    "results": []})
    gpu_pre = None
    if cuda:
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(0)
        rec.doc["gpu"] = name
        rec.doc["torch_settings"] = {"cudnn_benchmark": True, "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                                     "channels_last": True, "autocast": False}
        rec.doc["datasheet_peaks_tflops"] = datasheet_peaks(name)
        rec.save()
        try:
            rec.doc["matmul_tflops"] = matmul_ceilings(torch)
        except Exception as exc:   # the ceilings are a reference, not the measurement: go on without them
            rec.skip("measured matrix-product ceilings", f"failed: {_one_line(exc)}")
        try:
            from hemseg.runtime.cuda.gpu_preprocess import GpuPreprocessor

            gpu_pre = GpuPreprocessor(spec)
        except Exception as exc:   # HemsegError (no CuPy, no device, NVRTC) or anything CuPy raises
            rec.skip("CUDA preprocessing (the model-only and end-to-end inputs fall back to OpenCV)",
                     f"failed: {_one_line(exc)}")
    rec.save()
    pool = _pool(size, 16 if cuda else 4)
    fp32_key = "tf32" if (cuda and torch.backends.cudnn.allow_tf32) else "fp32"
    for precision, graph in configs:
        name = "torch-" + ("cuda-" if cuda else "cpu-") + precision + ("-graph" if graph else "")
        if args.deadline.left() < (12 if cuda else 3):
            rec.skip(name, "the phase's time cap was reached")
            continue
        try:
            runner = TorchRunner(copy.deepcopy(model), device="cuda" if cuda else "cpu", precision=precision,
                                 cuda_graph=graph)
        except Exception as exc:
            rec.skip(name, f"failed: {_one_line(exc)}")
            continue
        path = BenchPath(name, runner, spec, 0.5, gpu_preprocessor=gpu_pre)
        try:
            for bs in batches:
                if args.deadline.left() < (6 if cuda else 2):
                    rec.skip(f"{name} batch {bs}", "the phase's time cap was reached")
                    continue
                row = {"config": name, "precision": precision, "cuda_graph": graph, "batch_size": bs}
                runner.reset_gpu_peak()
                try:
                    x = _device_batch(torch, runner, [pool[k % len(pool)] for k in range(bs)], spec, gpu_pre)
                    ms, n = time_model(torch, runner, x, cuda, MODEL_SECONDS if cuda else 0.0, 5 if cuda else 1)
                    row["model_ms"], row["model_iters"] = round(ms, 4), n
                    row["model_images_per_s"] = round(bs / ms * 1000.0, 1)
                    row["tflops"] = float(f"{gflop * bs / ms:.4g}") if gflop else None   # GFLOP per ms = TFLOP/s
                    if cuda and gflop:
                        key = fp32_key if precision == "fp32" else precision
                        row["peak_key"] = key
                        peaks = rec.doc.get("datasheet_peaks_tflops")
                        if peaks:
                            row["pct_of_datasheet_peak"] = round(100 * row["tflops"] / peaks[key], 1)
                        if rec.doc.get("matmul_tflops"):
                            row["pct_of_matmul"] = round(100 * row["tflops"] / rec.doc["matmul_tflops"][key], 1)
                    del x
                    if cuda and gpu_pre is None:
                        rec.skip(f"{name} batch {bs} end to end", "no CUDA preprocessing (see above)")
                    else:
                        cfg = BenchConfig(iters=None if cuda else 1, seconds=E2E_SECONDS if cuda else None,
                                          warmup=3 if cuda else 0)
                        m = measure(path, pool, bs, cfg)
                        row["e2e_preprocessing"] = "CUDA (GpuPreprocessor)" if cuda else "OpenCV (dry run)"
                        row["e2e_ms"] = {k: round(v, 4) for k, v in m["end_to_end_ms"].items() if k != "n"}
                        row["e2e_iters"] = m["iterations"]
                        row["e2e_stages_ms"] = {k: round(v["mean"], 4) for k, v in m["stages_ms"].items()}
                        row["e2e_images_per_s"] = round(m["throughput"], 1)
                    row["gpu_memory_mb"] = runner.gpu_memory_mb()
                except Exception as exc:   # one configuration failing must not stop the others
                    row["error"] = _one_line(exc)
                    rec.skip(f"{name} batch {bs}", f"failed: {row['error']}")
                rec.doc["results"].append(row)
                print(f"{name} b{bs}: " + (f"model {row['model_ms']:.3f} ms ({row['tflops']} TFLOP/s)"
                                           if "model_ms" in row else row.get("error", "")), flush=True)
                rec.save()
        finally:
            path.close()
            del runner, path
            if cuda:
                torch.cuda.empty_cache()
    ran = any("model_ms" in r for r in rec.doc["results"])
    if not ran and rec.doc["results"]:
        rec.fail("every configuration failed: " + rec.doc["results"][0]["error"])
        return
    rec.finish(ran_something=ran)
