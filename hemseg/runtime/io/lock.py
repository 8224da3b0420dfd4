"""One writer per output folder: ``hemseg train``, ``hemseg-export`` and ``hemseg predict`` hold an exclusive lock
on ``FOLDER/.hemseg.lock`` while they write there (two runs into one folder left a mix of both, each reporting
success). The operating system releases it when the process ends, killed or not; the file is removed when the
command is done. Where the platform has no ``fcntl`` (Windows) no lock is taken."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from hemseg.errors import UsageError

log = logging.getLogger(__name__)

LOCK_NAME = ".hemseg.lock"


@contextlib.contextmanager
def folder_lock(folder: str | Path, command: str) -> Iterator[None]:
    """Hold the lock of the existing ``folder`` for ``command`` (e.g. ``"hemseg train"``); UsageError at once when
    another command holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = Path(folder) / LOCK_NAME
    try:
        fh = open(path, "a+")  # noqa: SIM115 - held open while the command writes
    except OSError as exc:  # a read-only folder, no permission: said of the folder, not of the lock file
        raise UsageError(f"{folder}: cannot write into this folder ({exc.strerror or exc})") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise UsageError(f"{folder}: another hemseg command is writing into this folder (a second {command} into it "
                         "would leave a mix of both); wait for it to end or choose another folder") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still held: a command that opened it before fails its own lock attempt
        fh.close()
