"""A/B of :mod:`hemseg.runtime.allocator`: the same hemseg commands run with glibc's default malloc
(``HEMSEG_MALLOC=system``) and with freed memory kept (the default), alternating, each in its own process.

Per run: wall seconds, user and system CPU seconds, minor page faults and peak RSS of that process (``wait4``), and
what the run itself reports (training: seconds per step and validation Dice, which must be identical with both
allocators; eval: pooled Dice; bench: p50 latency per path and batch size).

Run (idle machine)::

    python benchmarks/allocator/ab.py --data DATA --heldout HELDOUT --work /tmp/ab --json benchmarks/results/<date>_<machine>_allocator_ab.json

DATA and HELDOUT: phantom folders (``hemseg data synth DATA --per-category 24 --seed 0``,
``hemseg data synth HELDOUT --per-category 5 --seed 1000``), i.e. the quickstart's data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from quickstart_record import machine_now, write_record  # noqa: E402


def run(cmd: list[str], mode: str) -> dict:
    env = dict(os.environ)
    if mode == "system":
        env["HEMSEG_MALLOC"] = "system"
    else:
        env.pop("HEMSEG_MALLOC", None)
    with tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own resource usage (peak RSS included)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err.read()[-2000:]}")
    return {"wall_s": round(wall, 2), "user_s": round(usage.ru_utime, 2), "sys_s": round(usage.ru_stime, 2),
            "minor_faults": usage.ru_minflt, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--heldout", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    bindir = Path(sys.executable).parent
    hemseg, bench, export = (str(bindir / n) for n in ("hemseg", "hemseg-bench", "hemseg-export"))
    rows = []
    train_args = ["--model", "unet", "--unet-base", "16", "--patch", "128", "--skip", "nlm", "--skip", "bilateral",
                  "--dice", "blob", "--ema", "--recipe", "hemseg", "--steps", str(args.steps), "--batch-size", "8",
                  "--image-size", "256", "--device", "cpu", "--seed", "0", "--no-progress"]
    results = {}
    for mode in ("system", "kept"):
        run_dir = work / f"train_{mode}"
        r = run([hemseg, "train", args.data, "--out", str(run_dir), *train_args], mode)
        m = json.loads((run_dir / "metrics.json").read_text())
        results[mode] = m
        rows.append({"command": f"hemseg train DATA --out RUN {' '.join(train_args)}", "allocator": mode, **r,
                     "train_seconds_per_step": round(m["seconds_per_step"], 4), "val_dice_global": m["dice_global"]})
    if results["system"]["dice_global"] != results["kept"]["dice_global"]:
        raise SystemExit("the allocator changed the training result")
    ckpt = str(work / "train_kept" / "best.pt")
    for mode in ("system", "kept"):
        out = work / f"eval_{mode}"
        r = run([hemseg, "eval", ckpt, args.heldout, "--out", str(out), "--device", "cpu"], mode)
        s = json.loads((out / "summary.json").read_text())
        rows.append({"command": "hemseg eval RUN/best.pt HELDOUT --out OUT --device cpu", "allocator": mode, **r,
                     "dice_global": s["dice_global"], "eval_seconds": round(s["seconds"], 2)})
    exp = work / "export"
    subprocess.run([export, ckpt, "--out", str(exp), "--format", "onnx"], check=True, capture_output=True)
    for mode in ("system", "kept"):
        js = work / f"bench_{mode}.json"
        r = run([bench, str(exp), "--paths", "torch,ort,openvino", "--batch-sizes", "1,8", "--seconds", "5",
                 "--images", "8", "--json", str(js), "-q"], mode)
        b = json.loads(js.read_text())
        p50 = {f"{row['path']}@{row['batch_size']}": row["end_to_end_ms"]["p50"] for row in b["results"]}
        rows.append({"command": "hemseg-bench EXPORT --paths torch,ort,openvino --batch-sizes 1,8 --seconds 5 "
                                "--images 8", "allocator": mode, **r, "p50_ms": p50})
    write_record(Path(args.json), {
        "experiment": "glibc malloc default (HEMSEG_MALLOC=system) vs freed memory kept (hemseg.runtime.allocator)",
        "command": "python benchmarks/allocator/ab.py --data DATA --heldout HELDOUT --work W --json OUT",
        "machine": machine_now(), "rows": rows})
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
