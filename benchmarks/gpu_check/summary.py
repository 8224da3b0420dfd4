"""``OUT/summary.md``: each phase's status, and each goal of the GPU check next to the figure measured for it.

Rewritten after every phase, so a run cut short still has a summary of what finished. A goal is ``met``,
``MISSED``, ``not measured`` (with the reason) or, in a dry run, ``not judged``: a CPU run at toy sizes says
nothing about a GPU.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from gpu_check.common import PHASE_FILES, read_phase

#: the goals of the issue; the summary's goal table has one row per entry, in this order
GOALS = (
    ("pre_b1", "CUDA preprocessing >= 50x OpenCV, batch 1 of 256 px slices"),
    ("pre_b32", "CUDA preprocessing >= 50x OpenCV, batch 32 of 256 px slices"),
    ("e2e_b1", "GPU-preprocessed batch-1 end to end <= 2 ms"),
    ("b64", "throughput at batch 64 >= 30 % of the GPU's FLOP peak for its precision"),
    ("train", "paper-scale training < 5 min"),
    ("dice", "held-out pooled Dice >= 0.85"),
)


def _fmt(x, spec: str = "{:.3g}") -> str:
    return "-" if x is None else spec.format(x)


def _verdict(ok: bool | None, why: str, dry: bool) -> str:
    if dry:
        return "not judged (dry run: CPU, toy sizes)"
    if ok is None:
        return f"not measured ({why})"
    return "met" if ok else "**MISSED**"


def _phase_reason(doc: dict | None, phase: str) -> str:
    if doc is None:
        return f"no {PHASE_FILES[phase]}"
    if doc["status"] in ("failed", "timeout"):
        return f"{phase} {doc['status']}: {doc.get('error') or ''}"[:200]
    reasons = "; ".join(s["reason"] for s in doc.get("skipped", []))
    return f"{phase} {doc['status']}" + (f": {reasons}"[:200] if reasons else "")


def _preprocess_goal(pre: dict | None, batch: int):
    rows = [r for r in (pre or {}).get("results", []) if r.get("batch") == batch and "speedup_total" in r]
    if not rows:
        return None, "-", _phase_reason(pre, "preprocess")
    r = rows[0]
    text = f"{r['speedup_total']:.1f}x (OpenCV {r['cpu_ms']['total']:.2f} ms, CUDA {r['gpu_e2e_ms']:.3f} ms)"
    return r["speedup_total"] >= 50, text, ""


def _e2e_goal(inf: dict | None):
    rows = [r for r in (inf or {}).get("results", []) if r.get("batch_size") == 1 and "e2e_ms" in r
            and r.get("e2e_preprocessing", "").startswith("CUDA")]
    if not rows:
        return None, "-", _phase_reason(inf, "inference")
    best = min(rows, key=lambda r: r["e2e_ms"]["p50"])
    text = f"{best['e2e_ms']['p50']:.3f} ms p50 ({best['config']}; p95 {best['e2e_ms']['p95']:.3f} ms)"
    return best["e2e_ms"]["p50"] <= 2.0, text, ""


def _b64_goal(inf: dict | None):
    rows = [r for r in (inf or {}).get("results", []) if r.get("batch_size") == 64 and r.get("tflops")]
    if not rows:
        return None, "-", _phase_reason(inf, "inference")
    key = "pct_of_datasheet_peak" if all("pct_of_datasheet_peak" in r for r in rows) else "pct_of_matmul"
    best = max(rows, key=lambda r: r.get(key) or 0)
    what = "datasheet dense peak" if key == "pct_of_datasheet_peak" else "measured matrix-product rate"
    text = f"{best[key]:.1f} % of the {best['peak_key']} {what} ({best['tflops']:.1f} TFLOP/s, {best['config']})"
    return best[key] >= 30, text, ""


def _train_goal(tr: dict | None):
    if not tr or tr.get("train_wall_s") is None:
        return None, "-", _phase_reason(tr, "train")
    m = tr.get("train_metrics") or {}
    text = (f"{tr['train_wall_s'] / 60:.2f} min for the whole `hemseg train` command ({_fmt(m.get('steps'), '{}')}"
            f" steps, {_fmt(tr.get('images_per_s'), '{:.0f}')} images/s, budget {_fmt(m.get('minutes_budget'), '{}')}"
            " min)")
    return tr["train_wall_s"] < 300, text, ""


def _dice_goal(tr: dict | None):
    d = ((tr or {}).get("heldout") or {}).get("dice_global")
    if d is None:
        return None, "-", _phase_reason(tr, "train")
    return d >= 0.85, f"{d:.4f} on {tr['heldout'].get('n_images')} held-out phantom slices", ""


def _safe(goal, *args):
    """A goal's (ok, figure, why); a malformed phase file (a cut run) gives "not measured", never a crash."""
    try:
        return goal(*args)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        return None, "-", f"unreadable result: {type(exc).__name__} {exc}"


def _inference_table(inf: dict) -> list[str]:
    out = ["| config | batch | model ms | TFLOP/s | % peak | e2e p50 ms | e2e images/s |", "|---|---|---|---|---|---|---|"]
    for r in inf.get("results", []):
        e2e = r.get("e2e_ms") or {}
        out.append(f"| {r.get('config')} | {r.get('batch_size')} | {_fmt(r.get('model_ms'), '{:.3f}')} | "
                   f"{_fmt(r.get('tflops'), '{:.3g}')} | {_fmt(r.get('pct_of_datasheet_peak'), '{:.1f}')} | "
                   f"{_fmt(e2e.get('p50'), '{:.3f}')} | {_fmt(r.get('e2e_images_per_s'), '{:.0f}')} |")
    return out


def build_summary(out: Path, dry_run: bool = False) -> str:
    docs = {p: read_phase(out, p) for p in PHASE_FILES}
    dry = dry_run or any(d and d.get("dry_run") for d in docs.values())
    machine = (docs["machine"] or {}).get("machine") or {}
    gpu = (machine.get("gpu") or {}).get("name") or "no GPU"
    date = machine.get("date") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    lines = [f"# hemseg GPU check, {date[:19]}, {gpu}", ""]
    if dry:
        lines += ["**Dry run**: every phase on the CPU at toy sizes, GPU parts skipped. No figure below says anything "
                  "about a GPU.", ""]
    lines += ["| phase | status | seconds | cap s | notes |", "|---|---|---|---|---|"]
    for phase, doc in docs.items():
        if doc is None:
            lines.append(f"| {phase} | not run | - | - | {PHASE_FILES[phase]} was not written |")
            continue
        notes = doc.get("error") or "; ".join(f"{s['what']}: {s['reason']}" for s in doc.get("skipped", []))
        lines.append(f"| {phase} | {doc['status']} | {_fmt(doc.get('seconds'), '{:.1f}')} | "
                     f"{_fmt(doc.get('cap_s'), '{:.0f}')} | {notes[:300].replace('|', '/')} |")
    inf, pre, tr = docs["inference"], docs["preprocess"], docs["train"]
    judged = {"pre_b1": _safe(_preprocess_goal, pre, 1), "pre_b32": _safe(_preprocess_goal, pre, 32),
              "e2e_b1": _safe(_e2e_goal, inf), "b64": _safe(_b64_goal, inf), "train": _safe(_train_goal, tr),
              "dice": _safe(_dice_goal, tr)}
    lines += ["", "## Goals", "", "| goal | measured | verdict |", "|---|---|---|"]
    for key, text in GOALS:
        ok, figure, why = judged[key]
        lines.append(f"| {text} | {figure} | {_verdict(ok, why, dry)} |")
    peaks = (inf or {}).get("datasheet_peaks_tflops")
    if peaks:
        lines += ["", f"Peaks (TFLOP/s, {peaks['source']}): bf16 {peaks['bf16']}, fp16 {peaks['fp16']}, "
                      f"tf32 {peaks['tf32']}, fp32 {peaks['fp32']}; FP32 convolutions are judged against TF32 while "
                      "cuDNN's allow_tf32 is on (PyTorch's default)."]
    if (inf or {}).get("matmul_tflops"):
        lines.append("Measured 8192^3 matrix products (TFLOP/s): "
                     + ", ".join(f"{k} {v}" for k, v in inf["matmul_tflops"].items()) + ".")
    if inf and inf.get("results"):
        lines += ["", f"## Inference ({inf.get('model')}, {inf.get('image_size')} px, "
                      f"{_fmt(inf.get('gflop_per_image'), '{:.2f}')} GFLOP per image)", ""] + _inference_table(inf)
    exp = docs["export"]
    report = (exp or {}).get("export_report") or {}
    if report:
        lines += ["", "## Export", "", "```", *[str(x)[:200] for x in (exp.get("export") or {}).get("output_tail", [])
                                                [-8:]], "```"]
    return "\n".join(lines) + "\n"


def write_summary(out: Path, dry_run: bool = False) -> Path:
    from hemseg.runtime.io.writers import atomic_write_bytes

    return atomic_write_bytes(Path(out) / "summary.md", build_summary(Path(out), dry_run).encode())
