"""``hemseg data sort-dicom``: copy a folder of mixed DICOM files (a PACS or CD export, nested or flat) into one
folder per series, the layout ``hemseg predict``, ``hemseg train`` and the series reader expect.

- Every file under the source folder (recursively; hidden files and ``DICOMDIR`` skipped) with a ``.dcm``/``.dicom``
  name or ``DICM`` at byte 128 is read without its pixel data and grouped by ``SeriesInstanceUID``.
- Series folder names: ``<SeriesNumber, 3 digits>_<Modality>_<SeriesDescription>`` with every character outside
  ``A-Z a-z 0-9 . _ -`` replaced by ``_`` (``000`` when there is no number, ``series`` when nothing else is left),
  ``_2``, ``_3`` ... when two series would get the same name. Files keep their names (``_2`` ... on collisions).
- The inputs are only read. Output goes to a new folder: the destination must not exist or be empty. Everything is
  copied into a temporary folder inside it and each series folder is renamed into place when complete, so an
  interrupted run leaves no half-filled series folder under its final name.
- ``series.json`` in the destination lists each series: ``folder``, ``series_instance_uid``, ``modality``,
  ``series_number``, ``series_description``, ``files``; plus ``skipped`` (files that looked like DICOM but could not
  be read, with the reason).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hemseg.errors import InputError, UsageError
from hemseg.runtime.io.sniff import is_dicom_file
from hemseg.runtime.io.writers import atomic_write_bytes

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MANIFEST = "series.json"


@dataclass
class Series:
    uid: str
    modality: str
    number: int | None
    description: str
    files: list[Path] = field(default_factory=list)

    def folder_name(self) -> str:
        parts = [f"{self.number:03d}" if self.number is not None else "000"]
        parts += [p for p in (self.modality, self.description) if p]
        name = _UNSAFE.sub("_", "_".join(parts)).strip("._-")[:100]
        return name or "series"


def _dicom_files(src: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if not name.startswith(".") and is_dicom_file(path):
                found.append(path)
    return found


def _number(value) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def group_series(src: Path) -> tuple[list[Series], list[tuple[Path, str]]]:
    """The DICOM files under ``src`` grouped by series (in order of first appearance) and the skipped files."""
    import pydicom

    series: dict[str, Series] = {}
    skipped: list[tuple[Path, str]] = []
    for path in _dicom_files(src):
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
            uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
        except Exception as exc:  # truncated or not DICOM after all
            text = str(exc).strip()
            skipped.append((path, f"unreadable: {text.splitlines()[0] if text else type(exc).__name__}"))
            continue
        if not uid:
            skipped.append((path, "no SeriesInstanceUID"))
            continue
        if uid not in series:
            series[uid] = Series(uid=uid, modality=str(ds.get("Modality", "") or "").strip(),
                                 number=_number(ds.get("SeriesNumber")),
                                 description=str(ds.get("SeriesDescription", "") or "").strip())
        series[uid].files.append(path)
    return list(series.values()), skipped


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``<stem>_2<suffix>``, ``<stem>_3<suffix>`` ... when taken (compared without case)."""
    stem, suffix = (name[: -len(Path(name).suffix)], Path(name).suffix) if Path(name).suffix else (name, "")
    out, k = name, 1
    while out.lower() in taken:
        k += 1
        out = f"{stem}_{k}{suffix}"
    taken.add(out.lower())
    return out


def sort_dicom(src: str | Path, dst: str | Path) -> dict:
    """Copy the DICOM files under ``src`` into one folder per series under ``dst``; returns the manifest (also
    written to ``dst/series.json``)."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise InputError(src, "not a folder")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise UsageError(f"{dst}: the destination exists and is not an empty folder; choose a new one")
    src_r, dst_r = src.resolve(), dst.resolve()
    if dst_r == src_r or src_r in dst_r.parents:
        raise UsageError(f"{dst}: the destination lies inside the source folder {src}; choose one outside it")
    groups, skipped = group_series(src)
    if not groups:
        raise InputError(src, "no DICOM files with a SeriesInstanceUID found (.dcm/.dicom names or 'DICM' at byte "
                              "128, sub-folders included)")
    dst.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    entries = []
    with tempfile.TemporaryDirectory(prefix=".sorting-", dir=dst) as tmp:
        for s in groups:
            name = _unique(s.folder_name(), taken)
            work = Path(tmp) / name
            work.mkdir()
            names: set[str] = set()
            for f in s.files:
                target = _unique(f.name, names)
                shutil.copy2(f, work / target)
            os.replace(work, dst / name)
            entries.append({"folder": name, "series_instance_uid": s.uid, "modality": s.modality,
                            "series_number": s.number, "series_description": s.description, "files": len(s.files)})
            log.info("%s: %d file(s), %s %s", name, len(s.files), s.modality or "?", s.description)
    manifest = {"source": str(src), "series": entries,
                "skipped": [{"file": str(p), "reason": r} for p, r in skipped]}
    atomic_write_bytes(dst / MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n")
    for p, reason in skipped:
        log.warning("%s: skipped (%s)", p, reason)
    return manifest
