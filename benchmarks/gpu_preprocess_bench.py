"""Time hemseg preprocessing: OpenCV on the CPU vs. the CUDA kernels (GpuPreprocessor), per stage.

Run on a machine with a CUDA GPU and CuPy (``pip install 'hemseg[gpu]'``)::

    python benchmarks/gpu_preprocess_bench.py --sizes 512,384x320,1024 --batch 16 --iters 20 --json gpu_pre.json

For each input size, a batch of synthetic uint8 images (smooth gradients + shapes + noise) goes through
``hemseg.runtime.preprocess`` stage by stage with OpenCV (host wall clock, ``cv2.getNumThreads()`` threads) and
through ``GpuPreprocessor.run`` (CUDA events per stage; ``upload`` is the host-to-device copy of the raw images).
``e2e_ms`` is the host wall time of a whole GPU call including upload and the final synchronization. Reported
numbers are medians over ``--iters`` timed runs after ``--warmup`` runs, per batch, plus the parity of the GPU
tensor against the CPU tensor. Without CuPy or a GPU, ``--cpu-only`` still times the OpenCV side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from hemseg.runtime.preprocess import PreprocessSpec, normalize, resize_image

STAGES = ("upload", "resize", "clahe", "nlm", "bilateral", "normalize", "total")


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"512,384x320"`` -> ``[(512, 512), (384, 320)]`` as (height, width)."""
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        if "x" in part:
            h, w = part.split("x", 1)
            out.append((int(h), int(w)))
        else:
            out.append((int(part), int(part)))
    if not out:
        raise SystemExit("gpu_preprocess_bench: error: --sizes is empty")
    return out


def synth(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = 40.0 + 120.0 * (x / max(w - 1, 1)) + 40.0 * np.sin(y / max(h, 1) * 6.0 + seed)
    cv2.circle(img, (w // 3, h // 2), max(2, min(h, w) // 6), 225.0, -1)
    cv2.rectangle(img, (w // 2, h // 5), (w * 3 // 4, h // 2), 25.0, -1)
    img += rng.normal(0.0, 15.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def cpu_stages(images: list[np.ndarray], spec: PreprocessSpec) -> tuple[dict[str, float], np.ndarray]:
    """One batch through the OpenCV chain, stage by stage (ms for the whole batch) and the float32 batch."""
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    cur = [resize_image(im, spec.size) for im in images]
    t1 = time.perf_counter()
    t["resize"] = (t1 - t0) * 1e3
    if spec.clahe:
        clahe = cv2.createCLAHE(clipLimit=float(spec.clahe_clip), tileGridSize=(spec.clahe_tiles, spec.clahe_tiles))
        cur = [clahe.apply(im) for im in cur]
        t2 = time.perf_counter()
        t["clahe"], t1 = (t2 - t1) * 1e3, t2
    if spec.nlm:
        cur = [cv2.fastNlMeansDenoising(im, None, h=float(spec.nlm_h), templateWindowSize=int(spec.nlm_template),
                                        searchWindowSize=int(spec.nlm_search)) for im in cur]
        t2 = time.perf_counter()
        t["nlm"], t1 = (t2 - t1) * 1e3, t2
    if spec.bilateral:
        cur = [cv2.bilateralFilter(im, int(spec.bilateral_d), float(spec.bilateral_sigma_color),
                                   float(spec.bilateral_sigma_space)) for im in cur]
        t2 = time.perf_counter()
        t["bilateral"], t1 = (t2 - t1) * 1e3, t2
    batch = np.stack([normalize(im, spec) for im in cur])
    t2 = time.perf_counter()
    t["normalize"] = (t2 - t1) * 1e3
    t["total"] = (t2 - t0) * 1e3
    return t, batch


def median_dict(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = [k for k in STAGES if all(k in r for r in runs)]
    return {k: round(statistics.median(r[k] for r in runs), 4) for k in keys}


def bench_size(hw: tuple[int, int], args: argparse.Namespace, spec: PreprocessSpec, gpu) -> dict:
    images = [synth(hw[0], hw[1], seed) for seed in range(args.batch)]
    row: dict = {"input_hw": list(hw), "batch": args.batch}
    cpu_runs = []
    cpu_batch = None
    for k in range(args.warmup + args.cpu_iters):
        t, cpu_batch = cpu_stages(images, spec)
        if k >= args.warmup:
            cpu_runs.append(t)
    row["cpu_ms"] = median_dict(cpu_runs)
    if gpu is not None:
        cp, pre = gpu
        out = cp.empty((args.batch, spec.channels, spec.size, spec.size), dtype=np.dtype(args.dtype))
        gpu_runs, e2e = [], []
        for k in range(args.warmup + args.iters):
            t0 = time.perf_counter()
            pre.run(images, out=out)       # synchronizes at its end to read the CUDA events
            t1 = time.perf_counter()
            if k >= args.warmup:
                gpu_runs.append(dict(pre.last_timings))
                e2e.append((t1 - t0) * 1e3)
        row["gpu_ms"] = median_dict(gpu_runs)
        row["gpu_e2e_ms"] = round(statistics.median(e2e), 4)
        diff = np.abs(cp.asnumpy(out).astype(np.float32) - cpu_batch)
        row["parity"] = {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
                         "one_gray_level": 1.0 / 255.0 / spec.std}
        row["speedup_total"] = round(row["cpu_ms"]["total"] / max(row["gpu_e2e_ms"], 1e-9), 2)
    return row


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpu_preprocess_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="512,384x320,1024", help="input sizes, comma separated: S or HxW")
    ap.add_argument("--batch", type=int, default=8, help="images per batch")
    ap.add_argument("--iters", type=int, default=20, help="timed GPU runs")
    ap.add_argument("--cpu-iters", type=int, default=3, help="timed CPU runs (OpenCV NLM is slow)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs first (kernel compilation, caches)")
    ap.add_argument("--spec-size", type=int, default=256, help="network input size S")
    ap.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="GPU output dtype")
    ap.add_argument("--device", type=int, default=0, help="CUDA device index")
    ap.add_argument("--cpu-only", action="store_true", help="time only OpenCV (no CuPy / GPU needed)")
    ap.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.iters < 1 or args.cpu_iters < 1 or args.warmup < 0:
        ap.error("--batch, --iters and --cpu-iters must be >= 1, --warmup >= 0")

    spec = PreprocessSpec(size=args.spec_size)
    gpu = None
    meta: dict = {"spec": spec.to_dict(), "opencv": cv2.__version__, "opencv_threads": cv2.getNumThreads(),
                  "numpy": np.__version__, "python": platform.python_version(), "cpu": platform.processor(),
                  "dtype": args.dtype}
    if not args.cpu_only:
        from hemseg.errors import HemsegError
        from hemseg.runtime.cuda.gpu_preprocess import GpuPreprocessor, import_cupy

        try:
            cp = import_cupy()
            pre = GpuPreprocessor(spec, device=args.device)
        except HemsegError as exc:
            print(f"gpu_preprocess_bench: error: {exc} (use --cpu-only to time OpenCV alone)", file=sys.stderr)
            return 2
        props = cp.cuda.runtime.getDeviceProperties(args.device)
        meta.update({"cupy": cp.__version__, "gpu": props["name"].decode() if isinstance(props["name"], bytes)
                     else str(props["name"]), "cuda_runtime": cp.cuda.runtime.runtimeGetVersion()})
        gpu = (cp, pre)

    rows = []
    for hw in parse_sizes(args.sizes):
        row = bench_size(hw, args, spec, gpu)
        rows.append(row)
        line = f"{hw[0]}x{hw[1]} x{args.batch}: CPU total {row['cpu_ms']['total']:.1f} ms"
        if gpu is not None:
            g = row["gpu_ms"]
            stages = ", ".join(f"{k} {g[k]:.3f}" for k in STAGES if k in g and k != "total")
            line += (f" | GPU e2e {row['gpu_e2e_ms']:.2f} ms (events: {stages}; total {g['total']:.3f} ms)"
                     f" | speedup {row['speedup_total']}x | max|gpu-cpu| {row['parity']['max_abs']:.4f}")
        print(line)
    if args.json is not None:
        write_json_atomic(args.json, {"meta": meta, "results": rows})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
