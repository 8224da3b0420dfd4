"""The node's inbox: every accepted instance on disk before the C-STORE is answered, grouped by series.

Layout under the node's folder:

- ``inbox/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``: the instance exactly as received (the DICOM file format:
  preamble, file meta, the data set bytes as sent). Written to a hidden temporary file in that folder, fsynced,
  checked by the caller, renamed into place, then the folder is fsynced: a success answered to the modality means
  the file is on disk. A resent instance (same SOP Instance UID) replaces its file (a PACS resends an instance
  under its UID after a correction, of the patient's name say); one whose bytes differ from the file it replaces
  is handed to the caller first (``on_replace``), which the node reports.
- ``inbox/<SeriesInstanceUID>/.hemseg-processed.json``: the marker the node writes after processing: which files
  went into that result (``files``), with the outcome. A series is *pending* when it holds a ``.dcm`` file the
  marker does not list (never processed, or instances arrived after the last processing): on restart every
  pending series is processed, so nothing received is lost. Processed instances stay in the inbox (clean them by
  your own retention policy).
- ``work/<SeriesInstanceUID>.<n>/``: a snapshot (hard links, or copies where links are impossible) of the files
  one processing run reads, so instances arriving meanwhile do not change what is being segmented. Removed after
  the run, and at start-up.

UIDs become folder and file names only when they are well-formed (digits and dots, at most 64 characters), so no
received value can name a path outside the inbox.
"""

from __future__ import annotations

import filecmp
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from hemseg.runtime.io.regular import read_regular_text
from hemseg.runtime.io.writers import write_json

log = logging.getLogger(__name__)

MARKER = ".hemseg-processed.json"
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def valid_uid(value: object) -> bool:
    text = str(value or "")
    return 0 < len(text) <= 64 and bool(_UID.match(text))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def drop_temporary(root: Path, which: Callable[[Path], bool] = lambda folder: True) -> list[Path]:
    """Remove the temporary files (``.<name>.*.tmp``) a killed node left in the sub-folders of ``root`` (``which``
    of them), and the folders they alone made; call only with the output folder's lock held. Returns the files."""
    removed: list[Path] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and which(p)) if root.is_dir() else ():
        here = [tmp for tmp in sorted(folder.glob(".*.tmp")) if tmp.is_file()]
        for tmp in here:
            tmp.unlink()
        removed += here
        if here and not any(folder.iterdir()):
            folder.rmdir()
    return removed


class Inbox:
    """The ``inbox/`` and ``work/`` folders under ``root`` (see the module docstring). Thread-safe."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.inbox = self.root / "inbox"
        self.work = self.root / "work"
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._counter = 0

    def series_dir(self, series_uid: str) -> Path:
        if not valid_uid(series_uid):
            raise ValueError(f"not a valid UID: {series_uid!r}")
        return self.inbox / series_uid

    # -- receiving -----------------------------------------------------------------------------------------------
    def store(self, series_uid: str, sop_uid: str, data: bytes, check: Callable[[Path], Any] | None = None,
              on_replace: Callable[[Path, Path], Any] | None = None) -> Path:
        """Write ``data`` as ``inbox/<series>/<sop>.dcm`` durably. ``check(temp_path)`` runs on the fsynced
        temporary file before it is renamed into place; if it raises, nothing is kept and the error propagates.
        ``on_replace(temp_path, existing)`` runs before a file of other bytes is replaced."""
        if not valid_uid(sop_uid):
            raise ValueError(f"not a valid UID: {sop_uid!r}")
        folder = self.series_dir(series_uid)
        with self._lock:  # with the removal below: a folder another instance is being written into stays
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{sop_uid}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            if check is not None:
                check(Path(tmp))
            target = folder / f"{sop_uid}.dcm"
            if on_replace is not None and target.is_file() and not filecmp.cmp(tmp, target, shallow=False):
                on_replace(Path(tmp), target)
            os.replace(tmp, target)
        except BaseException:
            with self._lock:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
                try:
                    folder.rmdir()  # the series' first instance was refused: no empty series folder stays
                except OSError:
                    pass  # it holds other instances (or temp files of instances being received)
            raise
        _fsync_dir(folder)
        return target

    # -- what is there -------------------------------------------------------------------------------------------
    def instances(self, series_uid: str) -> list[Path]:
        folder = self.series_dir(series_uid)
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".dcm" and not p.name.startswith("."))

    def marker(self, series_uid: str) -> dict[str, Any]:
        path = self.series_dir(series_uid) / MARKER
        try:
            data = json.loads(read_regular_text(path))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable marker (%s); the series counts as not processed", path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def unprocessed(self, series_uid: str) -> list[Path]:
        done = set(self.marker(series_uid).get("files", []))
        return [p for p in self.instances(series_uid) if p.name not in done]

    def pending(self) -> list[str]:
        """Series UIDs with instances not yet in a result, oldest folder first."""
        out = []
        for folder in sorted(self.inbox.iterdir(), key=lambda p: p.stat().st_mtime):
            if folder.is_dir() and valid_uid(folder.name) and self.unprocessed(folder.name):
                out.append(folder.name)
        return out

    # -- processing ----------------------------------------------------------------------------------------------
    def snapshot(self, series_uid: str) -> tuple[Path, list[str]]:
        """A work folder with the series' current instances (hard links); returns it and the file names."""
        files = self.instances(series_uid)
        with self._lock:
            self._counter += 1
            work = self.work / f"{series_uid}.{os.getpid()}.{self._counter}"
        work.mkdir(parents=True)
        for f in files:
            try:
                os.link(f, work / f.name)
            except OSError:
                shutil.copy2(f, work / f.name)
        return work, [f.name for f in files]

    def mark(self, series_uid: str, files: list[str], record: dict[str, Any]) -> None:
        """Record that ``files`` went into a result (atomically)."""
        write_json(self.series_dir(series_uid) / MARKER, {**record, "files": sorted(files)})

    def drop_partial(self) -> list[Path]:
        """Remove the temporary files of instances whose receipt a killed node never finished (``.<sop>.*.tmp`` in a
        series folder: never acknowledged, so the sender has them still), and series folders left empty by that;
        call only with the output folder's lock held. Returns the files removed."""
        return drop_temporary(self.inbox, lambda folder: valid_uid(folder.name))

    def drop_work(self, work: Path | None = None) -> None:
        """Remove one work folder, or (``None``) every one left by an earlier run."""
        targets = [work] if work is not None else [p for p in self.work.iterdir() if p.is_dir()]
        for path in targets:
            shutil.rmtree(path, ignore_errors=True)
