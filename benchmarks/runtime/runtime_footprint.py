#!/usr/bin/env python
"""Runtime footprint: import time, RSS with a model loaded, RSS growth over many predictions, and the end-to-end
overhead of ``Segmenter`` over ONNX Runtime + OpenCV preprocessing timed separately.

    python benchmarks/runtime/runtime_footprint.py EXPORT_DIR/model.onnx --predictions 1000 --json OUT.json

The overhead is measured on ``--overhead-pairs`` images, each run through the Segmenter and then through OpenCV
preprocessing + a bare ONNX Runtime session, one right after the other (so load changes hit both alike).

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
    ap.add_argument("--overhead-pairs", type=int, default=50,
                    help="Segmenter / separate pairs, interleaved, for the overhead measurement")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    imports = [float(subprocess.check_output(
        [sys.executable, "-c", "import time; t=time.perf_counter(); import hemseg.runtime.segmenter, "
         "hemseg.runtime.io, hemseg.runtime.predict; print(time.perf_counter()-t)"]).decode()) for _ in range(3)]

    import numpy as np
    import onnxruntime

    from hemseg.phantom import CATEGORIES, render_case
    from hemseg.runtime.backends.select import open_model
    from hemseg.runtime.postprocess import PostprocessConfig
    from hemseg.runtime.preprocess import preprocess_batch
    from hemseg.runtime.segmenter import Segmenter

    images = [render_case(CATEGORIES[i % 12], 100 + i)[0] for i in range(12)]
    rss0 = rss_mb()
    # threshold only, as the bare session it is compared with (the Segmenter's default adds predict's clean-up)
    loaded = open_model(args.model, "ort-cpu")
    seg = Segmenter(loaded, PostprocessConfig(threshold=loaded.metadata.threshold))
    rss_loaded = rss_mb()
    for im in images[:3]:
        seg([im])
    rss_warm = rss_mb()
    t0 = time.perf_counter()
    rss_trace = []
    for i in range(args.predictions):
        seg([images[i % len(images)]])
        if (i + 1) % 100 == 0:
            rss_trace.append(round(rss_mb(), 2))
    seg_ms = (time.perf_counter() - t0) * 1000 / args.predictions
    rss_end = rss_mb()

    # overhead: Segmenter vs OpenCV preprocessing + a bare ORT session, interleaved image by image so that a change
    # of machine load hits both alike; the median of the per-pair ratios is the overhead
    spec = seg.metadata.preprocess
    sess = onnxruntime.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    sess.run(None, {"image": preprocess_batch(images[:1], spec)})
    t_seg, t_pre, t_inf = [], [], []
    for i in range(args.overhead_pairs):
        im = images[i % len(images)]
        a = time.perf_counter()
        seg([im])
        b = time.perf_counter()
        x = preprocess_batch([im], spec)
        c = time.perf_counter()
        sess.run(None, {"image": x})
        d = time.perf_counter()
        t_seg.append(b - a)
        t_pre.append(c - b)
        t_inf.append(d - c)
    t_seg, t_pre, t_inf = (np.array(v) * 1000 for v in (t_seg, t_pre, t_inf))
    ratios = t_seg / (t_pre + t_inf)
    doc = {
        "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "model": str(args.model),
        "image_size": spec.size,
        "import_s": {"min": min(imports), "all": imports},
        "rss_mb": {"before_model": rss0, "model_loaded": rss_loaded, "after_warmup": rss_warm,
                   f"after_{args.predictions}_predictions": rss_end, "growth_after_warmup": rss_end - rss_warm,
                   "every_100_predictions": rss_trace},
        "segmenter_ms_per_slice_during_rss_run": seg_ms,
        "overhead_pairs": args.overhead_pairs,
        "interleaved_median_ms": {"segmenter": float(np.median(t_seg)), "opencv_preprocess": float(np.median(t_pre)),
                                  "ort_infer": float(np.median(t_inf)),
                                  "preprocess_plus_infer": float(np.median(t_pre + t_inf))},
        "overhead_vs_separate": float(np.median(ratios) - 1.0),
        "overhead_vs_separate_p10_p90": [float(np.percentile(ratios, 10) - 1), float(np.percentile(ratios, 90) - 1)],
    }
    print(json.dumps(doc, indent=2))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
