"""The node's event log: one JSON object per line, appended to ``node.jsonl`` and handed to a callback."""

from __future__ import annotations

import datetime as _dt
import json
import logging
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
        record = {"event": kind, "time": now_iso(), **fields}
        line = json.dumps(record, default=str)
        with self._lock:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
                fh.flush()
            if self.callback is not None:
                try:
                    self.callback(record)
                except Exception:  # a broken consumer must not stop the node
                    log.exception("event callback failed")
        return record
