"""Shared pieces of the GPU check: the phase record, its JSON file, deadlines and the GPU's datasheet peaks.

Every phase writes ``OUT/<NN>_<name>.json`` (schema ``hemseg-gpu-check/1``) with at least ``phase``, ``status``,
``dry_run``, ``seconds``, ``cap_s``, ``skipped`` (a list of ``{"what", "reason"}``) and ``error``. ``status`` is

- ``ok``: everything the phase measures ran;
- ``partial``: some parts ran, the others are listed in ``skipped`` with the reason (no GPU, dry run, time cap);
- ``skipped``: nothing ran (the reason is in ``skipped``);
- ``failed``: an error stopped it (``error``, and ``log_tail`` when the shell script recorded it);
- ``timeout``: its time cap killed it (whatever it had written so far is kept);
- ``running``: written while the phase works; a file left so means the phase was killed before it ended.

A phase rewrites its file after each part it finishes, so a run cut by a time limit still returns what finished.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from pathlib import Path

from hemseg.runtime.io.writers import write_json

SCHEMA = "hemseg-gpu-check/1"

#: phase name -> file name; the order is the script's priority order
PHASE_FILES = {
    "machine": "00_machine.json",
    "gpu_tests": "01_gpu_tests.json",
    "preprocess": "02_preprocess.json",
    "inference": "03_inference.json",
    "train": "04_train.json",
    "export": "05_export.json",
}
STATUSES = ("ok", "partial", "skipped", "failed", "timeout", "running")

#: Dense (no sparsity) tensor-core peaks in TFLOP/s from NVIDIA's H100/H200 SXM datasheet (the H200 has the H100
#: SXM's arithmetic). "fp32" is the plain (non-tensor-core) FP32 rate; PyTorch's FP32 convolutions run as TF32 on
#: tensor cores while ``torch.backends.cudnn.allow_tf32`` is True (its default), so the FP32 path is judged
#: against the TF32 peak then.
DATASHEET_PEAKS_TFLOPS = {
    "H200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9,
             "source": "NVIDIA H200 SXM datasheet (dense; the sparsity figures are twice these)"},
}


def datasheet_peaks(gpu_name: str | None) -> dict | None:
    """The datasheet peaks of a GPU whose name contains a key of :data:`DATASHEET_PEAKS_TFLOPS`, else None."""
    for key, peaks in DATASHEET_PEAKS_TFLOPS.items():
        if gpu_name and key in gpu_name:
            return {"gpu": key, **peaks}
    return None


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def phase_path(out: Path, phase: str) -> Path:
    return Path(out) / PHASE_FILES[phase]


def read_phase(out: Path, phase: str) -> dict | None:
    try:
        return json.loads(phase_path(out, phase).read_text())
    except (OSError, ValueError):
        return None


class Deadline:
    """Seconds left until an absolute time (``time.time()`` based, so the shell script can hand it over)."""

    def __init__(self, at: float):
        self.at = float(at)

    def left(self) -> float:
        return self.at - time.time()


class PhaseRecord:
    """The JSON document of one phase, written atomically on every :meth:`save`."""

    def __init__(self, out: Path, phase: str, *, dry_run: bool, cap_s: float | None):
        self.path = phase_path(out, phase)
        self._t0 = time.perf_counter()
        self.doc: dict = {"schema": SCHEMA, "phase": phase, "status": "running", "dry_run": bool(dry_run),
                          "started": now_iso(), "seconds": 0.0, "cap_s": cap_s, "skipped": [], "error": None}

    def skip(self, what: str, reason: str) -> None:
        self.doc["skipped"].append({"what": what, "reason": reason})

    def save(self, status: str = "running") -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        self.doc["status"] = status
        self.doc["seconds"] = round(time.perf_counter() - self._t0, 2)
        write_json(self.path, self.doc)

    def finish(self, ran_something: bool = True) -> None:
        """``ok`` / ``partial`` / ``skipped`` from what ran and what was skipped."""
        if not ran_something:
            self.save("skipped")
        else:
            self.save("partial" if self.doc["skipped"] else "ok")

    def fail(self, error: str) -> None:
        self.doc["error"] = error
        self.save("failed")
