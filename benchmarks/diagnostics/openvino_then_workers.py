#!/usr/bin/env python
"""Reproduces the crash documented in ``hemseg/train/workers.py``: OpenVINO inference with hemseg's runner, then
three tiny training runs with DataLoader workers, in one process.

Usage (from the repository root; the ``[openvino]`` and ``[train]`` extras)::

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/openvino_then_workers.py WORKERS [--cache]

On the 2-core AMX Xeon of 2026-12-04 (Debian glibc 2.36): ``2`` and ``2 --cache`` exited 139 (segmentation fault in
the training process, glibc's ``_dl_runtime_resolve_xsavec`` under Python's SIGCHLD handler, seen in gdb) on every
run, with forked and with spawned workers; ``0`` printed ``ok``; ``LD_BIND_NOW=1`` before the command printed
``ok`` with 2 workers (2 of 2 runs each). With one compiled model at a time (created, run and freed before the
next) it did not crash. Not tried on an AVX2-only CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
for p in (REPO, REPO / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("workers", type=int)
    ap.add_argument("--cache", action="store_true", help="use an OpenVINO model cache folder")
    args = ap.parse_args()

    from blobs import make_blobs

    from hemseg.runtime.backends.openvino import OpenVinoRunner
    from hemseg.train.trainer import run_training

    tmp = Path(tempfile.mkdtemp())
    model = REPO / "tests" / "data" / "tiny_64_convnet.onnx"
    cache = tmp / "ovcache" if args.cache else False
    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    first = OpenVinoRunner.from_path(model, "f32", cache_dir=cache)  # two compiled models alive at once, as in
    second = OpenVinoRunner.from_path(model, "f32", cache_dir=cache)  # the cache test; one at a time did not crash
    first.infer(x)
    second.infer(x)
    del first, second
    data = make_blobs(tmp / "d", 8, size=64, seed=0)
    for i in range(3):
        run_training(data, tmp / f"r{i}", model="unet", unet_base=8, image_size=64, batch_size=4, device="cpu",
                     precision="fp32", progress=False, weights="none", no_preprocess=True, steps=6,
                     workers=args.workers, seed=0)
    print("ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
