#!/usr/bin/env python
"""CPU roofline: how fast can this machine run FCN-ResNet50 at all, and are the CPU speed targets reachable here?

    python benchmarks/roofline/cpu_roofline.py EXPORT_DIR --json OUT.json

EXPORT_DIR is what ``hemseg-export`` wrote (``model.onnx``, optionally ``model_int8.onnx``); the weights do not matter
for speed. Measured, all single-threaded-per-core defaults of each library, batch 1, median of ``--repeats``:

- the machine's FP32 matrix-multiply rate (numpy/OpenBLAS sgemm, 4096^3) and the INT8 one (ONNX Runtime
  ``MatMulInteger`` uint8 x int8 -> int32, 2048^3, the kernel family behind its quantized convolutions);
- ONNX Runtime's FP32 ``Conv`` and INT8 ``QLinearConv`` (uint8 x int8) on FCN-ResNet50's largest layer
  (the head's 3x3 convolution, 2048 -> 512 channels at 1/8 of the input size), as one-node models;
- whole-model inference: PyTorch eager FP32 (the paper's path), ONNX Runtime FP32 and INT8, with each one's share of
  time spent in convolutions (ONNX Runtime's profiler);
- the shared preprocessing (OpenCV: resize, CLAHE, NLM, bilateral, normalize) of one phantom slice.

From these it derives what the targets of issue 7 (ONNX Runtime FP32 >= 1.6x and INT8 >= 3.0x the PyTorch path, end
to end) would need: the inference time and GFLOP/s (or GOP/s) that the target leaves after the shared preprocessing,
compared with what the kernels above reach on this machine.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def ort_session(model, ort, profile_prefix: str | None = None):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    data = model if isinstance(model, bytes) else Path(model).read_bytes()
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])


def sgemm_gflops(n: int, repeats: int) -> float:
    import numpy as np

    a, b = (np.random.default_rng(i).random((n, n), dtype=np.float32) for i in (0, 1))
    return 2 * n**3 / median_ms(lambda: a @ b, repeats, 1) / 1e6


def one_node_model(node, inputs, outputs, initializers):
    from onnx import helper

    graph = helper.make_graph([node], "one_node", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def int8_gemm_gops(n: int, repeats: int, ort) -> float:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    b = numpy_helper.from_array(np.random.default_rng(1).integers(-127, 128, (n, n), dtype=np.int8), "B")
    model = one_node_model(helper.make_node("MatMulInteger", ["A", "B"], ["Y"]),
                           [helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n])],
                           [helper.make_tensor_value_info("Y", TensorProto.INT32, [n, n])], [b])
    sess = ort_session(model, ort)
    a = np.random.default_rng(0).integers(0, 256, (n, n), dtype=np.uint8)
    return 2 * n**3 / median_ms(lambda: sess.run(None, {"A": a}), repeats, 1) / 1e6


def head_conv_rates(size: int, repeats: int, ort) -> dict:
    """FP32 Conv and INT8 QLinearConv (uint8 x int8, per-channel) of FCN-ResNet50's head convolution."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    cin, cout, hw = 2048, 512, size // 8
    rng = np.random.default_rng(0)
    gop = 2 * cin * cout * 9 * hw * hw / 1e9
    w = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32) * 0.01
    x = rng.random((1, cin, hw, hw), dtype=np.float32)
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    fp32 = one_node_model(helper.make_node("Conv", ["X", "W"], ["Y"], **conv),
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, cin, hw, hw])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, cout, hw, hw])],
                          [numpy_helper.from_array(w, "W")])
    s32 = ort_session(fp32, ort)
    fp32_ms = median_ms(lambda: s32.run(None, {"X": x}), repeats)
    inits = [numpy_helper.from_array(np.array(1 / 255, np.float32), "xs"),
             numpy_helper.from_array(np.array(0, np.uint8), "xz"),
             numpy_helper.from_array((np.abs(w).reshape(cout, -1).max(1) / 127).astype(np.float32), "ws"),
             numpy_helper.from_array(np.zeros(cout, np.int8), "wz"),
             numpy_helper.from_array(rng.integers(-127, 128, w.shape, dtype=np.int8), "W"),
             numpy_helper.from_array(np.array(0.05, np.float32), "ys"),
             numpy_helper.from_array(np.array(128, np.uint8), "yz")]
    q = one_node_model(helper.make_node("QLinearConv", ["X", "xs", "xz", "W", "ws", "wz", "ys", "yz"], ["Y"], **conv),
                       [helper.make_tensor_value_info("X", TensorProto.UINT8, [1, cin, hw, hw])],
                       [helper.make_tensor_value_info("Y", TensorProto.UINT8, [1, cout, hw, hw])], inits)
    s8 = ort_session(q, ort)
    xq = rng.integers(0, 256, (1, cin, hw, hw), dtype=np.uint8)
    int8_ms = median_ms(lambda: s8.run(None, {"X": xq}), repeats)
    return {"shape": f"{cin}->{cout} 3x3 at {hw}x{hw}", "gop": gop, "fp32_ms": fp32_ms, "int8_ms": int8_ms,
            "fp32_gflops": gop / fp32_ms * 1e3, "int8_gops": gop / int8_ms * 1e3, "int8_over_fp32": fp32_ms / int8_ms}


def conv_share(path: Path, x, ort, tmp: str) -> float:
    """Fraction of ONNX Runtime kernel time spent in Conv / QLinearConv over a few profiled runs."""
    sess = ort_session(path, ort, profile_prefix=str(Path(tmp) / path.stem))
    for _ in range(3):
        sess.run(None, {"image": x})
    by_op: collections.Counter = collections.Counter()
    for event in json.loads(Path(sess.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            by_op[event["args"].get("op_name", "?")] += event["dur"]
    total = sum(by_op.values())
    return (by_op["Conv"] + by_op["QLinearConv"]) / total if total else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export_dir", type=Path)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    from hemseg.bench.inputs import count_gflop
    from hemseg.bench.machine import machine_info
    from hemseg.phantom import CATEGORIES, render_case
    from hemseg.runtime.backends.ort import OrtRunner
    from hemseg.runtime.preprocess import preprocess_batch
    from hemseg.train.models import build_model

    fp32_path, int8_path = args.export_dir / "model.onnx", args.export_dir / "model_int8.onnx"
    meta = OrtRunner.from_path(fp32_path).metadata
    if meta.model != "fcn_resnet50":
        print(f"cpu_roofline: error: {fp32_path} holds a {meta.model}; this study is about fcn_resnet50", file=sys.stderr)
        return 1
    spec = meta.preprocess
    size = spec.size
    slice_ = render_case(CATEGORIES[0], 0)[0]
    x = preprocess_batch([slice_], spec)
    out: dict = {"schema": "hemseg-roofline/1", "date": machine_info()["date"], "machine": machine_info(),
                 "command": " ".join(["python", "benchmarks/roofline/cpu_roofline.py", *sys.argv[1:]]),
                 "model": meta.model, "image_size": size, "batch_size": 1, "repeats": args.repeats}
    out["preprocess_ms"] = median_ms(lambda: preprocess_batch([slice_], spec), args.repeats)
    print(f"preprocessing (OpenCV) of one slice: {out['preprocess_ms']:.1f} ms", flush=True)
    out["sgemm_gflops"] = sgemm_gflops(4096, 3)
    out["int8_gemm_gops"] = int8_gemm_gops(2048, 3, ort)
    print(f"FP32 sgemm (numpy): {out['sgemm_gflops']:.1f} GFLOP/s; INT8 GEMM (ORT MatMulInteger u8s8): "
          f"{out['int8_gemm_gops']:.1f} GOP/s", flush=True)
    out["head_conv"] = head_conv_rates(size, args.repeats, ort)
    h = out["head_conv"]
    print(f"head conv {h['shape']} ({h['gop']:.1f} GOP): ORT FP32 {h['fp32_ms']:.0f} ms ({h['fp32_gflops']:.0f} GFLOP/s),"
          f" INT8 {h['int8_ms']:.0f} ms ({h['int8_gops']:.0f} GOP/s), INT8 speed-up {h['int8_over_fp32']:.2f}x", flush=True)

    model = build_model(meta.model).eval()
    gflop = count_gflop(model, size)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        torch_ms = median_ms(lambda: model(xt), args.repeats)
    paths = {"torch": {"infer_ms": torch_ms}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, p in (("ort", fp32_path), ("ort-int8", int8_path)):
            if p.is_file():
                sess = ort_session(p, ort)
                paths[name] = {"infer_ms": median_ms(lambda s=sess: s.run(None, {"image": x}), args.repeats),
                               "conv_time_share": conv_share(p, x, ort, tmp)}
    pre = out["preprocess_ms"]
    torch_e2e = pre + torch_ms
    for name, r in paths.items():
        r["gflops"] = gflop / r["infer_ms"] * 1e3
        r["end_to_end_ms"] = pre + r["infer_ms"]
        r["speedup_vs_torch"] = torch_e2e / r["end_to_end_ms"]
        share = f", {100 * r['conv_time_share']:.1f} % of it in convolutions" if "conv_time_share" in r else ""
        print(f"{name}: inference {r['infer_ms']:.0f} ms ({r['gflops']:.0f} GFLOP/s{share}); end to end "
              f"{r['end_to_end_ms']:.0f} ms, {r['speedup_vs_torch']:.2f}x the PyTorch path", flush=True)
    out.update(gflop_per_image=gflop, paths=paths)

    targets = {}
    for name, factor, rate in (("ort", 1.6, max(out["sgemm_gflops"], h["fp32_gflops"])),
                               ("ort-int8", 3.0, max(out["int8_gemm_gops"], h["int8_gops"]))):
        budget = torch_e2e / factor - pre
        needed = gflop / budget * 1e3 if budget > 0 else float("inf")
        best = torch_e2e / (pre + gflop / rate * 1e3)
        targets[name] = {"target_speedup": factor, "inference_budget_ms": budget, "needed_rate": needed,
                         "best_kernel_rate_here": rate, "speedup_if_whole_model_at_that_rate": best,
                         "reachable": bool(needed <= rate)}
        print(f"target {name} >= {factor}x: leaves {budget:.0f} ms for inference, i.e. {needed:.0f} G(FL)OP/s; the "
              f"best kernel rate measured here is {rate:.0f}, at which the whole model would give {best:.2f}x "
              f"-> {'reachable' if needed <= rate else 'NOT reachable on this machine'}", flush=True)
    out["targets"] = targets
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp_json = args.json.with_suffix(".json.tmp")
        tmp_json.write_text(json.dumps(out, indent=2) + "\n")
        tmp_json.replace(args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
