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
def signals_held() -> Iterator[None]:
    """Note SIGINT and SIGTERM during the ``with`` body; the first one noted is raised again when it ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []
    before = {sig: signal.getsignal(sig) for sig in HELD}
    held = [sig for sig, handler in before.items() if handler is not None]  # None: set outside Python, left alone
    for sig in held:
        signal.signal(sig, lambda signum, frame: noted.append(signum))
    try:
        yield
    finally:
        for sig in held:
            signal.signal(sig, before[sig])
        if noted:
            signal.raise_signal(noted[0])


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM during the ``with`` body (a command reporting work that is done: a Ctrl-C then
    turned a finished run into an interrupted one, its success line followed by 'aborted' and exit 130); the
    handlers in force before are restored when it ends. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.getsignal(sig) for sig in HELD}
    held = [sig for sig, handler in before.items() if handler is not None]
    for sig in held:
        signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        for sig in held:
            signal.signal(sig, before[sig])
