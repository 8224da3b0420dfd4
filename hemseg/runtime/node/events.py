"""The node's event log: one JSON object per line, appended to ``node.jsonl`` and handed to a callback."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


class EventLog:
    """Thread-safe. Every event gets ``"event"`` (its kind) and ``"time"`` (UTC, ISO 8601)."""

    def __init__(self, path: str | Path, callback: Callable[[dict[str, Any]], None] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.callback = callback
        self._lock = threading.Lock()

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Append the event to ``node.jsonl`` and hand it to the callback. A log that cannot grow (a full disk)
        never stops the node nor the event: the callback still gets it (stdout), a warning says the log lacks it,
        and a line cut short is removed, so every line of the log stays one whole JSON object."""
        record = {"event": kind, "time": now_iso(), **fields}
        line = (json.dumps(record, default=str) + "\n").encode("utf-8")
        with self._lock:
            self._append(line, kind)
            if self.callback is not None:
                try:
                    self.callback(record)
                except OSError as exc:  # stdout on a full disk too: one line, never a traceback
                    log.warning("the %r event (%s) could not be printed either: %s", kind,
                                record.get("series_uid") or record.get("status") or "", exc.strerror or exc)
                except Exception:  # a broken consumer must not stop the node
                    log.exception("event callback failed")
        return record

    def _append(self, line: bytes, kind: str) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as exc:
            log.warning("%s: cannot open the event log (%s): the %r event is on stdout only", self.path,
                        exc.strerror or exc, kind)
            return
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
            except OSError as exc:
                try:
                    os.ftruncate(fd, size)  # no half line, onto which the next event would be glued
                except OSError:
                    pass
                log.warning("%s: cannot append to the event log (%s): the %r event is on stdout only", self.path,
                            exc.strerror or exc, kind)
        finally:
            os.close(fd)
