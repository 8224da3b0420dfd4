"""Reading files that must be regular files, without ever blocking on one that is not.

Opening a named pipe (FIFO) for reading waits until something writes into it: a FIFO named ``export_report.json``,
``folds.json``, ``cases.csv`` or a model file hung the command that read it, for ever. These readers open without
blocking, look at what was opened and refuse anything but a regular file with an OSError naming it, which the callers
treat as they treat an unreadable file.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

#: the reason given for a path that is not a regular file
NOT_REGULAR = "not a regular file (a pipe, socket or device)"


def open_regular(path: str | Path) -> BinaryIO:
    """The regular file ``path`` opened for binary reading, without blocking on what is not one: FileNotFoundError
    when there is none, IsADirectoryError for a folder, OSError (EINVAL, :data:`NOT_REGULAR`) for a pipe, socket or
    device."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, NOT_REGULAR, str(path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_bytes(path: str | Path, limit: int | None = None) -> bytes:
    """The bytes of the regular file ``path`` (its first ``limit`` bytes when given); errors as :func:`open_regular`."""
    with open_regular(path) as fh:
        return fh.read() if limit is None else fh.read(limit)


def read_regular_text(path: str | Path, encoding: str = "utf-8") -> str:
    """:func:`read_regular_bytes` decoded (UnicodeDecodeError, a ValueError, when it is not ``encoding``)."""
    return read_regular_bytes(path).decode(encoding)
