"""A Ctrl-C delivered at a chosen moment of a test: :func:`sigint_at_first_rename`."""

from __future__ import annotations

import os
import signal
from typing import Callable


def sigint_at_first_rename(monkeypatch, counted: Callable[[str], bool] = lambda dst: True) -> list:
    """Make ``os.replace`` send this process SIGINT at its first call whose destination ``counted`` accepts, then
    rename as usual. Returns the list of those destinations, filled as they are renamed."""
    real, calls = os.replace, []

    def interrupted(src, dst):
        if counted(os.fspath(dst)):
            calls.append(dst)
            if len(calls) == 1:
                os.kill(os.getpid(), signal.SIGINT)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    return calls
