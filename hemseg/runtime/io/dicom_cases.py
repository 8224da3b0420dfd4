"""Which DICOM images belong to one case (patient), read from their headers.

A DICOM file says whose it is: Patient ID, and the study it belongs to (Study Instance UID). Images of one
patient must stay on one side of a training split (slices of one spine on both sides make the validation Dice
optimistic), so both ``hemseg data sort-dicom --dataset`` (which writes ``cases.csv``) and the dataset reader (a
dataset of DICOM images without ``cases.csv``) group by them, with one rule:

- by Patient ID when the images carry two or more distinct ones;
- else by study (``study:<Study Instance UID>``) when an export anonymized to one Patient ID keeps two or more
  studies apart;
- else not at all (one patient, one study: nothing to keep together that a split could tell apart).

An image without the chosen identifier is a case of its own. A multi-valued Patient ID (``DOE\\JOHN``) is read as
DICOM writes it, its values joined by backslashes (:func:`header_text`).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence as _Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

#: grouping keys, in the order they are tried
KEYS = ("patient", "study")
#: how a key is named to users (logs, ``hemseg data check``)
KEY_NAMES = {"patient": "DICOM Patient ID", "study": "DICOM Study Instance UID"}


@dataclass(frozen=True)
class DicomIdentity:
    """Patient ID and Study Instance UID of one image (``""`` when absent)."""

    patient: str = ""
    study: str = ""


def header_text(ds, keyword: str) -> str:
    """The value of ``keyword`` in the pydicom dataset ``ds`` as text, stripped (``""`` when absent): a multi-valued
    one as DICOM writes it, its values joined by backslashes (``T2\\SAG``, not the list ``['T2', 'SAG']``)."""
    value = ds.get(keyword, "")
    if isinstance(value, _Sequence) and not isinstance(value, (str, bytes)):
        return "\\".join(str(v).strip() for v in value).strip()
    return str(value if value is not None else "").strip()


def identity_of(ds) -> DicomIdentity:
    """The identity in a pydicom dataset's header."""
    return DicomIdentity(patient=header_text(ds, "PatientID"), study=header_text(ds, "StudyInstanceUID"))


def read_identity(path: Path) -> DicomIdentity | None:
    """The identity in the header of the DICOM file ``path``; ``None`` when it cannot be read (the image reader
    reports such a file when the image is loaded)."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True,
                             specific_tags=["PatientID", "StudyInstanceUID"])
        return identity_of(ds)
    except Exception as exc:  # truncated or not DICOM after all
        log.debug("%s: no DICOM identity: %s", path, exc)
        return None


def case_of(identity: DicomIdentity | None, key: str) -> str | None:
    """The case of an image grouped by ``key``: its Patient ID (by patient), else ``study:<UID>``; ``None`` when
    the header has neither (the image is a case of its own)."""
    if identity is None:
        return None
    if key == "patient" and identity.patient:
        return identity.patient
    return f"study:{identity.study}" if identity.study else None


def case_key(identities: Sequence[DicomIdentity | None]) -> str | None:
    """The first key of :data:`KEYS` that tells two or more of ``identities`` apart (an image without that
    identifier counts as distinct), else ``None``."""
    for key in KEYS:
        if len({case_of(ident, key) or f"\0{n}" for n, ident in enumerate(identities)}) >= 2:
            return key
    return None
