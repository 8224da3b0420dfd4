"""Hold Ctrl-C and SIGTERM back while a few renames publish a finished result (:func:`signals_held`).

A result moved into place by several renames (an export's models then their report, an evaluation's overlays then
its tables then its summary) was left half old, half new by a Ctrl-C between two of them: a new model beside the
earlier export's report (a QA finding of stop 53). Inside :func:`signals_held` a SIGINT or SIGTERM is only noted;
when the block ends the handlers in force before are restored and the first signal noted is raised again, so the
command still stops (or does what its handler says), with the result whole. The Python-level handlers are swapped
rather than the signals blocked: a blocked signal is delivered to any other thread of the process (ONNX Runtime's,
OpenVINO's), and Python still runs its handler. Main thread only (elsewhere nothing is held); SIGKILL cannot be held.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

HELD = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _handled_by(handler) -> Iterator[None]:
    """Give SIGINT and SIGTERM ``handler`` during the ``with`` body, then restore the handlers in force before. Main
    thread only (elsewhere nothing changes); a handler set outside Python (``getsignal`` None) is left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.getsignal(sig) for sig in HELD}
    swapped = [sig for sig, previous in before.items() if previous is not None]
    for sig in swapped:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig in swapped:
            signal.signal(sig, before[sig])


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Note SIGINT and SIGTERM during the ``with`` body; the first one noted is raised again when it ends."""
    noted: list[int] = []
    try:
        with _handled_by(lambda signum, frame: noted.append(signum)):
            yield
    finally:
        if noted:
            signal.raise_signal(noted[0])
