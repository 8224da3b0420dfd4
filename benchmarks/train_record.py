"""Record a finished ``hemseg train`` run (and its ``hemseg eval`` on held-out data) as one JSON in
``benchmarks/results/``; the quickstart has its own recorder (``quickstart_record.py``), with the same keys.

Usage::

    hemseg train DATA --out RUN ...
    hemseg eval RUN/best.pt HELDOUT --out EVAL
    python benchmarks/train_record.py RUN EVAL benchmarks/results/<date>_<machine>_<what>.json \
        --experiment "..." --command "hemseg train ..." --command "hemseg eval ..." [--note "..."] \
        [--engine-eval "onnx-int8 (ort-cpu)=EVAL_INT8" ...]   # hemseg eval of exported models, same held-out data

Writes the commands, the machine (CPU model and flags, load average at the time of the record), the run's
``metrics.json`` (training length, budget, step time, validation Dice, threshold), its ``history.csv`` and the
held-out evaluation (pooled Dice first, lesion detection, per category). Every number is read from the run's files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quickstart_record import TRAIN_KEYS, engine_eval, heldout_eval, machine_now, write_record  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="the hemseg train --out folder")
    ap.add_argument("eval", type=Path, help="the hemseg eval --out folder (held-out data)")
    ap.add_argument("json", type=Path, help="the result file to write")
    ap.add_argument("--experiment", required=True, help="one line: what was measured")
    ap.add_argument("--command", action="append", required=True, help="a command that made the run (repeat, in order)")
    ap.add_argument("--note", default="")
    ap.add_argument("--engine-eval", action="append", default=[], metavar="LABEL=EVAL",
                    help="hemseg eval --out folder of an exported model on the same held-out data (repeat)")
    a = ap.parse_args()

    metrics = json.loads((a.run / "metrics.json").read_text())
    ev = json.loads((a.eval / "summary.json").read_text())
    record = {
        "experiment": a.experiment,
        "commands": a.command,
        "machine": machine_now(),
        "note": a.note,
        "train_metrics": {k: metrics.get(k) for k in TRAIN_KEYS + ("epochs_trained", "wall_time_s", "session_seconds")},
        "history_csv": (a.run / "history.csv").read_text() if (a.run / "history.csv").is_file() else None,
        "heldout_eval": heldout_eval(ev),
    }
    if a.engine_eval:
        record["heldout_eval_engines"] = {}
        for item in a.engine_eval:
            label, sep, folder = item.partition("=")
            if not sep:
                ap.error(f"--engine-eval {item!r}: expected LABEL=EVAL_FOLDER")
            record["heldout_eval_engines"][label] = engine_eval(json.loads((Path(folder) / "summary.json").read_text()))
    write_record(a.json, record)


if __name__ == "__main__":
    main()
