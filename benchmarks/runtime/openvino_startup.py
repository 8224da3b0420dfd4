#!/usr/bin/env python
"""OpenVINO backend start-up and footprint: cold start (empty model cache) vs warm start (cache filled), RSS with
the model loaded and after one batch-1 inference, and the runtime's import time, next to ONNX Runtime.

    python benchmarks/runtime/openvino_startup.py EXPORT_DIR/model.onnx --json OUT.json [--repeats 3]

Every measurement runs in a fresh interpreter (so a start is a real start: nothing imported or cached in memory),
with the model cache in a temporary folder. Runs in the torch-free install.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from hemseg.runtime.segmenter import Segmenter
t_import = time.perf_counter() - t0

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

model, backend, cache = sys.argv[1], sys.argv[2], sys.argv[3]
import os
os.environ["HEMSEG_OPENVINO_CACHE"] = cache
t1 = time.perf_counter()
seg = Segmenter.from_path(model, backend=backend, workers=0)
t_load = time.perf_counter() - t1
rss_loaded = rss()
img = (np.random.default_rng(0).random((256, 256)) * 255).astype(np.uint8)
t2 = time.perf_counter()
seg(img)
t_first = time.perf_counter() - t2
print(json.dumps({"import_s": t_import, "load_s": t_load, "first_prediction_s": t_first, "rss_loaded_mb": rss_loaded,
                  "rss_after_first_mb": rss(), "from_cache": bool(getattr(seg.runner, "from_cache", False)),
                  "precision": getattr(seg.runner, "precision", None)}))
"""


def child(model: Path, backend: str, cache: str) -> dict:
    out = subprocess.check_output([sys.executable, "-c", CHILD, str(model), backend, cache], text=True)
    return json.loads(out.strip().splitlines()[-1])


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result: dict = {"schema": "hemseg-openvino-startup/1", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "command": "python " + " ".join(sys.argv), "model": str(args.model), "runs": {}}
    for backend in ("ort-cpu", "openvino-f32"):
        cold, warm = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="hemseg-ov-cache-") as cache:
                cold.append(child(args.model, backend, cache))
                warm.append(child(args.model, backend, cache))
        keys = ("import_s", "load_s", "first_prediction_s", "rss_loaded_mb", "rss_after_first_mb")
        result["runs"][backend] = {
            "cold": {k: median(cold, k) for k in keys} | {"from_cache": [r["from_cache"] for r in cold]},
            "warm": {k: median(warm, k) for k in keys} | {"from_cache": [r["from_cache"] for r in warm]},
            "precision": cold[0]["precision"], "repeats": args.repeats,
        }
        print(backend, json.dumps(result["runs"][backend]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
