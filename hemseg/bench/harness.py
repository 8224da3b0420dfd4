"""The measurement loop: same inputs for every path, warm-up excluded, stage times per batch, mask agreement.

Mask agreement with the PyTorch path follows :func:`hemseg.runtime.metrics.agreement`: ``dice_vs_torch`` is the
pooled Dice over all pixels of all inputs, null when it is not measurable (``dice_measurable`` false: the PyTorch
masks need enough foreground; two near-empty mask sets 'agree' with 1.0, which a script reading the key took for
perfect agreement), ``agreement_vs_torch`` holds the pooled Dice either way with the number of inputs where the two
disagree on whether there is any lesion. A Dice below :data:`DICE_FLAG_BELOW` or not measurable sets ``dice_flag``, and the
tables never show it as a bare number. ``logit_rel_l2_vs_torch`` compares the logits themselves (relative L2 over
all inputs), which stays meaningful when the masks are empty.

Every path runs the runtime's one pipeline (:class:`hemseg.bench.pipeline.BenchPath` wraps
:func:`hemseg.runtime.pipeline.run_batch`), post-processing included, so the stage times are those of
``hemseg predict``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from hemseg.bench.machine import machine_info, reset_peak_rss, rss_mb
from hemseg.bench.paths import BenchContext, Skip, build_path
from hemseg.bench.pipeline import STAGES, BenchPath
from hemseg.bench.series import SERIES_BATCH, measure_series
from hemseg.bench.stats import summarize
from hemseg.runtime.metrics import agreement, describe_unmeasurable

log = logging.getLogger(__name__)

SCHEMA = "hemseg-bench/1"
#: a path whose masks agree with the PyTorch path's less than this is flagged in every table
DICE_FLAG_BELOW = 0.98


@dataclass
class BenchConfig:
    batch_sizes: tuple[int, ...] = (1, 4, 16)
    iters: int | None = None
    seconds: float | None = 5.0
    warmup: int = 3
    n_images: int = 16
    #: slices of the series-throughput run per path (0: none; ``hemseg-bench --series`` defaults to
    #: :data:`~hemseg.bench.series.SERIES_SLICES`), its batch size and preprocessing workers
    series: int = 0
    series_batch: int = SERIES_BATCH
    series_workers: int | str = "auto"


def _batches(pool: list[np.ndarray], bs: int):
    i = 0
    while True:
        yield [pool[(i + k) % len(pool)] for k in range(bs)]
        i += bs


def _accuracy_pass(path: BenchPath, pool: list[np.ndarray], bs: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Masks (original sizes) and logits (network resolution) of every pool image, through the path's pipeline."""
    results = [path.run_batch(pool[start:start + bs]) for start in range(0, len(pool), bs)]
    return [m for r in results for m in r.masks], np.concatenate([r.logits for r in results])


def _rel_l2(values: np.ndarray, reference: np.ndarray) -> float:
    ref = float(np.linalg.norm(reference.astype(np.float64)))
    return float(np.linalg.norm((values - reference).astype(np.float64))) / max(ref, 1e-12)


def measure(path: BenchPath, pool: list[np.ndarray], bs: int, cfg: BenchConfig) -> dict:
    """Time ``path`` on batches of ``bs`` slices cycled from ``pool``: end to end and per stage, after warm-up."""
    gen = _batches(pool, bs)
    for _ in range(cfg.warmup):
        path.run(next(gen))
    e2e: list[float] = []
    per_stage: dict[str, list[float]] = {s: [] for s in STAGES}
    started = time.perf_counter()
    while True:
        batch = next(gen)
        t0 = time.perf_counter()
        _, stages = path.run(batch)
        e2e.append((time.perf_counter() - t0) * 1000.0)
        for s in STAGES:
            per_stage[s].append(stages[s])
        done = len(e2e)
        if cfg.iters is not None and done >= cfg.iters:
            break
        if cfg.iters is None and time.perf_counter() - started >= (cfg.seconds or 0) and done >= 3:
            break
    wall = time.perf_counter() - started
    return {
        "end_to_end_ms": summarize(e2e),
        # the timed runs themselves: the percentiles can be recomputed (few runs make a p99 the maximum)
        "end_to_end_samples_ms": [round(x, 3) for x in e2e],
        "stages_ms": {s: summarize(v) for s, v in per_stage.items()},
        "throughput": bs * len(e2e) / sum(e2e) * 1000.0,
        "iterations": len(e2e),
        "wall_s": wall,
    }


def run_bench(ctx: BenchContext, paths: list[str], cfg: BenchConfig, pool: list[np.ndarray],
              progress: Callable[[str], None] | None = None) -> dict:
    """Measure each path on ``pool`` (uint8 slices); returns the JSON-able result document."""
    say = progress or (lambda msg: log.info(msg))
    results: list[dict] = []
    skipped: list[dict] = []
    reference: list[np.ndarray] | None = None
    ref_logits: np.ndarray | None = None
    torch_e2e: dict[int, float] = {}
    series: list[dict] = []
    ordered = sorted(paths, key=lambda p: p != "torch")  # the PyTorch path first: it is the reference
    for name in ordered:
        try:
            path = build_path(name, ctx)
        except Skip as exc:
            say(f"{name}: skipped ({exc.reason})")
            skipped.append({"path": name, "reason": exc.reason})
            continue
        try:
            say(f"{name}: {path.description}")
            peak_ok = reset_peak_rss()
            masks, logits = _accuracy_pass(path, pool, max(cfg.batch_sizes))
            if name == "torch":
                reference, ref_logits = masks, logits
            rel_l2 = _rel_l2(logits, ref_logits) if reference is not None else None
            agree = agreement(masks, reference) if reference is not None else None
            dice = agree["dice"] if agree is not None else None
            measurable = agree["measurable"] if agree is not None else None
            if agree is not None and not measurable and name != "torch":
                say(f"  {name}: mask agreement with torch not measurable: {describe_unmeasurable(agree)}")
            for bs in cfg.batch_sizes:
                m = measure(path, pool, bs, cfg)
                cur, peak = rss_mb()
                mean = m["end_to_end_ms"]["mean"]
                if name == "torch":
                    torch_e2e[bs] = mean
                gflop = ctx.gflop_per_image
                entry = {
                    "path": name, "batch_size": bs, **m,
                    "speedup_vs_torch": (torch_e2e[bs] / mean) if bs in torch_e2e else None,
                    "dice_vs_torch": dice if measurable is not False else None,
                    "dice_measurable": measurable,
                    "dice_flag": dice is not None and (dice < DICE_FLAG_BELOW or not measurable),
                    "agreement_vs_torch": agree,
                    "logit_rel_l2_vs_torch": rel_l2,
                    "peak_rss_mb": peak if peak_ok else None, "rss_mb": cur,
                    "gpu_memory_mb": path.gpu_memory_mb(),
                    "achieved_gflops": (gflop * bs / (m["stages_ms"]["infer"]["mean"] / 1000.0)) if gflop else None,
                    "description": path.description,
                    "engine_threads": path.threads or None,
                }
                results.append(entry)
                say(f"  batch {bs}: mean {mean:.1f} ms/batch (p50 {m['end_to_end_ms']['p50']:.1f}, "
                    f"{m['iterations']} timed runs), {entry['throughput']:.1f} slices/s")
            if cfg.series:
                series.append(_series_entry(path, ctx, pool, cfg, results, series))
                s = series[-1]
                say(f"  series of {s['slices']}: {s['sequential_slices_per_s']:.2f} slices/s sequential, "
                    + (f"{s['pipelined_slices_per_s']:.2f} pipelined ({s['workers']} workers)"
                       if s["pipelined_slices_per_s"] is not None else "no pipelined run (0 workers)"))
        finally:
            path.close()
    return {
        "schema": SCHEMA,
        "machine": machine_info(),
        "model": ctx.model_info(),
        # --seconds is ignored with --iters: recorded only where it applied
        "config": {"batch_sizes": list(cfg.batch_sizes), "iters": cfg.iters,
                   "seconds": cfg.seconds if not cfg.iters else None,
                   "warmup": cfg.warmup, "n_images": len(pool), "inputs": ctx.inputs_description,
                   "dice_flag_below": DICE_FLAG_BELOW, "series_slices": cfg.series,
                   "series_batch_size": cfg.series_batch,
                   "engine_threads": ctx.threads or "each library's default"},
        "results": results,
        "series": series,
        "skipped": skipped,
    }


def _series_entry(path: BenchPath, ctx: BenchContext, pool: list[np.ndarray], cfg: BenchConfig, results: list[dict],
                  series: list[dict]) -> dict:
    """Series throughput of one path (:mod:`hemseg.bench.series`), next to its batch-1 latency and against the
    PyTorch path's series (measured first, when it runs)."""
    s = measure_series(path, ctx.metadata, pool, cfg.series, cfg.series_batch, cfg.series_workers)
    b1 = next((r for r in results if r["path"] == path.name and r["batch_size"] == 1), None)
    s["batch1_latency_ms_p50"] = b1["end_to_end_ms"]["p50"] if b1 else None
    torch_s = next((t for t in series if t["path"] == "torch"), s if path.name == "torch" else None)
    # this path's own best rate (pipelined where it ran) against the PyTorch path's sequential and pipelined ones
    rate = s["pipelined_slices_per_s"] or s["sequential_slices_per_s"]
    s["speedup_vs_torch_sequential"] = rate / torch_s["sequential_slices_per_s"] if torch_s else None
    s["speedup_vs_torch_pipelined"] = (rate / torch_s["pipelined_slices_per_s"]
                                       if torch_s and torch_s["pipelined_slices_per_s"] else None)
    return s
