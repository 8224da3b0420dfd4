"""Phase 2: preprocessing speed, the CUDA kernels (``GpuPreprocessor``) against OpenCV on the same machine.

Batch 1 and batch 32 of 256 px slices through the whole chain (resize, CLAHE, NLM, bilateral, normalize), timed
by ``benchmarks/gpu_preprocess_bench.py`` (OpenCV: host wall clock with its default threads; GPU: host wall clock
of a whole call, upload and final synchronization included, plus CUDA-event stage times), with the parity of the
GPU tensor against the CPU one. ``speedup_total`` = OpenCV total / GPU end to end. Dry run: 64 px, batches 1 and 2,
OpenCV only.
"""

from __future__ import annotations

import argparse

import gpu_preprocess_bench as gpb  # benchmarks/gpu_preprocess_bench.py (benchmarks/ is on sys.path, see run.py)

from gpu_check.common import PhaseRecord


def run(rec: PhaseRecord, args) -> None:
    import cv2

    from hemseg.errors import HemsegError
    from hemseg.runtime.preprocess import PreprocessSpec

    size = 64 if args.dry_run else 256
    batches = (1, 2) if args.dry_run else (1, 32)
    spec = PreprocessSpec(size=size)
    rec.doc.update({"input_px": size, "spec": spec.to_dict(), "opencv": cv2.__version__,
                    "opencv_threads": cv2.getNumThreads(), "results": []})
    gpu = None
    if args.dry_run:
        rec.skip("CUDA preprocessing", "dry run: OpenCV only, on the CPU")
    else:
        try:
            from hemseg.runtime.cuda.gpu_preprocess import GpuPreprocessor, import_cupy

            cp = import_cupy()
            gpu = (cp, GpuPreprocessor(spec))
            name = cp.cuda.runtime.getDeviceProperties(0)["name"]
            rec.doc["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
        except HemsegError as exc:
            rec.skip("CUDA preprocessing", str(exc))
    rec.save()
    for bs in batches:
        if args.deadline.left() < (5 if args.dry_run else 15):
            rec.skip(f"batch {bs}", "the phase's time cap was reached")
            continue
        ns = argparse.Namespace(batch=bs, warmup=0 if args.dry_run else 2, iters=30,
                                cpu_iters=1 if args.dry_run else (5 if bs == 1 else 2), dtype="float32")
        row = gpb.bench_size((size, size), ns, spec, gpu)
        if gpu is not None:
            row["gpu_images_per_s"] = round(bs / row["gpu_e2e_ms"] * 1000.0, 1)
        row["cpu_images_per_s"] = round(bs / row["cpu_ms"]["total"] * 1000.0, 1)
        rec.doc["results"].append(row)
        print(f"preprocess batch {bs}: OpenCV {row['cpu_ms']['total']:.2f} ms"
              + (f", CUDA {row['gpu_e2e_ms']:.3f} ms ({row['speedup_total']}x)" if gpu is not None else ""))
        rec.save()
    rec.finish(ran_something=bool(rec.doc["results"]))
