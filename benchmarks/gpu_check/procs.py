"""Running a command of the check: output streamed to the log, a tail kept for the JSON, a timeout that ends the
command's whole process group (the command's own DataLoader workers too, nothing else)."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time

#: process groups of the commands running now, ended by :func:`end_children` when the phase itself is stopped
_RUNNING: set[int] = set()


def end_children(signum: int = signal.SIGTERM, frame=None) -> None:
    """SIGTERM handler of a phase: end the commands it started (their own process groups), then exit 143.

    ``timeout`` signals the phase's process group; the commands run in groups of their own (so a command's timeout
    can end its workers too) and would otherwise outlive the phase and compete with the next one.
    """
    for pgid in list(_RUNNING):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    raise SystemExit(128 + signum)


def run_logged(cmd: list[str], timeout: float, tail: int = 25) -> dict:
    """Run ``cmd``; returns ``{"command", "exit", "seconds", "timed_out", "output_tail"}``."""
    t0 = time.perf_counter()
    lines: collections.deque[str] = collections.deque(maxlen=tail)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True)

    def pump() -> None:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line.rstrip()[:400])

    _RUNNING.add(proc.pid)
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    finally:
        _RUNNING.discard(proc.pid)
    reader.join(timeout=5)
    shown = ["python3" if i == 0 and os.path.basename(c).startswith("python") else c for i, c in enumerate(cmd)]
    return {"command": " ".join(shown), "exit": proc.returncode, "seconds": round(time.perf_counter() - t0, 2),
            "timed_out": timed_out, "output_tail": list(lines)}
