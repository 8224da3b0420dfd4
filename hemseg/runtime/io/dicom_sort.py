"""``hemseg data sort-dicom``: copy a folder of mixed DICOM files (a PACS or CD export, nested or flat) into one
folder per series, the layout ``hemseg predict``, ``hemseg train`` and the series reader expect.

- Every regular file under the source folder (recursively; a symbolic link to one included) with a
  ``.dcm``/``.dicom`` name, ``DICM`` at byte 128 or the start of a bare data set (``DICOMDIR`` index files aside) is read without its pixel data
  and grouped by ``SeriesInstanceUID``. Symbolic links to folders are followed, each folder once (a link to a folder
  already read, a loop among them, is not followed again, nor one into the destination). What looks like DICOM
  and is not sorted is never left out unsaid: ``series.json``'s ``skipped`` lists it with the reason, and the log
  warns of it:

  - hidden files (a name starting with ``.``, or in a folder whose name does) that look like DICOM (``hidden file``):
    not sorted, by design;
  - folders that cannot be listed (``unreadable folder: <reason>``), files that cannot be opened, whatever their
    name (``unreadable: <reason>``), files that are not DICOM after all (``unreadable: ...``) or have no
    ``SeriesInstanceUID``;
  - ``.dcm``/``.dicom`` names that are no regular file (a named pipe, a device, a socket: ``not a regular file``);
    such files are never opened (a pipe would block the sort forever), and under other names they are passed over
    like every file that is not DICOM;
  - files cut short, as a failed transfer leaves them: in a native (uncompressed) transfer syntax, Pixel Data that
    holds fewer bytes than Rows x Columns x Samples per Pixel x Bits Allocated / 8 x Number of Frames, none when
    the file ends where it would start (``pixel data cut short: N of M bytes``); compressed pixel data is not
    checked, nor a file cut before its Rows and Columns;
  - copies of an instance already read from another file (the same SOP Instance UID), as an export holding a study
    twice has: the file found first is sorted; a byte-identical copy is listed as a ``duplicate``, one with other
    content as a ``conflicting copy`` (a copy cut short is skipped as such, so of a short and a complete copy the
    complete one is sorted, whichever comes first).
- Series folder names: ``<SeriesNumber, 3 digits>_<Modality>_<SeriesDescription>``, accents dropped and every other
  run of characters outside ``A-Z a-z 0-9 . _ -`` replaced by ``_`` (:mod:`hemseg.runtime.io.safe_names`) (``000`` when there is no number, ``series`` when nothing else is left),
  ``_2``, ``_3`` ... when two series would get the same name. A multi-valued header value (``T2\\SAG``) is read as
  DICOM writes it, its values joined by backslashes. Files keep their names (``_2`` ... on collisions, the name
  shortened where needed to stay within the 255 bytes a file name may have).
- The inputs are only read. Output goes to a new folder: the destination must not exist or be empty, and must lie
  outside the source folder (and not hold it); every refusal comes before anything is written or removed. Before
  it writes or removes anything in the destination, and until it is done, the sort holds an exclusive lock on
  ``<destination>/.hemseg-sort.lock`` (the file is removed when done): a second sort into the same folder is
  refused, in one line, without touching it. What a sort that was killed (SIGKILL, a power cut) leaves does not
  count as content, and is removed once the lock is held (then no other sort owns it): its lock file, its temporary
  folder (``.sorting-`` and 8 lower-case letters, digits or ``_``, holding the sort's mark ``.hemseg-sort-temp``),
  and, when it was killed while renaming its results into place, the journal ``.hemseg-sort-moving`` written before
  the first rename and removed after ``series.json``, with the names it lists. Anything else, a ``.sorting-backup``
  or ``.sorting-20240101`` folder of the user's included, is content. Everything is copied into a temporary folder
  inside the destination and the series folders are renamed into place once all are complete, so an interrupted
  run leaves no series folder under its final name (nothing that looks like a whole export). A file that cannot be
  copied (a full disk, a file gone) stops the sort with that file's name and the reason; the destination is left
  empty.
- ``series.json`` in the destination lists each series: ``folder``, ``series_instance_uid``, ``modality``,
  ``series_number``, ``series_description``, ``files``, ``kind`` (``image``, ``mask`` for a DICOM SEG or RT Structure
  Set, ``other`` for reports and other RT objects), and for a mask ``references``: the folders of the image series
  it was drawn on (the series and instances it references, :func:`references_of`), and ``warnings`` for an image
  series whose files name several patients, studies, frames of reference or modalities (one Series Instance UID
  reused, a mis-merged export: the series reader refuses it, so the sort says so at once, naming the files), in
  folder name order; plus ``skipped`` (``file``, a file or folder, and ``reason``, as above).
- With ``dataset=True`` (``--dataset``) the destination is a hemseg training/evaluation dataset instead: image
  series go to ``images/<folder>/``, and a mask goes to ``masks/<folder>.dcm`` when it is one file that references
  exactly one image series and is the only mask referencing it (a SEG or RTSTRUCT of that series, read by
  :mod:`hemseg.runtime.io.dicom_mask`). Masks that cannot be paired that way, and other objects, are not copied and
  are listed in ``series.json`` (``unpaired_masks`` with the reason and their ``source_files``, ``ignored``; the
  series entry of an object not copied gives its ``source_files``, a paired mask's ``copied_to``); image series without a mask are
  copied (``hemseg data check`` lists them as unpaired). ``categories.csv`` gives each image series the category
  of its Series Description (NFKC-normalized, lower case, runs of other characters than letters and digits, of any
  script, as ``_``; else its modality): series of one sequence from several patients or studies share a category,
  so training stratifies by sequence and ``hemseg eval`` reports per sequence, as the paper's tables do. Edit it to
  group differently. ``cases.csv`` gives each image series its patient (Patient ID), so training and report splits
  keep a patient's series on one side (:data:`hemseg.runtime.dataset.CASES_CSV`); when every series has the same
  Patient ID (an export anonymized to one ID) but the studies differ, the study (``study:<Study Instance UID>``) is
  the case; it is not written when all series come from one patient and study (splits then stay per series); the
  rule is :mod:`hemseg.runtime.io.dicom_cases`'s, which the dataset reader also applies to DICOM images without
  ``cases.csv``. ``series.json`` says which (``cases_by``: ``patient``, ``study`` or null; ``cases``).
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import logging
import os
import re
import shutil
import stat
import struct
import tempfile
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from hemseg.errors import HemsegError, InputError, UsageError
from hemseg.runtime.io.dicom import SUBJECT_KEYS, SUBJECT_PLURALS, printable
from hemseg.runtime.io.dicom_cases import DicomIdentity, case_key, case_of, header_text, identity_of
from hemseg.runtime.io.lock import FolderLock
from hemseg.runtime.io.regular import read_regular_text
from hemseg.runtime.io.safe_names import file_safe
from hemseg.runtime.io.sniff import DICOM_MAGIC_OFFSET, format_from_name, looks_like_dicom, read_head
from hemseg.runtime.io.writers import atomic_write_bytes, final_names, temp_prefix

log = logging.getLogger(__name__)

MANIFEST = "series.json"
#: the lock a sort holds on its destination, removed when it ends
SORT_LOCK = ".hemseg-sort.lock"
_TEMP_PREFIX = ".sorting-"
#: the temporary folder of a sort (``tempfile``'s names): what a killed sort leaves
_TEMP_NAME = re.compile(r"\.sorting-[a-z0-9_]{8}")
#: a sort's mark inside its temporary folder: a folder of the user's named like one is never taken for a leftover
_TEMP_MARKER = ".hemseg-sort-temp"
#: written into the destination before the series folders are renamed into place, removed once series.json is
#: there: the names a sort killed between its renames left (removed by the next sort, not content)
MOVING = ".hemseg-sort-moving"
_NAME_MAX = 255  # bytes in a file name (ext4, XFS, APFS, NTFS ...)

# the reasons of skipped files (``series.json``): those the log and the CLI count together start with these
#: a byte-identical copy of an instance already read from another file
DUPLICATE = "duplicate: the same SOP Instance UID as"
#: a file with the SOP Instance UID of one read before but other content
CONFLICT = "conflicting copy: the same SOP Instance UID as"
#: a hidden file that looks like DICOM
HIDDEN = "hidden file"
#: a folder that could not be listed
UNREADABLE_FOLDER = "unreadable folder"
#: an empty or binary file without another format's name beside DICOM files: a copy cut short?
MAYBE_DAMAGED = "not DICOM beside DICOM files, a damaged copy?"
NOT_REGULAR = "not a regular file (a named pipe, device or socket: not opened)"
#: a DICOMDIR under another name (DICOMDIR-1, dicomdir.dcm): an index of the media's files, not one of them
DIRECTORY = "a DICOMDIR (the media's index, not an image; the files it lists are sorted by their own headers)"
MEDIA_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"
CUT_SHORT = "pixel data cut short"
#: a copy that is a byte prefix of another file of the same instance
CUT_COPY = "cut short: a byte prefix of"
#: how the CLI's summary names each kind (the rest: unreadable or incomplete files)
SKIP_KINDS = ((DUPLICATE, "copies of instances already sorted"),
              (CONFLICT, "conflicting copies of instances already sorted"),
              (HIDDEN, "hidden file(s)"), (UNREADABLE_FOLDER, "unreadable folder(s)"),
              (DIRECTORY, "DICOMDIR index file(s)"))


#: what every file of one image series must share (the series reader's): the sort checks them as it reads the
#: headers, instead of leaving it to a later command
ONE_VOLUME_KEYS = SUBJECT_KEYS


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
    #: keyword of :data:`ONE_VOLUME_KEYS` -> value -> the files that carry it (the first file's value may be alone)
    values: dict[str, dict[str, list[Path]]] = field(default_factory=dict)

    def add(self, path: Path, ds) -> None:
        """Count ``path`` (of header ``ds``) in: its file, instance and what it says of the series' volume."""
        self.files.append(path)
        self.sops.add(header_text(ds, "SOPInstanceUID"))
        for keyword, _ in ONE_VOLUME_KEYS:
            value = header_text(ds, keyword)
            if value:
                self.values.setdefault(keyword, {}).setdefault(value, []).append(path)

    def mixed(self) -> list[str]:
        """Why the files of this image series are not one volume (several patients, studies, frames of reference or
        modalities under one Series Instance UID), one sentence each; the series reader refuses such a series, so
        hemseg predict, data check and train would fail on it later."""
        out = []
        for keyword, what in ONE_VOLUME_KEYS:
            seen = self.values.get(keyword, {})
            if self.kind == "image" and len(seen) > 1:
                listed = "; ".join(f"{printable(v)} in {len(fs)} (e.g. {fs[0]})" for v, fs in
                                   sorted(seen.items(), key=lambda kv: -len(kv[1]))[:3])
                whats = SUBJECT_PLURALS.get(what, f"{what}s")
                out.append(f"its files name {len(seen)} {whats} ({keyword} {listed}): not one volume, so hemseg "
                           "predict, data check and train refuse this series; split it or fix the headers")
        return out

    def folder_name(self) -> str:
        parts = [f"{self.number:03d}" if self.number is not None else "000"]
        parts += [p for p in (self.modality, self.description) if p]
        name = file_safe("_".join(parts)).strip("._-")[:100]
        return name or "series"


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _hidden_folder(root: Path, src: Path) -> str | None:
    """The first folder on the way from ``src`` to ``root`` whose name starts with ``.``, or None."""
    return next((part for part in root.relative_to(src).parts if part.startswith(".")), None)


def _within(real: str, folder: str | None) -> bool:
    return folder is not None and (real == folder or real.startswith(folder.rstrip(os.sep) + os.sep))


def _folders_to_walk(root: Path, names: list[str], seen: dict[str, Path], avoid: str | None) -> list[str]:
    """The sub-folders of ``root`` to walk into, in name order: each real folder once (``seen``: real path -> the
    path it was read as), never the destination ``avoid`` (the real path) or a folder in it."""
    keep = []
    for name in sorted(names):
        path = root / name
        real = os.path.realpath(path)
        if _within(real, avoid):
            log.info("%s: the destination folder (a symbolic link leads there): not read", path)
        elif real in seen:
            log.info("%s: the same folder as %s, read once", path, seen[real])
        else:
            seen[real] = path
            keep.append(name)
    return keep


def _triage(path: Path, hidden_folder: str | None) -> bool | str:
    """True for a DICOM file to read; False for a file that is not DICOM (passed over); else why a file that is, or
    may be, DICOM is skipped. A file that is not regular is never opened (a named pipe would block)."""
    if path.name.upper() == "DICOMDIR":
        return False
    named = format_from_name(path) == "dicom"
    try:
        mode = os.stat(path).st_mode  # a symbolic link's target: its content is what would be copied
    except OSError as exc:  # a broken link, a file gone
        return f"unreadable: {_os_reason(exc)}"
    if not stat.S_ISREG(mode):
        return NOT_REGULAR if named else False
    if not named:
        try:
            head = read_head(path, DICOM_MAGIC_OFFSET + 4)
        except OSError as exc:  # it may be DICOM: said, not passed over
            return f"unreadable: {_os_reason(exc)}"
        if not looks_like_dicom(head):
            from hemseg.runtime.io.dicom import damaged_slice_reason

            # an empty or binary extensionless file where DICOM files lie (a copy cut short) is said, not passed
            # over without a word while predict refuses the series folder it sits in (QA, stop 56)
            damaged = None if path.name.startswith(".") or hidden_folder else damaged_slice_reason(path)
            return f"{MAYBE_DAMAGED}: {damaged}" if damaged else False
    if path.name.startswith("."):
        return HIDDEN
    return f"{HIDDEN} (in the hidden folder {hidden_folder})" if hidden_folder else True


def _dicom_files(src: Path, skipped: list[tuple[Path, str]], avoid: Path | None = None) -> list[Path]:
    """The DICOM files under ``src`` to read, in walking order (folders depth first, names sorted); what looks like
    DICOM and is not to be read goes to ``skipped`` with the reason."""
    avoid_real = os.path.realpath(avoid) if avoid is not None else None
    seen = {os.path.realpath(src): src}

    def unreadable(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename is not None else src
        if where == src:
            raise InputError(src, f"cannot read this folder ({_os_reason(exc)})")
        skipped.append((where, f"{UNREADABLE_FOLDER}: {_os_reason(exc)}"))

    found = []
    for root, dirs, files in os.walk(src, onerror=unreadable, followlinks=True):
        root_path = Path(root)
        dirs[:] = _folders_to_walk(root_path, dirs, seen, avoid_real)
        hidden_folder = _hidden_folder(root_path, src)
        damaged = []  # said only beside DICOM files of the same folder (not every binary file of a tree)
        n_found = len(found)
        for name in sorted(files):
            verdict = _triage(root_path / name, hidden_folder)
            if verdict is True:
                found.append(root_path / name)
            elif verdict and verdict.startswith(MAYBE_DAMAGED):
                damaged.append((root_path / name, verdict))
            elif verdict:
                skipped.append((root_path / name, verdict))
        if len(found) > n_found:
            skipped.extend(damaged)
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


_NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}  # implicit/explicit LE, BE
_PIXEL_DATA_TAGS = {b"\xe0\x7f\x10\x00": "<", b"\x7f\xe0\x00\x10": ">"}  # (7FE0,0010) little / big endian
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN"}  # explicit VRs with a 4-byte length
_UNDEFINED_LENGTH = 0xFFFFFFFF


def _native(ds) -> bool:
    """True when the pixel data of ``ds`` is stored as is (a native transfer syntax, or none said: a bare dataset)."""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "").strip()
    return not syntax or syntax in _NATIVE_SYNTAXES


def _pixel_data_held(fh, size: int) -> int | None:
    """The bytes of Pixel Data the file ``fh`` (of ``size`` bytes) holds, read from its position: the start of the
    Pixel Data element, where ``pydicom.dcmread(stop_before_pixels=True)`` leaves it; 0 when the file ends there
    (cut before its Pixel Data, or it has none). None when another element starts there or the length is undefined
    (encapsulated)."""
    start = fh.tell()
    head = fh.read(12)
    if len(head) < 4:
        return 0
    order = _PIXEL_DATA_TAGS.get(head[:4])
    if order is None:
        return None
    if head[4:6] in _LONG_VRS:  # explicit VR: tag, VR, 2 reserved bytes, 4-byte length
        header, length_bytes = 12, head[8:12]
    else:  # implicit VR (always little endian): tag, 4-byte length (which never reads as one of those VRs: each
        # starts with an odd byte, 'O' or 'U', and a defined length is even)
        header, length_bytes = 8, head[4:8]
    if len(length_bytes) < 4:  # cut inside the element's header
        return 0
    declared = struct.unpack(f"{order}I", length_bytes)[0]
    return None if declared == _UNDEFINED_LENGTH else min(declared, max(size - start - header, 0))


def _pixel_bytes_needed(ds) -> int | None:
    """Rows x Columns x Samples per Pixel x Bits Allocated / 8 x Number of Frames (as pydicom counts it: bits
    rounded up to bytes, 4:2:2 YBR two thirds), or None when the header does not say (no image: an RT Structure
    Set, a report)."""
    try:
        bits = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * int(ds.BitsAllocated)
                * int(str(ds.get("NumberOfFrames", 1) or 1)))
    except Exception:  # noqa: BLE001 - absent, or a value cut short (pydicom's BytesLengthException and kin)
        return None
    needed = (bits + 7) // 8
    return needed // 3 * 2 if header_text(ds, "PhotometricInterpretation") == "YBR_FULL_422" else needed


#: SOP classes outside "... Image Storage" whose objects carry pixel data too (a mask, a dose grid, a parametric map)
_PIXEL_OBJECTS = {"Segmentation Storage", "Label Map Segmentation Storage", "RT Dose Storage",
                  "Parametric Map Storage"}


def _image_storage(ds) -> bool:
    """Whether the SOP class of ``ds`` is an image storage class (its registered name says "Image Storage"): an
    object of such a class without pixel data is cut short; other objects (waveforms, spectroscopy, RT records,
    plans, reports) have none to begin with."""
    from pydicom.uid import UID

    try:
        name = UID(header_text(ds, "SOPClassUID")).name
    except Exception:  # noqa: BLE001 - no or a malformed SOP Class UID
        return False
    return "Image Storage" in name or name in _PIXEL_OBJECTS


@contextlib.contextmanager
def _pydicom_quiet():
    """pydicom's own warnings while a header is read name no file (a text file named ``notes.dcm`` gave 'VR lookup
    failed for the raw element with tag (6568,6C6C)' before hemseg's line naming the file and the reason; a value
    pydicom finds odd, in a file sorted as it is, concerns the reader, not the sort): kept to -v (DEBUG) runs."""
    import pydicom  # noqa: F401 - imported first: its import sets its logger's level (to WARNING), undoing ours

    logger = logging.getLogger("pydicom")
    before = logger.level
    quiet = not log.isEnabledFor(logging.DEBUG)
    with warnings.catch_warnings():
        if quiet:
            logger.setLevel(logging.ERROR)
            warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")
        try:
            yield
        finally:
            logger.setLevel(before)


def _read_header(path: Path):
    """(the header of the DICOM file ``path``, None), or (None, why it cannot be sorted): not DICOM, no
    SeriesInstanceUID, or native pixel data cut short."""
    with _pydicom_quiet():
        return _read_header_of(path)


def _read_header_of(path: Path):
    import pydicom

    try:
        with open(path, "rb") as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
            size = os.fstat(fh.fileno()).st_size
            at_end = fh.tell() >= size  # the header ran to the end of the file: no Pixel Data element after it
            held = _pixel_data_held(fh, size) if _native(ds) else None
        for elem in ds.iterall():  # every value parsed now: one cut inside a value or a sequence fails here
            _ = elem.value
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:  # read whole where stop_before_pixels missed them
            held = None
        uid = header_text(ds, "SeriesInstanceUID")
    except OSError as exc:  # it went, or its permissions changed, since it was found
        return None, f"unreadable: {_os_reason(exc)}"
    except Exception as exc:  # truncated or not DICOM after all
        text = str(exc).strip()
        return None, f"unreadable: {text.splitlines()[0] if text else type(exc).__name__}"
    if not uid:
        meta = getattr(ds, "file_meta", None)
        if MEDIA_DIRECTORY_SOP_CLASS in (str(getattr(meta, "MediaStorageSOPClassUID", "") or "").strip(),
                                         header_text(ds, "SOPClassUID")) or "DirectoryRecordSequence" in ds:
            return None, DIRECTORY  # (one named DICOMDIR is passed over before it is read)
        if not len(ds) or at_end:  # read to its end without a series: cut short in its header, or not DICOM at all
            return None, "unreadable: no DICOM data set with a SeriesInstanceUID (cut short in its header, or not a " \
                         "DICOM file)"
        return None, "no SeriesInstanceUID"
    needed = _pixel_bytes_needed(ds)
    if at_end and needed is None and _image_storage(ds):
        # an image cut before its Rows and Columns: nothing says what pixel data it lacks, but it has none
        return None, f"{CUT_SHORT}: the file ends in its header, before its image attributes and pixel data"
    if held is not None and needed is not None and held < needed:
        return None, f"{CUT_SHORT}: {held} of {needed} bytes"
    return ds, None


def _is_prefix(short: Path, long: Path) -> bool:
    """Whether the file ``short`` is a strict byte prefix of ``long``: a copy cut short by a failed transfer."""
    try:
        n = short.stat().st_size
        if n >= long.stat().st_size:
            return False
        with open(short, "rb") as a, open(long, "rb") as b:
            while True:
                x = a.read(1 << 20)
                if not x:
                    return True
                if x != b.read(len(x)):
                    return False
    except OSError:
        return False


def _copy_reason(path: Path, kept: Path) -> str:
    """Why ``path``, of the same SOP Instance UID as ``kept`` (sorted), is skipped."""
    try:
        same = filecmp.cmp(path, kept, shallow=False)
    except OSError as exc:
        return f"unreadable: {_os_reason(exc)}"
    if same:
        return f"{DUPLICATE} {kept}"
    if _is_prefix(path, kept):
        return f"{CUT_COPY} {kept}, the same instance complete"
    syntaxes = [_transfer_syntax(p) for p in (path, kept)]
    if None not in syntaxes and syntaxes[0] != syntaxes[1]:  # one instance re-encoded: 'different content' misled
        return (f"{CONFLICT} {kept} in another transfer syntax ({syntaxes[0]}; that file's: {syntaxes[1]}; a "
                "re-encoding, its content not compared; the file found first is sorted)")
    return f"{CONFLICT} {kept} but other bytes (the file found first is sorted)"


def _transfer_syntax(path: Path) -> str | None:
    """The name of the transfer syntax ``path``'s file meta information states, or None when it states none."""
    from pydicom.filereader import read_file_meta_info
    from pydicom.uid import UID

    try:
        with _pydicom_quiet():
            uid = read_file_meta_info(path).get("TransferSyntaxUID")
    except Exception:  # noqa: BLE001 - no or a damaged file meta header: the bytes are all that can be said
        return None
    return UID(str(uid)).name if uid else None


def _new_series(ds, uid: str) -> Series:
    return Series(uid=uid, modality=header_text(ds, "Modality"), number=_number(ds.get("SeriesNumber")),
                  description=header_text(ds, "SeriesDescription"), kind=_kind(ds), identity=identity_of(ds))


def group_series(src: Path, avoid: Path | None = None) -> tuple[list[Series], list[tuple[Path, str]]]:
    """The DICOM files under ``src`` grouped by series (in order of first appearance) and the skipped files and
    folders, with the reason (see the module's docstring); ``avoid``: a folder not to read (the destination)."""
    series: dict[str, Series] = {}
    skipped: list[tuple[Path, str]] = []
    first_of: dict[str, Path] = {}  # SOP Instance UID -> the file that brought it
    for path in _dicom_files(src, skipped, avoid):
        ds, why = _read_header(path)
        if ds is None:
            skipped.append((path, why))
            continue
        uid, sop = header_text(ds, "SeriesInstanceUID"), header_text(ds, "SOPInstanceUID")
        if sop and sop in first_of:  # an export holding a study twice: the same instance once in its series
            kept = first_of[sop]
            # the series holding the first copy: looked up by file, not by this file's series UID (a copy cut inside
            # its SeriesInstanceUID reads as another, shorter UID)
            entry = next((e for e in series.values() if kept in e.files), None)
            if entry is not None and _is_prefix(kept, path):
                # the file sorted first is a cut-short copy of this one (a header cut the checks above cannot see
                # in a report or a structure set): the complete one is sorted, whichever came first, with what its
                # own header says (a one-file series, a mask, took it all from the cut header)
                if entry.files == [kept]:
                    del series[entry.uid]
                    entry = series.setdefault(uid, _new_series(ds, uid))
                    entry.add(path, ds)
                else:
                    entry.files[entry.files.index(kept)] = path
                if entry.kind == "mask":
                    ref_series, ref_sops = references_of(ds)
                    entry.ref_series |= ref_series
                    entry.ref_sops |= ref_sops
                first_of[sop] = path
                skipped.append((kept, f"{CUT_COPY} {path}, the same instance complete"))
                continue
            skipped.append((path, _copy_reason(path, kept)))
            continue
        if sop:
            first_of[sop] = path
        if uid not in series:
            series[uid] = _new_series(ds, uid)
        entry = series[uid]
        entry.add(path, ds)
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
    """The ``categories.csv`` category of an image series: its Series Description, else its modality, normalized
    (NFKC, lower case, runs of characters other than letters and digits of any script as ``_``: ``T2 сагиттальная``
    -> ``t2_сагиттальная``)."""
    text = unicodedata.normalize("NFKC", s.description or s.modality or "series").lower()
    return re.sub(r"[\W_]+", "_", text).strip("_") or "series"


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
            unpaired.append((s, f"is {len(s.files)} instances of one series, not one (two runs of one model write "
                                f"one SEG series: keep one file and sort again)"))
        else:
            by_image.setdefault(refs[s.uid][0], []).append(s)
    pairs = {}
    for image_uid, masks in by_image.items():
        if len(masks) == 1:
            pairs[image_uid] = masks[0]
        else:
            unpaired += [(m, f"is one of {len(masks)} masks of the same image series") for m in masks]
    return pairs, unpaired


def _fit(stem: str, tail: str) -> str:
    """``stem + tail``, ``stem`` shortened (in UTF-8 bytes, never inside a character) to fit a file name's 255."""
    room = max(_NAME_MAX - len(tail.encode("utf-8", "surrogateescape")), 0)
    return stem.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore") + tail


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``<stem>_2<suffix>``, ``<stem>_3<suffix>`` ... when taken (compared without case), the stem
    shortened where the name would pass 255 bytes."""
    suffix = Path(name).suffix if len(Path(name).suffix) <= 16 else ""  # a long "suffix" is no extension
    stem = name[: len(name) - len(suffix)]
    out, k = name, 1
    while out.lower() in taken:
        k += 1
        out = _fit(stem, f"_{k}{suffix}")
    taken.add(out.lower())
    return out


#: the names of the files a sort writes into the destination itself, as their temporary files start
_WRITE_TEMPS = tuple(temp_prefix(n) for n in (MOVING, MANIFEST, "categories.csv", "cases.csv"))


def _moving(dst: Path) -> set[str]:
    """The names the journal of a sort killed while it renamed its results into place lists (empty without one)."""
    try:
        names = json.loads(read_regular_text(dst / MOVING))["names"]
        return {str(n) for n in names if isinstance(n, str) and "/" not in n and n not in ("", ".", "..")}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _leftover(entry: Path, moving: set[str]) -> bool:
    """True for what a killed sort leaves in its destination: its lock file, its temporary folder (with the sort's
    mark inside), its journal of renames and what that journal lists."""
    if entry.is_symlink():
        return False
    if entry.name in (SORT_LOCK, MOVING):
        return entry.is_file()
    if entry.name.endswith(".tmp") and entry.name.startswith(_WRITE_TEMPS) and entry.is_file():
        return True  # atomic_write_bytes' temporary file of the journal, series.json or a table, killed mid-write
    if entry.name in moving:
        return True
    if not (_TEMP_NAME.fullmatch(entry.name) and entry.is_dir()):
        return False
    # the sort's mark inside, or nothing at all (its cleanup removes the mark first, then the folder: a kill between
    # the two leaves it empty; an empty folder of the user's so named is no loss either)
    return (entry / _TEMP_MARKER).is_file() or not any(entry.iterdir())


def _refuse_used(dst: Path) -> None:
    """UsageError unless ``dst`` does not exist or holds nothing but what killed sorts left."""
    if not (dst.exists() or dst.is_symlink()):
        return
    moving = _moving(dst) if dst.is_dir() else set()
    if not dst.is_dir() or not all(_leftover(entry, moving) for entry in dst.iterdir()):
        raise UsageError(f"{dst}: the destination exists and is not an empty folder; choose a new one")


def _refuse(src: Path, dst: Path) -> None:
    """Every refusal of the arguments, before anything is written or removed."""
    if not src.is_dir():
        raise InputError(src, "not a folder" if src.exists() else "no such folder")
    src_r, dst_r = src.resolve(), dst.resolve()
    if dst_r == src_r or src_r in dst_r.parents:
        raise UsageError(f"{dst}: the destination lies inside the source folder {src}; choose one outside it")
    if dst_r in src_r.parents:
        raise UsageError(f"{dst}: the source folder {src} lies inside the destination; choose another one")
    _refuse_used(dst)


def _lock(dst: Path) -> FolderLock:
    """The exclusive lock of the destination (created) for this sort; UsageError at once when another holds it."""
    dst.mkdir(parents=True, exist_ok=True)
    return FolderLock(dst, f"{dst}: another hemseg data sort-dicom is writing into this folder; wait for it to end "
                           "or choose another destination", name=SORT_LOCK).acquire()


def _remove_leftovers(dst: Path) -> None:
    """With the lock held: refuse the destination if it was used meanwhile, else remove the temporary folders of
    killed sorts (no running sort owns one now)."""
    _refuse_used(dst)
    for entry in sorted(dst.iterdir(), key=lambda e: e.name == MOVING):  # the journal last
        if entry.name != SORT_LOCK:
            log.info("%s: removing what a sort that did not end left", entry)
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def _copy(src_file: Path, target: Path) -> None:
    """Copy one source file; an OSError names the source file and the reason (not the temporary path)."""
    try:
        shutil.copy2(src_file, target)
    except OSError as exc:
        raise HemsegError(f"{src_file}: could not be copied into the destination: {_os_reason(exc)}") from None


def _write_series(tmp: Path, groups: list[Series], names: dict[str, str], refs: dict[str, list[str]],
                  pairs: dict[str, Series], dataset: bool) -> list[dict]:
    """Copy the series into the temporary folder ``tmp`` (as the destination will hold them); their manifest
    entries."""
    if dataset:
        for sub in ("images", "masks"):
            (tmp / sub).mkdir()
    entries = []
    mask_of = {m.uid: f"masks/{names[image]}.dcm" for image, m in pairs.items()}
    for s in groups:
        entry = {"folder": names[s.uid], "series_instance_uid": s.uid, "modality": s.modality,
                 "series_number": s.number, "series_description": s.description, "files": len(s.files),
                 "kind": s.kind}
        if s.kind == "mask":
            entry["references"] = [names[u] for u in refs[s.uid]]
        if s.mixed():
            entry["warnings"] = s.mixed()
        entries.append(entry)
        if dataset and s.kind != "image":
            # not copied as a folder (a dataset holds images/ and masks/ only): where it is, and where it went
            entry["source_files"] = [os.path.abspath(f) for f in s.files]
            if s.uid in mask_of:
                entry["copied_to"] = mask_of[s.uid]
            continue
        work = tmp / names[s.uid]
        work.mkdir()
        file_names: set[str] = set()
        for f in s.files:
            _copy(f, work / _unique(f.name, file_names))
        if dataset and s.uid in pairs:
            _copy(pairs[s.uid].files[0], tmp / "masks" / f"{names[s.uid]}.dcm")
            entry["mask"] = f"masks/{names[s.uid]}.dcm"
        if dataset:
            os.replace(work, tmp / "images" / names[s.uid])
        log.info("%s: %d file(s), %s %s", names[s.uid], len(s.files), s.modality or "?", _shown(s.description))
    return sorted(entries, key=lambda e: e["folder"])


def _shown(text: str) -> str:
    """``text`` for a log line: its letters as they are (accents, other scripts), control characters as ``?``."""
    return "".join(c if c.isprintable() else "?" for c in text)


def skipped_counts(skipped: list[dict]) -> list[tuple[int, str]]:
    """(count, what) of each kind of ``series.json``'s ``skipped`` entries present, for a summary line: unreadable
    or incomplete files (every reason not of :data:`SKIP_KINDS`) first, then the kinds of :data:`SKIP_KINDS`."""
    prefixes = tuple(prefix for prefix, _ in SKIP_KINDS)
    rest = sum(1 for item in skipped if not item["reason"].startswith(prefixes))
    counts = [(rest, "unreadable or incomplete file(s)")]
    counts += [(sum(1 for item in skipped if item["reason"].startswith(prefix)), what) for prefix, what in SKIP_KINDS]
    return [(n, what) for n, what in counts if n]


def _log_skipped(src: Path, skipped: list[tuple[Path, str]]) -> None:
    """One warning per skipped file; copies and hidden files (an export can hold many), one for all."""
    for prefix, what in ((DUPLICATE, "copies of instances already sorted"), (HIDDEN, "hidden files")):
        some = [(p, reason) for p, reason in skipped if reason.startswith(prefix)]
        if some:
            log.warning("%s: %d file(s) skipped as %s (e.g. %s: %s); series.json lists them", src, len(some), what,
                        some[0][0], some[0][1])
    for p, reason in skipped:
        if reason == DIRECTORY:  # a CD export's index: nothing is lost
            log.info("%s: skipped (%s)", p, reason)
        elif not reason.startswith((DUPLICATE, HIDDEN)):
            log.warning("%s: skipped (%s)", p, reason)


def _write_dataset_tables(dst: Path, groups: list[Series], names: dict[str, str], key: str | None,
                          cases: dict[str, str]) -> None:
    """``categories.csv`` and, when the series are of two or more cases, ``cases.csv`` of a dataset."""
    from hemseg.runtime.dataset import stem_table_text

    rows = [(names[s.uid], category_of(s)) for s in groups if s.kind == "image"]
    atomic_write_bytes(dst / "categories.csv", stem_table_text("category", rows).encode())
    if key is not None:  # two or more patients (or, with one Patient ID for all, studies)
        atomic_write_bytes(dst / "cases.csv", stem_table_text("case", cases.items()).encode())


def sort_dicom(src: str | Path, dst: str | Path, dataset: bool = False) -> dict:
    """Copy the DICOM files under ``src`` into one folder per series under ``dst`` (with ``dataset``: a hemseg
    dataset, ``images/`` + ``masks/``; see the module's docstring); returns the manifest (also written to
    ``dst/series.json``)."""
    src, dst = Path(src), Path(dst)
    _refuse(src, dst)
    groups, skipped = group_series(src, avoid=dst)
    if not groups:
        raise InputError(src, "no DICOM files with a SeriesInstanceUID found (.dcm/.dicom names or 'DICM' at byte "
                              "128, sub-folders included)")
    if dataset and not any(s.kind == "image" for s in groups):
        raise InputError(src, "no DICOM image series to make a dataset of (only masks, reports or RT objects)")
    taken: set[str] = set()
    names = {s.uid: _unique(s.folder_name(), taken) for s in groups}
    refs = _referenced_images(groups)
    pairs, unpaired = _pairs(groups, refs) if dataset else ({}, [])
    key = _image_case_key(groups)
    cases = {names[s.uid]: _case_of(s, key) for s in groups if s.kind == "image"} if key else {}
    lock = _lock(dst)
    try:
        _remove_leftovers(dst)
        with tempfile.TemporaryDirectory(prefix=_TEMP_PREFIX, dir=dst) as tmp, final_names(Path(tmp), dst):
            (Path(tmp) / _TEMP_MARKER).write_bytes(b"")
            entries = _write_series(Path(tmp), groups, names, refs, pairs, dataset)
            manifest: dict = {"source": str(src), "series": entries,
                              "skipped": [{"file": str(p), "reason": r} for p, r in skipped]}
            if dataset:
                _write_dataset_tables(Path(tmp), groups, names, key, cases)
                manifest["layout"] = "dataset"
                manifest["unpaired_masks"] = [{"folder": names[m.uid], "reason": why,
                                               "source_files": [os.path.abspath(f) for f in m.files]}
                                              for m, why in unpaired]
                manifest["ignored"] = [names[s.uid] for s in groups if s.kind == "other"]
                manifest["cases_by"] = key
                manifest["cases"] = len(set(cases.values())) if key else 1
            atomic_write_bytes(Path(tmp) / MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n")
            # everything written, tables and series.json too (a full disk at series.json left series folders that
            # looked like the whole export): only now does it move into place, series.json last; the journal
            # names what moves, so that a sort killed between two renames leaves nothing the next one takes for
            # content
            moved = list(("images", "masks") if dataset else [names[s.uid] for s in groups])
            moved += [n for n in ("categories.csv", "cases.csv") if (Path(tmp) / n).exists()] + [MANIFEST]
            atomic_write_bytes(dst / MOVING, json.dumps(
                {"names": [*moved, "categories.csv", "cases.csv", MANIFEST]}).encode())
            for sub in moved:
                os.replace(Path(tmp) / sub, dst / sub)
        (dst / MOVING).unlink(missing_ok=True)
    finally:
        lock.release()
    _log_skipped(src, skipped)
    for m, why in unpaired:
        log.warning("%s (%s, e.g. %s): not used as a mask: it %s", names[m.uid], m.modality or "mask", m.files[0],
                    why)
    for s in groups:
        for w in s.mixed():
            log.warning("%s (series %s): %s", names[s.uid], printable(s.uid), w)
    return manifest
