"""Running a command of the check: output streamed to the log, a tail kept for the JSON, a timeout that ends the
command's whole process group (the command's own DataLoader workers too, nothing else); what the command leaves
running in its group when it exits is ended too, so that it never competes with the next phase."""

from __future__ import annotations

import codecs
import collections
import os
import selectors
import signal
import subprocess
import sys
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
    """Run ``cmd``; returns ``{"command", "exit", "seconds", "timed_out", "output_tail"}``.

    The output is pumped by this (the main) thread, not a reader thread: a SIGTERM whose handler
    (:func:`end_children`) raised while the main thread was inside ``Thread.start()`` / ``join()`` broke their lock
    ('RuntimeError: release unlocked lock') and the phase exited 1 instead of 143 (CI, stop 58)."""
    t0 = time.perf_counter()
    deadline = t0 + max(1.0, timeout)
    lines: collections.deque[str] = collections.deque(maxlen=tail)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    _RUNNING.add(proc.pid)
    timed_out = False
    try:
        ended = _pump(proc, deadline, lines)
        timed_out = ended is None
        if timed_out:
            _killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            _killpg(proc.pid, signal.SIGKILL)  # the whole group, also where the leader ended and a worker did not
            ended = time.perf_counter()
        proc.wait()
    finally:
        _killpg(proc.pid, signal.SIGKILL)  # what the command left behind (a DataLoader worker) ends with it
        _RUNNING.discard(proc.pid)
        proc.stdout.close()
    shown = ["python3" if i == 0 and os.path.basename(c).startswith("python") else c for i, c in enumerate(cmd)]
    return {"command": " ".join(shown), "exit": proc.returncode, "seconds": round(ended - t0, 2),
            "timed_out": timed_out, "output_tail": list(lines)}


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # the group has ended
        pass


def _pump(proc: subprocess.Popen, deadline: float, lines: collections.deque) -> float | None:
    """Copy ``proc``'s output to stdout line by line (and its last lines into ``lines``) until it ends; returns when
    it ended (``time.perf_counter()``), or None when ``deadline`` came first. A process it left behind holding the
    pipe open does not keep it waiting, silent or not: the copy ends a second after ``proc`` has exited."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    partial = ""
    fd = proc.stdout.fileno()

    def emit(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        lines.append(text.rstrip()[:400])

    exited = None
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                now = time.perf_counter()
                if exited is None and proc.poll() is not None:
                    exited = now
                if exited is not None and (now - exited > 1.0 or now >= deadline):
                    return exited  # (it ended in time: what keeps the pipe open is a process it left behind)
                if now >= deadline:
                    return None
                if not sel.select(timeout=min(deadline - now, 0.2)):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    return exited if exited is not None else time.perf_counter()
                *complete, partial = (partial + decoder.decode(chunk)).split("\n")
                for line in complete:
                    emit(line)
    finally:  # a last line without its newline (also of a command stopped at the deadline)
        partial += decoder.decode(b"", final=True)
        if partial:
            emit(partial)
