#!/usr/bin/env python
"""Runtime footprint: import time, RSS with a model loaded, RSS growth over many predictions, and the end-to-end
overhead of ``Segmenter`` over ONNX Runtime + OpenCV preprocessing timed separately.

    python benchmarks/runtime/runtime_footprint.py EXPORT_DIR/model.onnx --predictions 1000 --json OUT.json

Runs in the torch-free install too (it only uses hemseg.runtime and hemseg.phantom).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--predictions", type=int, default=1000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    imports = [float(subprocess.check_output(
        [sys.executable, "-c", "import time; t=time.perf_counter(); import hemseg.runtime.segmenter, "
         "hemseg.runtime.io, hemseg.runtime.predict; print(time.perf_counter()-t)"]).decode()) for _ in range(3)]

    import numpy as np
    import onnxruntime

    from hemseg.phantom import CATEGORIES, render_case
    from hemseg.runtime.preprocess import preprocess_batch
    from hemseg.runtime.segmenter import Segmenter

    images = [render_case(CATEGORIES[i % 12], 100 + i)[0] for i in range(12)]
    rss0 = rss_mb()
    seg = Segmenter.from_path(args.model, backend="ort-cpu")
    rss_loaded = rss_mb()
    for im in images[:3]:
        seg([im])
    rss_warm = rss_mb()
    t0 = time.perf_counter()
    for i in range(args.predictions):
        seg([images[i % len(images)]])
    seg_ms = (time.perf_counter() - t0) * 1000 / args.predictions
    rss_end = rss_mb()

    spec = seg.metadata.preprocess if hasattr(seg, "metadata") else None
    sess = onnxruntime.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    n = min(args.predictions, 100)
    t_pre = t_inf = 0.0
    for i in range(n):
        a = time.perf_counter()
        x = preprocess_batch([images[i % len(images)]], spec)
        b = time.perf_counter()
        sess.run(None, {"image": x})
        t_pre += b - a
        t_inf += time.perf_counter() - b
    parts_ms = (t_pre + t_inf) * 1000 / n
    doc = {
        "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "model": str(args.model),
        "import_s": {"min": min(imports), "all": imports},
        "rss_mb": {"before_model": rss0, "model_loaded": rss_loaded, "after_warmup": rss_warm,
                   f"after_{args.predictions}_predictions": rss_end, "growth_after_warmup": rss_end - rss_warm},
        "segmenter_ms_per_slice": seg_ms,
        "separate_ms_per_slice": {"opencv_preprocess": t_pre * 1000 / n, "ort_infer": t_inf * 1000 / n,
                                  "sum": parts_ms},
        "overhead_vs_separate": seg_ms / parts_ms - 1.0,
    }
    print(json.dumps(doc, indent=2))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
