"""``hemseg data sort-dicom``: copy a folder of mixed DICOM files (a PACS or CD export, nested or flat) into one
folder per series, the layout ``hemseg predict``, ``hemseg train`` and the series reader expect.

- Every file under the source folder (recursively; hidden files and ``DICOMDIR`` skipped) with a ``.dcm``/``.dicom``
  name or ``DICM`` at byte 128 is read without its pixel data and grouped by ``SeriesInstanceUID``.
- Series folder names: ``<SeriesNumber, 3 digits>_<Modality>_<SeriesDescription>`` with every character outside
  ``A-Z a-z 0-9 . _ -`` replaced by ``_`` (``000`` when there is no number, ``series`` when nothing else is left),
  ``_2``, ``_3`` ... when two series would get the same name. Files keep their names (``_2`` ... on collisions).
- The inputs are only read. Output goes to a new folder: the destination must not exist or be empty (the temporary
  folder of a killed sort does not count). Everything is copied into a temporary folder inside it and the series
  folders are renamed into place once all are complete, so an interrupted run leaves no series folder under its
  final name (nothing that looks like a whole export).
- ``series.json`` in the destination lists each series: ``folder``, ``series_instance_uid``, ``modality``,
  ``series_number``, ``series_description``, ``files``, ``kind`` (``image``, ``mask`` for a DICOM SEG or RT Structure
  Set, ``other`` for reports and other RT objects), and for a mask ``references``: the folders of the image series
  it was drawn on (the series and instances it references, :func:`references_of`); plus ``skipped`` (files that
  looked like DICOM but could not be read, and copies of an instance already read from another file, i.e. of the
  same SOP Instance UID, as an export holding a study twice has; with the reason). Of such copies the largest file is
  sorted (a copy cut short by a failed transfer is smaller than the complete one), the first found when they are
  equal in size.
- With ``dataset=True`` (``--dataset``) the destination is a hemseg training/evaluation dataset instead: image
  series go to ``images/<folder>/``, and a mask goes to ``masks/<folder>.dcm`` when it is one file that references
  exactly one image series and is the only mask referencing it (a SEG or RTSTRUCT of that series, read by
  :mod:`hemseg.runtime.io.dicom_mask`). Masks that cannot be paired that way, and other objects, are not copied and
  are listed in ``series.json`` (``unpaired_masks`` with the reason, ``ignored``); image series without a mask are
  copied (``hemseg data check`` lists them as unpaired). ``categories.csv`` gives each image series the category
  of its Series Description (lower case, runs of other characters than letters and digits as ``_``; else its
  modality): series of one sequence from several patients or studies share a category, so training stratifies by
  sequence and ``hemseg eval`` reports per sequence, as the paper's tables do. Edit it to group differently.
  ``cases.csv`` gives each image series its patient (Patient ID), so training and report splits keep a patient's
  series on one side (:data:`hemseg.runtime.dataset.CASES_CSV`); when every series has the same Patient ID (an
  export anonymized to one ID) but the studies differ, the study (``study:<Study Instance UID>``) is the case; it
  is not written when all series come from one patient and study (splits then stay per series); the rule is
  :mod:`hemseg.runtime.io.dicom_cases`'s, which the dataset reader also applies to DICOM images without
  ``cases.csv``. ``series.json`` says which (``cases_by``: ``patient``, ``study`` or null; ``cases``).
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
from hemseg.runtime.io.dicom_cases import DicomIdentity, case_key, case_of, identity_of
from hemseg.runtime.io.sniff import is_dicom_file
from hemseg.runtime.io.writers import atomic_write_bytes

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MANIFEST = "series.json"
#: the start of a skipped file's reason when its SOP Instance UID was already read from another file
DUPLICATE = "duplicate: the same SOP Instance UID as"


@dataclass
class Series:
    uid: str
    modality: str
    number: int | None
    description: str
    files: list[Path] = field(default_factory=list)
    kind: str = "image"  # image, mask (SEG or RTSTRUCT) or other (reports, RT plans and doses, ...)
    sops: set[str] = field(default_factory=set)  # the SOP Instance UIDs of its files
    ref_series: set[str] = field(default_factory=set)  # series UIDs named in its sequences (masks only)
    ref_sops: set[str] = field(default_factory=set)  # instance UIDs named in its sequences (masks only)
    identity: DicomIdentity = DicomIdentity()  # Patient ID, Study Instance UID: the case

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


def _kind(ds) -> str:
    from hemseg.runtime.io.dicom import non_image_kind
    from hemseg.runtime.io.dicom_mask import mask_kind_of

    if mask_kind_of(ds) is not None:
        return "mask"
    return "other" if non_image_kind(ds) is not None else "image"


def references_of(ds) -> tuple[set[str], set[str]]:
    """(series UIDs, instance UIDs) that the sequences of ``ds`` name: where a SEG (Referenced Series Sequence,
    per-frame Source Image Sequence) or an RT Structure Set (RT Referenced Series Sequence, Contour Image Sequence)
    says which images it was drawn on."""
    own = str(ds.get("SeriesInstanceUID", "") or "").strip()
    series: set[str] = set()
    sops: set[str] = set()
    for elem in ds.iterall():
        if elem.keyword == "ReferencedSOPInstanceUID":
            values = elem.value if isinstance(elem.value, (list, tuple)) or elem.VM > 1 else [elem.value]
            sops.update(str(v).strip() for v in values if str(v).strip())
        elif elem.keyword == "SeriesInstanceUID" and str(elem.value).strip() not in ("", own):
            series.add(str(elem.value).strip())
    return series, sops


def _case_of(s: Series, key: str) -> str:
    return case_of(s.identity, key) or f"series:{s.uid}"


def _image_case_key(groups: list[Series]) -> str | None:
    """How the image series are grouped into cases (:func:`hemseg.runtime.io.dicom_cases.case_key`)."""
    return case_key([s.identity for s in groups if s.kind == "image"])


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def group_series(src: Path) -> tuple[list[Series], list[tuple[Path, str]]]:
    """The DICOM files under ``src`` grouped by series (in order of first appearance) and the skipped files."""
    import pydicom

    series: dict[str, Series] = {}
    skipped: list[tuple[Path, str]] = []
    first_of: dict[str, Path] = {}  # SOP Instance UID -> the file that brought it
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
        sop = str(ds.get("SOPInstanceUID", "") or "").strip()
        if sop and sop in first_of:  # an export holding a study twice: the same instance once in its series
            kept = first_of[sop]
            entry = series.get(uid)
            if entry is not None and kept in entry.files and _size(path) > _size(kept):
                # the copy sorted first is shorter: a truncated one (a cut-off transfer); the complete copy is kept
                entry.files[entry.files.index(kept)] = path
                first_of[sop] = path
                skipped.append((kept, f"{DUPLICATE} {path}, which is larger (this copy is {_size(kept)} of "
                                      f"{_size(path)} bytes: cut short?)"))
            else:
                differs = "" if _size(path) == _size(kept) else f" ({_size(path)} bytes against {_size(kept)})"
                skipped.append((path, f"{DUPLICATE} {kept}{differs}"))
            continue
        if sop:
            first_of[sop] = path
        if uid not in series:
            series[uid] = Series(uid=uid, modality=str(ds.get("Modality", "") or "").strip(),
                                 number=_number(ds.get("SeriesNumber")),
                                 description=str(ds.get("SeriesDescription", "") or "").strip(), kind=_kind(ds),
                                 identity=identity_of(ds))
        entry = series[uid]
        entry.files.append(path)
        entry.sops.add(sop)
        if entry.kind == "mask":
            ref_series, ref_sops = references_of(ds)
            entry.ref_series |= ref_series
            entry.ref_sops |= ref_sops
    return list(series.values()), skipped


def _referenced_images(groups: list[Series]) -> dict[str, list[str]]:
    """Mask series UID -> the UIDs of the image series it references (by series UID or by instance)."""
    order = {s.uid: k for k, s in enumerate(g for g in groups if g.kind == "image")}
    series_of = {sop: s.uid for s in groups if s.kind == "image" for sop in s.sops}
    out = {}
    for s in groups:
        if s.kind == "mask":
            refs = ({u for u in s.ref_series if u in order} | {series_of[x] for x in s.ref_sops if x in series_of})
            out[s.uid] = sorted(refs, key=order.__getitem__)
    return out


def category_of(s: Series) -> str:
    """The ``categories.csv`` category of an image series: its Series Description, else its modality, normalized."""
    text = re.sub(r"[^a-z0-9]+", "_", (s.description or s.modality or "series").lower()).strip("_")
    return text or "series"


def _pairs(groups: list[Series], refs: dict[str, list[str]]) -> tuple[dict[str, Series], list[tuple[Series, str]]]:
    """(image series UID -> its one mask, [(mask that is not paired, why)]) for ``dataset=True``."""
    by_image: dict[str, list[Series]] = {}
    unpaired = []
    for s in groups:
        if s.kind != "mask":
            continue
        if not refs[s.uid]:
            unpaired.append((s, "references no image series of this export"))
        elif len(refs[s.uid]) > 1:
            unpaired.append((s, f"references {len(refs[s.uid])} image series"))
        elif len(s.files) != 1:
            unpaired.append((s, f"is {len(s.files)} files, not one"))
        else:
            by_image.setdefault(refs[s.uid][0], []).append(s)
    pairs = {}
    for image_uid, masks in by_image.items():
        if len(masks) == 1:
            pairs[image_uid] = masks[0]
        else:
            unpaired += [(m, f"is one of {len(masks)} masks of the same image series") for m in masks]
    return pairs, unpaired


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``<stem>_2<suffix>``, ``<stem>_3<suffix>`` ... when taken (compared without case)."""
    stem, suffix = (name[: -len(Path(name).suffix)], Path(name).suffix) if Path(name).suffix else (name, "")
    out, k = name, 1
    while out.lower() in taken:
        k += 1
        out = f"{stem}_{k}{suffix}"
    taken.add(out.lower())
    return out


def sort_dicom(src: str | Path, dst: str | Path, dataset: bool = False) -> dict:
    """Copy the DICOM files under ``src`` into one folder per series under ``dst`` (with ``dataset``: a hemseg
    dataset, ``images/`` + ``masks/``; see the module's docstring); returns the manifest (also written to
    ``dst/series.json``)."""
    from hemseg.runtime.dataset import stem_table_text

    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise InputError(src, "not a folder")
    if dst.is_dir():  # the temporary folder of a sort that was killed (SIGKILL, a power cut) is not content
        for stale in dst.glob(".sorting-*"):
            shutil.rmtree(stale, ignore_errors=True)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise UsageError(f"{dst}: the destination exists and is not an empty folder; choose a new one")
    src_r, dst_r = src.resolve(), dst.resolve()
    if dst_r == src_r or src_r in dst_r.parents:
        raise UsageError(f"{dst}: the destination lies inside the source folder {src}; choose one outside it")
    groups, skipped = group_series(src)
    if not groups:
        raise InputError(src, "no DICOM files with a SeriesInstanceUID found (.dcm/.dicom names or 'DICM' at byte "
                              "128, sub-folders included)")
    taken: set[str] = set()
    names = {s.uid: _unique(s.folder_name(), taken) for s in groups}
    refs = _referenced_images(groups)
    pairs, unpaired = _pairs(groups, refs) if dataset else ({}, [])
    key = _image_case_key(groups)
    cases = {names[s.uid]: _case_of(s, key) for s in groups if s.kind == "image"} if key else {}
    if dataset and not any(s.kind == "image" for s in groups):
        raise InputError(src, "no DICOM image series to make a dataset of (only masks, reports or RT objects)")
    dst.mkdir(parents=True, exist_ok=True)
    entries = []
    with tempfile.TemporaryDirectory(prefix=".sorting-", dir=dst) as tmp:
        if dataset:
            for sub in ("images", "masks"):
                (Path(tmp) / sub).mkdir()
        for s in groups:
            entry = {"folder": names[s.uid], "series_instance_uid": s.uid, "modality": s.modality,
                     "series_number": s.number, "series_description": s.description, "files": len(s.files),
                     "kind": s.kind}
            if s.kind == "mask":
                entry["references"] = [names[u] for u in refs[s.uid]]
            entries.append(entry)
            if dataset and s.kind != "image":
                continue
            work = Path(tmp) / names[s.uid]
            work.mkdir()
            file_names: set[str] = set()
            for f in s.files:
                shutil.copy2(f, work / _unique(f.name, file_names))
            if dataset and s.uid in pairs:
                shutil.copy2(pairs[s.uid].files[0], Path(tmp) / "masks" / f"{names[s.uid]}.dcm")
                entry["mask"] = f"masks/{names[s.uid]}.dcm"
            if dataset:
                os.replace(work, Path(tmp) / "images" / names[s.uid])
            log.info("%s: %d file(s), %s %s", names[s.uid], len(s.files), s.modality or "?", s.description)
        # everything copied: only now does it move into place (an interrupted sort left some series folders
        # that looked like the whole export, and a rerun was refused for them)
        for sub in ("images", "masks") if dataset else [names[s.uid] for s in groups]:
            os.replace(Path(tmp) / sub, dst / sub)
        if dataset:
            rows = [(names[s.uid], category_of(s)) for s in groups if s.kind == "image"]
            atomic_write_bytes(dst / "categories.csv", stem_table_text("category", rows).encode())
            if key is not None:  # two or more patients (or, with one Patient ID for all, studies)
                atomic_write_bytes(dst / "cases.csv", stem_table_text("case", cases.items()).encode())
    manifest: dict = {"source": str(src), "series": entries,
                      "skipped": [{"file": str(p), "reason": r} for p, r in skipped]}
    if dataset:
        manifest["layout"] = "dataset"
        manifest["unpaired_masks"] = [{"folder": names[m.uid], "reason": why} for m, why in unpaired]
        manifest["ignored"] = [names[s.uid] for s in groups if s.kind == "other"]
        manifest["cases_by"] = key
        manifest["cases"] = len(set(cases.values())) if key else 1
    atomic_write_bytes(dst / MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n")
    duplicates = [(p, reason) for p, reason in skipped if reason.startswith(DUPLICATE)]
    if duplicates:
        log.warning("%s: %d file(s) skipped as copies of instances already sorted (e.g. %s: %s); series.json lists "
                    "them", src, len(duplicates), duplicates[0][0], duplicates[0][1])
    for p, reason in skipped:
        if not reason.startswith(DUPLICATE):
            log.warning("%s: skipped (%s)", p, reason)
    for m, why in unpaired:
        log.warning("%s (%s): not used as a mask: it %s", names[m.uid], m.modality or "mask", why)
    return manifest
