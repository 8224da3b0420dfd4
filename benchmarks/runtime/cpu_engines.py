#!/usr/bin/env python
"""Inference engines on the CPU, interleaved: batch-1 ``runner.infer`` of each engine in turn, round after round, so
that a changing load on a shared machine hits every engine alike (the ratios are what this measures).

    python benchmarks/runtime/cpu_engines.py EXPORT_DIR --rounds 7 --json OUT.json

Engines (those whose file exists and whose runtime is installed): ONNX Runtime FP32 (``model.onnx``) and INT8
(``model_int8.onnx``); OpenVINO f32 (``model.onnx``), bf16 (only on CPUs with amx_bf16 / avx512_bf16) and INT8
(``model_ov_int8.xml``). Inputs: preprocessed phantom slices at the model's size. Torch-free.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export_dir", type=Path)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import numpy as np

    from hemseg.bench.machine import machine_info
    from hemseg.errors import HemsegError
    from hemseg.phantom import CATEGORIES, render_case
    from hemseg.runtime.backends.openvino import OpenVinoRunner
    from hemseg.runtime.backends.ort import OrtRunner
    from hemseg.runtime.preprocess import preprocess

    d = args.export_dir
    makers = {
        "ort-fp32": lambda: OrtRunner.from_path(d / "model.onnx", "ort-cpu"),
        "ort-int8": lambda: OrtRunner.from_path(d / "model_int8.onnx", "ort-cpu"),
        "openvino-f32": lambda: OpenVinoRunner.from_path(d / "model.onnx", "f32"),
        "openvino-bf16": lambda: OpenVinoRunner.from_path(d / "model.onnx", "bf16"),
        "openvino-int8": lambda: OpenVinoRunner.from_path(d / "model_ov_int8.xml", "auto"),
    }
    runners, skipped = {}, {}
    for name, make in makers.items():
        try:
            runners[name] = make()
        except HemsegError as exc:
            skipped[name] = str(exc)
            print(f"{name}: skipped ({exc})", flush=True)
    spec = next(iter(runners.values())).metadata.preprocess
    x = np.stack([preprocess(render_case(CATEGORIES[0], 7)[0], spec)])
    times: dict[str, list[float]] = {n: [] for n in runners}
    for r in runners.values():  # warm-up
        r.infer(x)
    for _ in range(args.rounds):
        for name, r in runners.items():
            t0 = time.perf_counter()
            r.infer(x)
            times[name].append((time.perf_counter() - t0) * 1000.0)
    med = {n: statistics.median(v) for n, v in times.items()}
    ref = med.get("ort-fp32")
    result = {"schema": "hemseg-cpu-engines/1", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "command": "python " + " ".join(sys.argv), "machine": machine_info(), "image_size": spec.size,
              "batch_size": 1, "rounds": args.rounds, "median_ms": med, "all_ms": times,
              "vs_ort_fp32": {n: ref / m for n, m in med.items()} if ref else None, "skipped": skipped}
    for n, m in med.items():
        print(f"{n:14s} median {m:8.1f} ms" + (f"  {ref / m:.2f}x ORT FP32" if ref else ""), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
