"""DICOM Segmentation (SEG) output through highdicom (the ``[dicom]`` extra): one binary SEG per DICOM input.

Conventions (what a PACS or viewer finds in the file):

- One SEG instance per input (a DICOM series folder, or one single- or multi-frame DICOM file), Segmentation Type
  ``BINARY``, Explicit VR Little Endian, a fresh SOP Instance UID, a Series Instance UID derived from the source
  series, the model and the settings that change the mask (:func:`seg_series_uid`), Series Number = the source's + 1000
  (1000 when the source has none), Series Description ``hemseg hemangioma``, Content Label ``HEMANGIOMA``.
- One segment: number 1, label ``hemangioma``, Segmented Property Category SCT 49755003 "Morphologically Abnormal
  Structure", Segmented Property Type SCT 400210000 "Hemangioma", Anatomic Region SCT 421060004 "Spine", Segment
  Algorithm Type ``AUTOMATIC``.
- Algorithm identification (the segment's Algorithm Identification Sequence, and the equipment attributes):
  Algorithm Name ``hemseg``, Algorithm Family DCM 123110 "Artificial Intelligence", Algorithm Version = the hemseg
  version, Algorithm Source ``hemseg <model file name>``, Algorithm Parameters ``model_sha256=<hex>,model=<arch>,
  precision=<p>,threshold=<t>[,tta=flip][,postprocess=off],backend=<runtime>/<compute precision>`` (the model file's
  precision, then the run's settings: ``tta`` and ``postprocess`` only where not the defaults, the runtime that
  computed it, e.g. ``openvino/bf16``); Manufacturer and Manufacturer's Model Name ``hemseg``, Software Versions = the
  hemseg version, Device Serial Number = the first 16 hex digits of the model's sha256. For an ensemble
  (``--ensemble-with``) the model file names are joined by ``+`` and ``model_sha256`` is the SHA-256 of the members'
  hex digests joined by ``+``.
- References and geometry: the source headers are re-read (no pixel data) from ``ImageVolume.sources``. highdicom
  copies the patient and study modules (same Study Instance UID), the Frame of Reference UID, lists every source
  instance in the Referenced Series Sequence (source Series Instance UID + SOP Instance UIDs), and gives each frame
  a Derivation Image / Source Image item naming the source SOP Instance (and frame number for a multi-frame
  source) plus the source's Image Position (Patient), Image Orientation (Patient) and Pixel Spacing / slice
  thickness (shared functional groups).
- Frames: mask slice ``k`` belongs to ``sources[k]`` (a series, slice order of the reader) or to frame ``k`` of
  the one source file. Frames without a lesion pixel are omitted, as the standard allows (a segment need only be
  encoded in the frames where it is present); when the whole mask is empty every frame is kept (a SEG needs at
  least one frame), so the SEG then states "no hemangioma" for every source image.
- Errors: a non-DICOM input, or a DICOM input whose headers lack what a SEG needs (e.g. no Image Position /
  Orientation, no Frame of Reference), is an :class:`~hemseg.errors.InputError`; a missing highdicom is a
  :class:`~hemseg.errors.DependencyError` naming the extra. The file is written atomically.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hemseg import __version__
from hemseg.errors import DependencyError, InputError, ModelError
from hemseg.runtime.io.volume import ImageVolume
from hemseg.runtime.io.writers import write_dicom

log = logging.getLogger(__name__)

DICOM_KINDS = ("dicom", "dicom-series")
SEGMENT_LABEL = "hemangioma"
CONTENT_LABEL = "HEMANGIOMA"
SERIES_DESCRIPTION = "hemseg hemangioma"
SERIES_NUMBER_OFFSET = 1000
#: (code value, coding scheme, meaning) of the segment's category, type and anatomic region (SNOMED CT).
CATEGORY = ("49755003", "SCT", "Morphologically Abnormal Structure")
PROPERTY_TYPE = ("400210000", "SCT", "Hemangioma")
ANATOMIC_REGION = ("421060004", "SCT", "Spine")
ALGORITHM_FAMILY = ("123110", "DCM", "Artificial Intelligence")
#: Attributes of every source a SEG needs (the references and the shared Frame of Reference).
REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
#: The geometry a SEG (and an RT Structure Set) copies from its source: (functional group macro, attribute); in a
#: multi-frame file the macro in the shared or the per-frame functional groups, else the attribute itself.
GEOMETRY = (("PlanePositionSequence", "ImagePositionPatient"), ("PlaneOrientationSequence", "ImageOrientationPatient"),
            ("PixelMeasuresSequence", "PixelSpacing"))
INSTALL_HINT = "pip install 'hemseg[dicom]' (highdicom, pynetdicom, pylibjpeg)"
#: Type 2 attributes of the source (present, possibly empty) that highdicom copies into the SEG and reads as
#: attributes: the Patient and General Study modules'.
#: Anonymizers often delete them instead of emptying them; the SEG then gets them empty, as the source meant.
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber")


@dataclass(frozen=True)
class AlgorithmInfo:
    """What identifies the algorithm in a SEG: the model file and its content hash, plus a few parameters."""

    model_name: str
    model_sha256: str
    architecture: str = ""
    precision: str = ""
    threshold: float | None = None
    version: str = __version__
    tta: str | None = None  #: test-time augmentation ("flip"), None without
    postprocess: bool = True  #: the mask clean-up (False: threshold only)
    backend: str = ""  #: the runtime that computed it and its precision, e.g. "openvino/bf16"

    def settings(self) -> dict[str, str]:
        """The run's settings that change the mask, where they differ from the defaults (none: ``{}``)."""
        out = {}
        if self.tta:
            out["tta"] = self.tta
        if not self.postprocess:
            out["postprocess"] = "off"
        return out

    def parameters(self) -> dict[str, str]:
        params = {"model_sha256": self.model_sha256}
        if self.architecture:
            params["model"] = self.architecture
        if self.precision:
            params["precision"] = self.precision
        if self.threshold is not None:
            params["threshold"] = f"{float(self.threshold):g}"
        params.update(self.settings())
        if self.backend:
            params["backend"] = self.backend
        return params

    def parameter_text(self) -> str:
        """:meth:`parameters` as ``key=value,...`` (the SEG's Algorithm Parameters)."""
        return ",".join(f"{k}={v}" for k, v in self.parameters().items())

    def series_entropy(self) -> list[str]:
        """What a result series UID is derived from besides its source series: the model's sha256, plus the
        settings that change the mask when they are not the defaults (a --tta or --no-postprocess run of one model
        lands in a series of its own; a default run in the series earlier versions gave it)."""
        extra = self.settings()
        return [self.model_sha256] + ([",".join(f"{k}={v}" for k, v in extra.items())] if extra else [])

    @classmethod
    def for_model(cls, loaded, *, tta: bool = False, postprocess: bool = True,
                  versions: list | None = None) -> "AlgorithmInfo":
        """From a :class:`hemseg.runtime.backends.select.LoadedModel` (hashes the model file) and the run's
        settings: ``tta`` (flip test-time augmentation) and ``postprocess`` (mask clean-up). ``versions``: the
        :func:`hemseg.runtime.io.hashing.file_version` of each model file (the main one, then the members) taken
        when it was loaded; a file replaced since is a ModelError, never another model's hash in a SEG."""
        from hemseg.runtime.io.hashing import sha256_file, sha256_of_version

        meta = loaded.metadata
        paths = [Path(loaded.path), *getattr(loaded, "members", ())]
        if versions is None:
            digests = [sha256_file(p) for p in paths]
        else:
            digests = [sha256_of_version(p, v) for p, v in zip(paths, versions)]
            replaced = next((p for p, d in zip(paths, digests) if d is None), None)
            if replaced is not None:
                raise ModelError(replaced, "was replaced since it was loaded (an export into its folder?): the DICOM "
                                           "output would name a model that did not make it; run again")
        # an ensemble: its file names joined by "+", and the SHA-256 of its members' hex digests joined by "+"
        digest = digests[0] if len(digests) == 1 else hashlib.sha256("+".join(digests).encode()).hexdigest()
        compute, backend = getattr(getattr(loaded, "runner", None), "precision", None), getattr(loaded, "backend", "")
        backend = f"{backend}/{compute}" if backend and compute else str(backend or "")
        return cls(model_name="+".join(p.name for p in paths), model_sha256=digest,
                   architecture=meta.model, precision=meta.precision, threshold=meta.threshold,
                   tta="flip" if tta else None, postprocess=bool(postprocess), backend=backend)


def require_highdicom():
    """The highdicom module, or a DependencyError naming the extra to install."""
    try:
        import highdicom
    except ImportError as exc:
        raise DependencyError(f"DICOM SEG output needs highdicom ({exc}); {INSTALL_HINT}") from None
    return highdicom


def is_dicom_volume(vol: ImageVolume) -> bool:
    return vol.kind in DICOM_KINDS and bool(vol.sources)


def _one_line(exc: BaseException) -> str:
    # pydicom puts the traceback of a value it could not convert inside its message: the reason comes before it
    message = str(exc).split("Traceback (most recent call last)")[0]
    text = " ".join(line.strip() for line in message.strip().splitlines() if line.strip())
    text = text or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def read_headers(vol: ImageVolume) -> list:
    """The datasets of ``vol``'s source files without pixel data (one read per file; hand them to
    :func:`missing_references` and :func:`write_dicom_seg` so that neither reads them again)."""
    import pydicom

    if not is_dicom_volume(vol):
        raise InputError(vol.path, f"DICOM SEG output needs a DICOM input (a DICOM file or series folder); this "
                                   f"is a {vol.kind} input: use --format auto, png or nifti")
    headers = []
    for path in vol.sources:
        try:
            headers.append(pydicom.dcmread(str(path), stop_before_pixels=True, force=True))
        except Exception as exc:  # the file changed or vanished since it was read
            raise InputError(path, f"cannot re-read the DICOM header for the SEG: {_one_line(exc)}") from None
    _thickness_from_spacing(vol, headers)
    return headers


def _thickness_from_spacing(vol: ImageVolume, headers: list) -> None:
    """Give single-frame slices of a series that state no usable SliceThickness (Type 2: it may be empty) the
    extent their positions give them: the slice spacing (each slice's own where the spacing is uneven), so a SEG,
    whose Pixel Measures need a thickness, can be made of them (an RT Structure Set, which needs none, was made and
    a SEG was not). A single slice has no spacing and stays without."""
    from hemseg.runtime.io import dicom

    if vol.affine is None or vol.n_slices < 2 or len(headers) != vol.n_slices:
        return
    if any(int(h.get("NumberOfFrames", 1) or 1) != 1 for h in headers):
        return
    uneven = vol.slice_thickness_mm
    step = float(np.linalg.norm(np.asarray(vol.affine)[:3, 2]))
    extent = [float(uneven[k]) if uneven is not None and len(uneven) == vol.n_slices else step
              for k in range(vol.n_slices)]

    def usable(header) -> bool:
        try:
            value = header.get("SliceThickness", None)
            return value not in (None, "") and dicom._number(value, "SliceThickness") > 0
        except dicom._BadValue:
            return False

    missing = [k for k, header in enumerate(headers) if not usable(header)]
    if not all(np.isfinite(extent[k]) and extent[k] > 0 for k in missing):
        return  # no extent to give: the SEG is refused as before, naming the slice
    filled = [extent[k] for k in missing]
    for k in missing:
        headers[k].SliceThickness = f"{extent[k]:.6g}"
    if filled:
        log.info("%s: %d slice(s) state no SliceThickness; the DICOM SEG records the slice spacing their positions "
                 "give (%.4g mm) as their thickness", vol.path, len(filled), filled[0])


#: what "lacks" means in the messages naming :func:`_missing`'s attributes
MISSING_MEANS = "absent, or holding a value that cannot be used"


def _missing(header, thickness: bool = True) -> list[str]:
    """The attributes of :data:`REQUIRED` and :data:`GEOMETRY` that ``header`` lacks, or holds in a form the
    reader cannot use (a one-value PixelSpacing, an ImageOrientationPatient that is no plane); for a multi-frame
    file also its per-frame functional groups (each frame's position), without which no SEG can place its frames."""
    from hemseg.runtime.io import dicom

    frames = int(header.get("NumberOfFrames", 1) or 1)
    frame = 0 if frames > 1 else None
    missing = [k for k in REQUIRED if not str(header.get(k, "") or "").strip()]
    for (_, keyword), read in zip(GEOMETRY, (dicom._position, dicom._orientation, dicom._spacing)):
        try:
            usable = read(header, frame) is not None
        except dicom._BadValue:  # not a number
            usable = False
        if not usable:
            missing.append(keyword)
    if thickness:  # the Pixel Measures of a SEG's frames need it (highdicom's own reader refuses a SEG without it)
        try:
            thick = dicom.group_value(header, "PixelMeasuresSequence", "SliceThickness", frame)
            usable = thick not in (None, "") and dicom._number(thick, "SliceThickness") > 0
        except dicom._BadValue:
            usable = False
        if not usable:
            missing.append("SliceThickness")
    if frames > 1 and len(header.get("PerFrameFunctionalGroupsSequence", None) or ()) != frames:
        missing.append("PerFrameFunctionalGroupsSequence")
    elif frames > 1 and "ImagePositionPatient" not in missing:  # every frame's position, not only the first's
        try:
            unplaced = [k + 1 for k in range(frames) if dicom._position(header, k) is None]
        except dicom._BadValue:
            unplaced = [0]
        if unplaced:
            missing.append(f"ImagePositionPatient of frame {unplaced[0]}" if unplaced[0] else "ImagePositionPatient")
    return missing


def missing_references(vol: ImageVolume, headers: list | None = None) -> list[str]:
    """The identifiers a DICOM SEG of ``vol`` must reference (:data:`REQUIRED`) and the geometry it copies
    (:data:`GEOMETRY`) that some source file lacks (none for a SEG-able input), so that ``--format auto`` can choose
    another mask format before writing anything.
    ``headers``: :func:`read_headers` of ``vol`` when already read."""
    missing: list[str] = []
    headers = read_headers(vol) if headers is None else headers
    for header in headers:
        missing += [k for k in _missing(header) if k not in missing]
    shared = _shared_instance(vol, headers)
    if shared:
        missing.append(f"a SOPInstanceUID of its own in every slice ({shared[0].name} and {shared[1].name} share one)")
    return missing


def _shared_instance(vol: ImageVolume, headers: list) -> tuple[Path, Path] | None:
    """Two source files of ``vol`` that share a SOP Instance UID (two slices that claim to be one instance: a SEG or
    RT Structure Set could not say which its frames and contours belong to), or None."""
    seen: dict[str, Path] = {}
    for path, header in zip(vol.sources, headers):
        uid = str(header.get("SOPInstanceUID", "") or "").strip()
        if uid in seen:
            return seen[uid], Path(path)
        seen[uid] = Path(path)
    return None


def source_headers(vol: ImageVolume, headers: list | None = None, output: str = "a DICOM SEG",
                   thickness: bool = True) -> list:
    """The source datasets of ``vol`` without pixel data, in slice order, checked against the mask layout
    (``headers``: :func:`read_headers` of ``vol`` when already read; ``output`` names what is made of them in the
    error when one lacks a reference or geometry; ``thickness``: whether the SliceThickness a SEG's Pixel Measures
    copy is needed too)."""
    headers = read_headers(vol) if headers is None else headers
    for path, header in zip(vol.sources, headers):
        missing = _missing(header, thickness)
        if missing:
            raise InputError(path, f"lacks {', '.join(missing)}, which {output} needs ({MISSING_MEANS})")
    shared = _shared_instance(vol, headers)
    if shared:
        raise InputError(shared[1], f"has the SOP Instance UID of {shared[0].name}: two slices that claim to be one "
                                    f"instance, which {output} cannot reference apart")
    n = vol.n_slices
    if len(headers) == 1:
        frames = int(headers[0].get("NumberOfFrames", 1) or 1)
        if frames != n:
            raise InputError(vol.path, f"the DICOM file has {frames} frame(s) but {n} slice(s) were segmented")
    elif len(headers) != n:
        raise InputError(vol.path, f"{len(headers)} source files for {n} segmented slices")
    return headers


def _code(hd, triple: tuple[str, str, str]):
    return hd.sr.CodedConcept(value=triple[0], scheme_designator=triple[1], meaning=triple[2])


def segment_description(hd, algorithm: AlgorithmInfo):
    """The one segment (number 1, hemangioma) with its SNOMED CT codes and the algorithm identification."""
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=_code(hd, CATEGORY),
        segmented_property_type=_code(hd, PROPERTY_TYPE),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="hemseg", family=_code(hd, ALGORITHM_FAMILY), version=algorithm.version,
            source=f"hemseg {algorithm.model_name}"[:64], parameters=algorithm.parameters()),
        anatomic_regions=[_code(hd, ANATOMIC_REGION)],
    )


def _series_number(header) -> int:
    try:
        number = int(header.get("SeriesNumber"))
    except (TypeError, ValueError):
        return SERIES_NUMBER_OFFSET
    return number + SERIES_NUMBER_OFFSET if 0 <= number < 2**31 - 1 - SERIES_NUMBER_OFFSET else SERIES_NUMBER_OFFSET


def seg_series_uid(source_series_uid: str, algorithm: AlgorithmInfo) -> str:
    """The SEG's Series Instance UID: derived from the source series and the model's sha256 (and the settings that
    change the mask, :meth:`AlgorithmInfo.series_entropy`), so every SEG hemseg makes of one series with one model
    and settings lands in one SEG series (each SEG instance gets a fresh SOP Instance UID)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["hemseg DICOM SEG", str(source_series_uid), *algorithm.series_entropy()]))


def volume_mask(mask: np.ndarray, vol: ImageVolume) -> np.ndarray:
    """``mask`` ((H, W) or (N, H, W)) as the (N, H, W) mask of ``vol``; ValueError when the shapes differ."""
    mask = np.asarray(mask)
    if mask.ndim == 2:
        mask = mask[None]
    if mask.shape != vol.data.shape:
        raise ValueError(f"mask of shape {mask.shape} does not match the image's {vol.data.shape}")
    return mask


#: what the derived objects (SEG, RTSTRUCT) copy from their source as it is: the patient and study
COPIED_AS_IS = (*TYPE2_COPIED, "StudyInstanceUID", "StudyDescription")
#: the most characters of one component group of a person name (PN)
PN_GROUP_LENGTH = 64


def values_over_length(header, keywords=COPIED_AS_IS) -> list[str]:
    """``keyword (VR) of N characters, M allowed`` for each value of ``header`` among ``keywords`` longer than its VR
    allows (PS3.5 6.2; an anonymizer's 80-character Patient ID, a 30-character Accession Number)."""
    from pydicom.multival import MultiValue
    from pydicom.valuerep import MAX_VALUE_LEN

    out = []
    for keyword in keywords:
        elem = header.data_element(keyword) if keyword in header else None
        vr = str(getattr(elem, "VR", ""))
        # a person name: 64 characters per component group (alphabetic=ideographic=phonetic; PS3.5 6.2), which
        # pydicom checks with a line of its own (a 70-character Patient's Name went unnamed: stop 52)
        limit = PN_GROUP_LENGTH if vr == "PN" else MAX_VALUE_LEN.get(vr, 0)
        if not limit or elem.value in (None, ""):
            continue
        values = list(elem.value) if isinstance(elem.value, MultiValue) else [elem.value]
        parts = [g for v in values for g in str(v).split("=")] if vr == "PN" else [str(v) for v in values]
        longest = max((len(p) for p in parts), default=0)
        if longest > limit:
            out.append(f"{keyword} ({vr}) of {longest} characters, {limit} allowed" + (" per component group"
                                                                                       if vr == "PN" else ""))
    return out


def warn_values_over_length(vol: ImageVolume, header, output: str) -> None:
    """One warning naming the source when ``output`` (a SEG, an RT Structure Set) copies values longer than the
    standard allows: copied as they are (the object is filed with its source by them), but a strict PACS or a
    validator may refuse it. pydicom's own warnings of them, on reading, named no file."""
    over = values_over_length(header)
    if over:
        log.warning("%s: %s copies values longer than the standard allows as they are, so that it is filed with its "
                    "source (a strict PACS may refuse it): %s", vol.path, output, "; ".join(over))


def type2_present(header):
    """``header``, or a copy of it that a derived object can copy the patient and study from: the Type 2
    attributes highdicom copies (:data:`TYPE2_COPIED`) added empty where the source deleted them (highdicom failed
    on the first it missed: "'FileDataset' object has no attribute 'PatientBirthDate'"), and values the standard
    does not allow, which highdicom refuses and a strict PACS may too, made conformant (:func:`conformant_values`)."""
    import copy

    absent = [k for k in TYPE2_COPIED if k not in header]
    changes = conformant_values(header)
    if not absent and not changes:
        return header
    header = copy.deepcopy(header)
    if "SpecificCharacterSet" in changes:  # decode every text value with the source's sets before changing them
        header.decode()
    for keyword, value in changes.items():
        setattr(header, keyword, value)
    for keyword in absent:
        setattr(header, keyword, None)  # present, empty
    return header


#: Patient Sex (PS3.3 C.7.1.1): M, F, O or empty
_SEXES = ("M", "F", "O")
#: DA and TM as PS3.5 6.2 defines them (YYYYMMDD; HH[MM[SS[.F{1,6}]]]), and the ACR-NEMA forms it names
#: (YYYY.MM.DD, HH:MM:SS.frac) and their dashed variant, which lose their separators
_DA, _DA_ACR_NEMA = r"\d{8}", r"\d{4}([-.])\d{2}\1\d{2}"
_TM, _TM_ACR_NEMA = r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?", r"\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?"
#: the Specific Character Set defined terms (PS3.3 C.12.1.1.2) highdicom takes, one per value (not ISO 2022 IR 149)
CHARACTER_SETS = frozenset(
    ["ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110", "ISO_IR 144", "ISO_IR 127", "ISO_IR 126", "ISO_IR 138",
     "ISO_IR 148", "ISO_IR 203", "ISO_IR 13", "ISO_IR 166", "ISO_IR 192", "GB18030", "GBK"]
    + [f"ISO 2022 IR {n}" for n in (6, 100, 101, 109, 110, 144, 127, 126, 138, 148, 203, 13, 166, 87, 159, 58)])


def conformant_values(header) -> dict[str, Any]:
    """The patient / study values of ``header`` a derived object cannot copy as they are, with what it copies instead
    (keyword -> value): Patient Sex other than M / F / O (``m`` -> ``M``, ``FEMALE`` -> ``F``; ``U``, ``X`` and the
    rest empty, unknown); dates and times in an ACR-NEMA form (``1980-01-01``, ``2020.03.04``, ``18:50:59``)
    without their separators, other values that are not the standard's dates and times empty; a Patient Name of
    several values its first; a Specific Character Set with a value highdicom does not know (``\\ISO 2022 IR 87``,
    the default repertoire written as an empty first value, as Japanese and Korean scanners do): UTF-8
    (``ISO_IR 192``), the values decoded first."""
    import re

    from pydicom.multival import MultiValue

    changes: dict[str, Any] = {}
    sex = header.get("PatientSex")
    if sex not in (None, ""):
        text = str(sex).strip().upper()
        fixed = text if text in _SEXES else text[0] if text in ("MALE", "FEMALE", "OTHER") else None
        if fixed != str(sex):
            changes["PatientSex"] = fixed
    for keyword, form, acr_nema in (("PatientBirthDate", _DA, _DA_ACR_NEMA), ("StudyDate", _DA, _DA_ACR_NEMA),
                                    ("StudyTime", _TM, _TM_ACR_NEMA)):
        value = header.get(keyword)
        if value in (None, ""):
            continue
        text = "" if isinstance(value, MultiValue) else str(value).strip()
        if re.fullmatch(form, text):
            if text != str(value):
                changes[keyword] = text
        else:
            changes[keyword] = re.sub(r"[-.:]", "", text) if re.fullmatch(acr_nema, text) else None
    name = header.get("PatientName")
    if isinstance(name, MultiValue):
        changes["PatientName"] = name[0] if len(name) else None
    charset = header.get("SpecificCharacterSet")
    if charset not in (None, ""):
        values = list(charset) if isinstance(charset, MultiValue) else [charset]
        if any(str(v) not in CHARACTER_SETS for v in values):
            changes["SpecificCharacterSet"] = "ISO_IR 192"
    return changes


def shared_geometry(header):
    """``header`` as highdicom reads a multi-frame source: the orientation and pixel measures in the shared
    functional groups. The standard also allows them per frame (Philips-style enhanced MR); highdicom then refuses
    the source ("must have a shared orientation"), so a copy gets the macros moved from the per-frame groups into
    the shared one. The reader (:func:`hemseg.runtime.io.dicom.read_dicom_file`) has checked that every frame has
    the same values. Other headers are returned as they are."""
    import copy

    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        return header
    shared_seq = header.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    moved = [m for m in ("PlaneOrientationSequence", "PixelMeasuresSequence")
             if (shared is None or m not in shared) and all(m in group for group in per_frame)]
    if not moved:
        return header
    header = copy.deepcopy(header)
    if not header.get("SharedFunctionalGroupsSequence"):
        header.SharedFunctionalGroupsSequence = Sequence([Dataset()])
    shared = header.SharedFunctionalGroupsSequence[0]
    for macro in moved:
        setattr(shared, macro, copy.deepcopy(header.PerFrameFunctionalGroupsSequence[0][macro].value))
        for group in header.PerFrameFunctionalGroupsSequence:
            del group[macro]
    return header


def _same_plane() -> dict:
    """How far (absolute) a slice's ImageOrientationPatient / relative PixelSpacing may differ from the first slice's
    to be given the first slice's values: the series reader's own tolerances (rounded decimal strings)."""
    from hemseg.runtime.io.dicom import ORIENTATION_TOLERANCE, SPACING_TOLERANCE

    return {"ImageOrientationPatient": ("abs", ORIENTATION_TOLERANCE), "PixelSpacing": ("rel", SPACING_TOLERANCE)}


def one_plane_geometry(headers: list) -> list:
    """The slices of a series as highdicom takes them: one ImageOrientationPatient and PixelSpacing for all. Slices
    whose values differ in the last decimals only (rounded differently; the series reader takes them as one plane
    and one grid) made highdicom refuse the whole series ("Source images must have a shared orientation"); copies
    get the first slice's values. Values that differ by more are left as they are (highdicom then refuses, as the
    reader does). Headers that already agree are returned as they are."""
    import copy

    if len(headers) < 2:
        return headers
    out = list(headers)
    for keyword, (kind, tol) in _same_plane().items():
        first = headers[0].get(keyword)
        if first is None:
            continue
        ref = np.array([float(v) for v in first])
        for i, header in enumerate(out):
            value = header.get(keyword)
            if value is None or [str(v) for v in value] == [str(v) for v in first]:
                continue
            try:
                vals = np.array([float(v) for v in value])
            except (TypeError, ValueError):
                continue
            close = vals.shape == ref.shape and (np.allclose(vals, ref, atol=tol, rtol=0) if kind == "abs"
                                                 else np.allclose(vals, ref, rtol=tol, atol=0))
            if close:
                if out[i] is headers[i]:
                    out[i] = copy.deepcopy(header)
                setattr(out[i], keyword, copy.deepcopy(first))
    return out


def build_dicom_seg(mask: np.ndarray, vol: ImageVolume, algorithm: AlgorithmInfo, headers: list | None = None):
    """The SEG dataset (a ``highdicom.seg.Segmentation``) for an (N, H, W) {0, 1} mask of the DICOM input ``vol``
    (``headers``: :func:`read_headers` of ``vol`` when already read)."""
    hd = require_highdicom()
    mask = volume_mask(mask, vol)
    headers = one_plane_geometry([type2_present(shared_geometry(h)) for h in source_headers(vol, headers)])
    warn_values_over_length(vol, headers[0], "the SEG")
    binary = (mask != 0).astype(np.uint8)
    try:
        with warnings.catch_warnings():
            # the source's Patient's Name copied as it is: an anonymized 'PAT1' (one component) is not ours to judge,
            # and pydicom's warning of it named no file
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name",
                                    category=UserWarning)
            seg = hd.seg.Segmentation(
                source_images=headers,
                pixel_array=binary,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=[segment_description(hd, algorithm)],
                series_instance_uid=seg_series_uid(headers[0].get("SeriesInstanceUID", ""), algorithm),
                series_number=_series_number(headers[0]),
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer="hemseg",
                manufacturer_model_name="hemseg",
                software_versions=algorithm.version,
                device_serial_number=algorithm.model_sha256[:16] or "unknown",
                content_description="hemseg hemangioma segmentation",
                content_label=CONTENT_LABEL,
                series_description=SERIES_DESCRIPTION,
                omit_empty_frames=bool(binary.any()),
            )
    except (ValueError, AttributeError, TypeError, KeyError, IndexError) as exc:
        log.debug("%s: highdicom refused the SEG", vol.path, exc_info=True)
        raise InputError(vol.path, f"cannot build a DICOM SEG from these DICOM headers: {_one_line(exc)}") from None
    if vol.n_slices == 1:
        _no_invented_spacing(seg, headers[0])
    else:
        _spacing_of_positions(seg, vol)
    return seg


def _spacing_of_positions(seg, vol: ImageVolume) -> None:
    """highdicom copies the source's SpacingBetweenSlices into the SEG's Pixel Measures. Some scanners write the gap
    between slices there, or a value left from another protocol: a SEG whose frames sit 4 mm apart stating 10 mm
    cannot be made a volume again (highdicom's ``get_volume`` refuses it; a QA finding of stop 52), while hemseg
    itself places the slices by their positions. A stated spacing that differs from the step of the positions (the
    affine's, :mod:`hemseg.runtime.io.dicom`) is replaced by that step: with a warning beyond 1 %, at -v below (a
    rounded "4.01" over 4 mm steps: highdicom allows about 1 % of one step of drift over the whole stack, so 0.25 %
    per slice failed over 20 slices). A series of uneven steps (:attr:`ImageVolume.slice_thickness_mm` set) has no one
    spacing: a stated one is removed (the attribute is optional in the Pixel Measures macro; each frame's position
    places it), with a warning (gaps of 4, 4, 6 and 4 mm got a SEG stating the source's 6: a QA finding of stop 53)."""
    if vol.affine is None:
        return
    groups = [*(seg.get("SharedFunctionalGroupsSequence") or ()), *(seg.get("PerFrameFunctionalGroupsSequence") or ())]
    if vol.slice_thickness_mm is not None:
        _drop_uneven_spacing(groups, vol)
        return
    step = float(np.linalg.norm(np.asarray(vol.affine, dtype=np.float64)[:3, 2]))
    said = False
    for group in groups:
        for measures in group.get("PixelMeasuresSequence") or ():
            stated = measures.get("SpacingBetweenSlices")
            if stated in (None, "") or abs(float(stated) - step) <= 1e-5 * step:
                continue
            if not said:
                level = logging.WARNING if abs(float(stated) - step) > 0.01 * step else logging.DEBUG
                log.log(level, "%s: the source's SpacingBetweenSlices %s mm disagrees with its slice positions (%.6g "
                               "mm apart); the SEG states %.6g mm", vol.path, stated, step, step)
                said = True
            measures.SpacingBetweenSlices = f"{step:.6g}"


def _drop_uneven_spacing(groups, vol: ImageVolume) -> None:
    stated = None
    for group in groups:
        for measures in group.get("PixelMeasuresSequence") or ():
            if "SpacingBetweenSlices" in measures:
                stated = stated if stated is not None else measures.SpacingBetweenSlices
                del measures.SpacingBetweenSlices
    if stated not in (None, ""):
        log.warning("%s: the slices are unevenly spaced, so the SEG states no SpacingBetweenSlices (the source's %s mm "
                    "is not the step between all of them); each frame's position places it", vol.path, stated)


def _no_invented_spacing(seg, source) -> None:
    """highdicom gives the SEG of a single slice a SpacingBetweenSlices of 1.0 mm (its stand-in for one position);
    a source that states none gets none (the attribute is optional in the Pixel Measures macro)."""
    from hemseg.runtime.io import dicom

    if dicom.group_value(source, "PixelMeasuresSequence", "SpacingBetweenSlices") not in (None, ""):
        return
    for group in seg.get("SharedFunctionalGroupsSequence") or ():
        for measures in group.get("PixelMeasuresSequence") or ():
            if "SpacingBetweenSlices" in measures:
                del measures.SpacingBetweenSlices


def write_dicom_seg(path: str | Path, mask: np.ndarray, vol: ImageVolume, algorithm: AlgorithmInfo,
                    headers: list | None = None, replaces: Path | None = None):
    """Build the SEG of ``mask`` for ``vol`` and write it to ``path`` atomically; returns the dataset.
    ``replaces``: the earlier output this one replaces (:func:`number_after`)."""
    seg = build_dicom_seg(mask, vol, algorithm, headers)
    number_after(seg, replaces)
    write_dicom(path, seg)
    return seg


def number_after(ds, earlier: Path | None) -> None:
    """Number ``ds`` after the object it replaces: when ``earlier`` (the file it is written over) is an object of
    the same series (the same source and model: a re-run, or a series segmented again after it changed), ``ds``
    takes its InstanceNumber + 1. Every re-segmentation was instance 1 of one series, so a PACS held several SEGs
    numbered 1 and no viewer could tell the latest."""
    if earlier is None or not Path(earlier).is_file():
        return
    import pydicom

    try:
        old = pydicom.dcmread(str(earlier), stop_before_pixels=True,
                              specific_tags=["SeriesInstanceUID", "InstanceNumber"])
        number = int(old.get("InstanceNumber") or 0)
    except Exception:  # noqa: BLE001 - not a DICOM file, no usable number: nothing to follow
        return
    if str(old.get("SeriesInstanceUID", "")) != str(ds.SeriesInstanceUID):
        return
    if 0 <= number < 2**31 - 1:
        ds.InstanceNumber = number + 1
    elif number >= 2**31 - 1:  # IS holds no larger number
        log.warning("%s: the object it replaces has the largest InstanceNumber DICOM allows (%d): numbered 1",
                    earlier, number)
