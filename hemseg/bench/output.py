"""Benchmark output: console table, Markdown, JSON and a PNG chart (drawn with OpenCV, no plotting dependency)."""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

from hemseg.runtime.io.regular import read_regular_bytes
from hemseg.runtime.io.writers import atomic_write_bytes, is_json_with

FLAG = "!! masks differ"
#: shown instead of the Dice when the PyTorch masks hold too little foreground to measure agreement (lesions in
#: fewer than 3 images or on fewer than 0.05 % of the pixels: the agreement rule; the log says which)
NOT_MEASURABLE = "n/m (too little torch foreground)"


def _f(x, fmt="{:.1f}") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


#: timed runs a percentile needs to be shown: with fewer, p95 / p99 are the largest run or an interpolation towards
#: it (a "p99" of 3 runs; QA, stop 56); the JSON keeps the interpolated values and, from stop 56 on, every run
PERCENTILE_MIN_RUNS = {"p95": 20, "p99": 100}


def _pct(e2e: dict, key: str) -> str:
    return _f(e2e[key]) if e2e.get("n", 0) >= PERCENTILE_MIN_RUNS[key] else "-"


def table_rows(doc: dict) -> list[list[str]]:
    rows = []
    for r in doc["results"]:
        st, e2e = r["stages_ms"], r["end_to_end_ms"]
        rows.append([
            r["path"], str(r["batch_size"]), str(e2e.get("n", "?")), _f(e2e["p50"]), _pct(e2e, "p95"),
            _pct(e2e, "p99"), _f(st["preprocess"]["mean"]), _f(st["infer"]["mean"]),
            _f(st["postprocess"]["mean"]), _f(r["throughput"]), _f(r["speedup_vs_torch"], "{:.2f}x"),
            _dice_cell(r),
            _f(r.get("peak_rss_mb"), "{:.0f}"), _f(r.get("achieved_gflops"), "{:.0f}"),
        ])
    return rows


def _dice_cell(r: dict) -> str:
    """The Dice vs torch: a number, flagged below the limit, or "not measurable" (never a bare 1.0000 then)."""
    if r.get("dice_measurable") is False:
        return NOT_MEASURABLE
    return _f(r["dice_vs_torch"], "{:.4f}") + (f" {FLAG}" if r.get("dice_flag") else "")


#: end-to-end latency as percentiles of the timed runs, each stage as its mean over them (the stages' percentiles
#: come from different runs and do not add up to the end-to-end ones; the JSON holds both for every stage)
HEADER = ["path", "batch", "timed runs", "p50 ms", "p95 ms", "p99 ms", "preproc mean ms", "infer mean ms",
          "post mean ms", "slices/s", "speed-up", "Dice vs torch", "process peak RSS MB", "GFLOP/s"]

#: headers of tables written by earlier versions (recognised as earlier hemseg-bench Markdown tables): before the
#: stage columns said they are means, before the RSS column was named "process peak RSS MB", before the runs column
_NO_RUNS = [h for h in HEADER if h != "timed runs"]
_STAGES_BEFORE = {"preproc mean ms": "preproc ms", "infer mean ms": "infer ms", "post mean ms": "post ms"}
_HEADERS_BEFORE = ([_STAGES_BEFORE.get(h, h) for h in _NO_RUNS],
                   [{"process peak RSS MB": "peak RSS MB"}.get(h, _STAGES_BEFORE.get(h, h)) for h in _NO_RUNS],
                   _NO_RUNS)

SERIES_HEADER = ["path", "batch-1 p50 ms", "series slices/s sequential", "series slices/s pipelined", "workers",
                 "pipelined / sequential", "pipelined vs torch sequential", "stage bound slices/s", "masks identical"]


def series_rows(doc: dict) -> list[list[str]]:
    """One row per path of the series-throughput run (``doc["series"]``; absent in older results)."""
    rows = []
    for s in doc.get("series") or []:
        rows.append([
            s["path"], _f(s.get("batch1_latency_ms_p50")), _f(s["sequential_slices_per_s"], "{:.2f}"),
            _f(s["pipelined_slices_per_s"], "{:.2f}"), str(s["workers"]), _f(s["pipelined_vs_sequential"], "{:.2f}x"),
            _f(s.get("speedup_vs_torch_sequential"), "{:.2f}x"), _f(s.get("stage_bound_slices_per_s"), "{:.2f}"),
            "-" if s["identical_masks"] is None else "yes" if s["identical_masks"] else "NO",
        ])
    return rows


def _aligned(header: list[str], body: list[list[str]]) -> list[str]:
    rows = [header] + body
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return lines


def table_notes(doc: dict) -> list[str]:
    """What the table's numbers need beside them: the percentiles' rule, each path's engine threads (an engine's
    default is not what OMP_NUM_THREADS sets for torch), model files the export's checks do not vouch for, and CPU
    flags overridden by HEMSEG_CPU_FLAGS (each said in the Markdown and the console alike; QA, stop 56)."""
    notes = [f"p95 / p99: '-' with fewer than {PERCENTILE_MIN_RUNS['p95']} / {PERCENTILE_MIN_RUNS['p99']} timed runs "
             "(the JSON keeps every run)."]
    threads: dict[str, str] = {}
    for r in doc["results"]:
        if r.get("engine_threads"):
            threads.setdefault(r["path"], r["engine_threads"])
    if threads:
        notes.append("Engine threads: " + "; ".join(f"{p} {t}" for p, t in threads.items()) + ".")
    unvouched = {name: f.get("export_verification") for name, f in ((doc.get("model") or {}).get("files") or {}).items()
                 if f.get("export_verification") != "passed"}
    if unvouched:
        notes.append("Not vouched for by the export's checks (their Dice columns are this run's only word on them): "
                     + ", ".join(f"{n} (verification {s or 'absent'})" for n, s in unvouched.items()) + ".")
    if doc["machine"].get("cpu_flags_override"):
        notes.append("CPU flags overridden by HEMSEG_CPU_FLAGS: paths chosen by them may run emulated here.")
    return notes


def console_table(doc: dict) -> str:
    lines = _aligned(HEADER, table_rows(doc)) + table_notes(doc)
    if doc.get("series"):
        n = doc["series"][0]["slices"]
        lines += ["", f"series of {n} slices (hemseg predict's pipeline):"] + _aligned(SERIES_HEADER, series_rows(doc))
    for s in doc["skipped"]:
        lines.append(f"skipped {s['path']}: {s['reason']}")
    return "\n".join(lines)


def markdown(doc: dict, command: str | None = None) -> str:
    m = doc["machine"]
    gpu = m.get("gpu") or {}
    usable = m.get("usable_cores")  # absent in results written before it was recorded
    cores = f"{m['cores']} cores" + (f", {usable} usable by the benchmark" if usable and usable != m["cores"] else "")
    threads = (doc.get("config") or {}).get("engine_threads")
    out = [f"### {m['date'][:10]} on {m['cpu']} ({cores})" + (f", {gpu.get('name')}" if gpu else ", no GPU")
           + (f"; engine threads: {threads}" if threads is not None else ""), ""]
    if m.get("cpu_flags"):
        override = m.get("cpu_flags_override")
        out += [("CPU flags as overridden by HEMSEG_CPU_FLAGS (not necessarily this CPU's): " if override else
                 "CPU flags: ") + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["cpu_flags"].items()), ""]
    if command:
        out += [f"Command: `{command}`", ""]
    if doc.get("notes"):
        out += [f"Notes: {doc['notes']}", ""]
    model = doc["model"]
    out += [f"Model: {model['model']} at {model['image_size']} px"
            + (f", {model['gflop_per_image']:.1f} GFLOP per slice" if model.get("gflop_per_image") else "")
            + f"; inputs: {doc['config']['inputs']}; libraries: "
            + ", ".join(f"{k} {v}" for k, v in m["libraries"].items()), ""]
    out.append("| " + " | ".join(HEADER) + " |")
    out.append("|" + "---|" * len(HEADER))
    out += ["| " + " | ".join(r) + " |" for r in table_rows(doc)]
    out += [""] + table_notes(doc)
    if doc.get("series"):
        s0 = doc["series"][0]
        out += ["", f"Series throughput: {s0['slices']} slices through `hemseg predict`'s pipeline (Segmenter, batch "
                    f"{s0['batch_size']}, post-processing included), sequential vs preprocessing pipelined with "
                    "inference; the stage bound is the slowest stage's rate alone.", ""]
        out.append("| " + " | ".join(SERIES_HEADER) + " |")
        out.append("|" + "---|" * len(SERIES_HEADER))
        out += ["| " + " | ".join(r) + " |" for r in series_rows(doc)]
    if doc["skipped"]:
        out += ["", "Skipped: " + "; ".join(f"`{s['path']}` ({s['reason']})" for s in doc["skipped"])]
    return "\n".join(out) + "\n"


def json_bytes(doc: dict) -> bytes:
    return (json.dumps(doc, indent=2, default=str) + "\n").encode()


def write_json(doc: dict, path: Path) -> None:
    atomic_write_bytes(path, json_bytes(doc))


def write_markdown(doc: dict, path: Path, command: str | None = None) -> None:
    atomic_write_bytes(path, markdown(doc, command).encode())


def plot(doc: dict, path: Path) -> None:
    """Write :func:`plot_png` to ``path`` (nothing when nothing was measured)."""
    png = plot_png(doc)
    if png is not None:
        atomic_write_bytes(path, png)


def plot_png(doc: dict) -> bytes | None:
    """Horizontal bars of throughput (slices/s) per path and batch size, flagged paths in red, as PNG bytes; None
    when nothing was measured."""
    rows = doc["results"]
    if not rows:
        return None
    bar_h, left, width = 22, 260, 900
    h = 60 + bar_h * len(rows)
    img = np.full((h, width, 3), 255, np.uint8)
    top = max(r["throughput"] for r in rows) or 1.0
    cv2.putText(img, "throughput (slices/s)", (left, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    for i, r in enumerate(rows):
        y = 45 + i * bar_h
        label = f"{r['path']} b{r['batch_size']}"
        cv2.putText(img, label, (10, y + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        length = int((width - left - 120) * r["throughput"] / top)
        color = (60, 60, 220) if r.get("dice_flag") else (200, 120, 40)
        cv2.rectangle(img, (left, y + 3), (left + max(length, 1), y + bar_h - 3), color, -1)
        cv2.putText(img, f"{r['throughput']:.1f}", (left + length + 6, y + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (0, 0, 0), 1, cv2.LINE_AA)
    ok, buf = cv2.imencode(".png", img)
    return with_software_text(buf.tobytes())


#: the PNG text chunk that marks a plot as hemseg-bench's (a rerun may replace it; no other PNG)
PNG_SOFTWARE = b"Software\x00hemseg-bench"


def with_software_text(png: bytes) -> bytes:
    """``png`` with a ``tEXt`` chunk ``Software: hemseg-bench`` after its header chunk."""
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR length + type, IHDR data, CRC
    chunk = struct.pack(">I", len(PNG_SOFTWARE)) + b"tEXt" + PNG_SOFTWARE
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + PNG_SOFTWARE) & 0xFFFFFFFF)
    return png[:ihdr_end] + chunk + png[ihdr_end:]


def _is_plot(path: Path) -> bool:
    try:
        head = read_regular_bytes(path, 256)
    except OSError:  # a named pipe is not opened (it blocked for ever)
        return False
    return head.startswith(b"\x89PNG") and PNG_SOFTWARE in head


def _is_markdown(path: Path) -> bool:
    try:
        text = read_regular_bytes(path, 4096).decode("utf-8", errors="ignore")
    except OSError:  # a named pipe is not opened (it blocked for ever)
        return False
    return text.startswith("### ") and any(("| " + " | ".join(h) + " |") in text for h in (HEADER, *_HEADERS_BEFORE))


#: (is an earlier result, what it is) of --json, --markdown and --plot, in that order
EARLIER = ((lambda p: is_json_with(p, {"schema", "machine", "results"}), "hemseg-bench JSON result"),
           (_is_markdown, "hemseg-bench Markdown table"),
           (_is_plot, "hemseg-bench plot"))
