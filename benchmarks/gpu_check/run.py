"""The GPU check's Python driver, called by ``benchmarks/gpu_check.sh`` once per phase (see that script).

    python3 benchmarks/gpu_check/run.py PHASE OUT --work DIR --cap S [--dry-run]   # run one phase
    python3 benchmarks/gpu_check/run.py finalize PHASE OUT --rc RC --cap S --log LOG  # after it, whatever happened
    python3 benchmarks/gpu_check/run.py skip PHASE OUT --reason TEXT                 # a phase with no time left
    python3 benchmarks/gpu_check/run.py summary OUT [--dry-run]                       # OUT/summary.md

PHASE is one of machine, gpu_tests, preprocess, inference, train, export; each writes OUT/<NN>_<PHASE>.json
(:mod:`common` describes the fields). ``finalize`` makes sure the file exists and says how the phase ended: a phase
killed by its time cap is marked ``timeout`` (what it had written is kept), one that died without writing is
``failed`` with the end of the log.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

# import this folder as the package ``gpu_check`` from benchmarks/ (which also holds gpu_preprocess_bench.py), and not
# its modules as top-level names that could shadow a library's
sys.path[0] = str(Path(__file__).resolve().parents[1])

from gpu_check.common import PHASE_FILES, Deadline, PhaseRecord, read_phase  # noqa: E402

MODULES = {"machine": ("machine", "run"), "gpu_tests": ("gpu_tests", "run"),
           "preprocess": ("preprocess_speed", "run"), "inference": ("inference", "run"),
           "train": ("train", "run"), "export": ("train", "run_export")}
TIMEOUT_RCS = (124, 137)   # timeout(1)'s exit status, and SIGKILL after --kill-after


def _log_tail(log: Path | None, n: int = 30) -> list[str]:
    if log is None:
        return []
    try:
        return [line[:400] for line in log.read_text(errors="replace").splitlines()[-n:]]
    except OSError:
        return []


def run_phase(args) -> int:
    import importlib
    import signal

    from gpu_check.procs import end_children

    signal.signal(signal.SIGTERM, end_children)
    cap = float(args.cap)
    args.deadline = Deadline(time.time() + cap - 2)      # the phase's own view of its cap, a little inside it
    rec = PhaseRecord(args.out, args.phase, dry_run=args.dry_run, cap_s=cap)
    rec.save()
    module, func = MODULES[args.phase]
    try:
        getattr(importlib.import_module(f"gpu_check.{module}"), func)(rec, args)
    except Exception as exc:
        traceback.print_exc()
        rec.doc["traceback"] = traceback.format_exc().splitlines()[-12:]
        rec.fail(f"{type(exc).__name__}: {str(exc).splitlines()[0][:400] if str(exc) else ''}")
        return 1
    return 0 if rec.doc["status"] != "failed" else 1


def finalize(args) -> int:
    doc = read_phase(args.out, args.phase)
    timed_out = args.rc in TIMEOUT_RCS
    if doc is None:
        rec = PhaseRecord(args.out, args.phase, dry_run=args.dry_run, cap_s=args.cap)
        rec.doc["exit"] = args.rc
        rec.doc["log_tail"] = _log_tail(args.log)
        rec.doc["error"] = (f"killed by its {args.cap:g} s time cap before it wrote anything" if timed_out
                            else f"exited {args.rc} without writing its JSON")
        rec.save("timeout" if timed_out else "failed")
        return 0
    changed = False
    if doc["status"] == "running":
        doc["status"] = "timeout" if timed_out else "failed"
        doc["error"] = doc.get("error") or (f"stopped by its {args.cap:g} s time cap; the results above are what "
                                            "finished" if timed_out else f"exited {args.rc} while running")
        changed = True
    if doc["status"] in ("failed", "timeout") and not doc.get("log_tail"):
        doc["log_tail"] = _log_tail(args.log)
        changed = True
    if changed:
        from hemseg.runtime.io.writers import write_json

        doc["exit"] = args.rc
        write_json(Path(args.out) / PHASE_FILES[args.phase], doc)
    return 0


def skip(args) -> int:
    rec = PhaseRecord(args.out, args.phase, dry_run=args.dry_run, cap_s=0)
    rec.skip(args.phase, args.reason)
    rec.finish(ran_something=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="gpu_check/run.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true")
    if argv and argv[0] in ("finalize", "skip", "summary"):
        action = argv.pop(0)
        if action != "summary":
            ap.add_argument("phase", choices=list(PHASE_FILES))
        ap.add_argument("out", type=Path)
        ap.add_argument("--rc", type=int, default=0)
        ap.add_argument("--cap", type=float, default=0.0)
        ap.add_argument("--log", type=Path, default=None)
        ap.add_argument("--reason", default="")
        args = ap.parse_args(argv)
        if action == "summary":
            from gpu_check.summary import write_summary

            write_summary(args.out, dry_run=args.dry_run)
            return 0
        return finalize(args) if action == "finalize" else skip(args)
    ap.add_argument("phase", choices=list(PHASE_FILES))
    ap.add_argument("out", type=Path)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--cap", type=float, required=True, help="seconds the shell script gives this phase")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    return run_phase(args)


if __name__ == "__main__":
    sys.exit(main())
