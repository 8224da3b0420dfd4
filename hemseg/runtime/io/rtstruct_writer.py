"""RT Structure Set (RTSTRUCT) output (pydicom, numpy, OpenCV): one structure set per DICOM input, for planning
systems and contouring tools that take structures rather than DICOM SEG.

Conventions:

- One ROI, number 1, name ``hemangioma``, generation algorithm ``AUTOMATIC``; RT ROI Observations with an empty
  interpreted type (Type 2: hemseg does not claim a radiotherapy role for it); display colour red.
- Contours: per slice, closed planar polygons along the pixel edges of the mask (the outline of its pixels as
  squares, as planning systems draw: the polygons enclose the mask's area, and no pixel centre lies on one), in
  patient coordinates (mm) from the slice's own Image Position / Orientation (Patient) and Pixel Spacing, each with
  a Contour Image Sequence naming its source instance (and frame of a multi-frame image). Holes and islands inside
  holes are further contours, to be combined by XOR (even-odd), the convention
  :mod:`hemseg.runtime.io.rtstruct_mask` reads back; a single pixel is a square. Read back by hemseg's reader, or
  by any "pixel centre inside" rasterization, the mask is recovered exactly (tested on random masks).
- Identity: patient and study modules copied from the source (same Study Instance UID), a Series Instance UID
  derived from the source series, the model and the settings that change the mask (re-runs land in one series), Series Number = the source's + 1000,
  Series Description ``hemseg hemangioma``, Structure Set Label ``HEMANGIOMA``, Manufacturer ``hemseg``, the
  model's name and sha256 in the equipment attributes as in the SEG (:class:`~hemseg.runtime.io.dicom_seg.AlgorithmInfo`),
  and the SEG's Algorithm Parameters (model, threshold, settings, runtime) in the Structure Set Description.
- References: the Referenced Frame of Reference Sequence lists the source series and every instance; the ROI lies
  in the source's Frame of Reference. An empty mask gives the ROI without contours ("nothing found").
- Errors: a non-DICOM input or one without the geometry or identifiers a structure set must reference is an
  :class:`~hemseg.errors.InputError`. The file is written atomically.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
from pathlib import Path

import numpy as np

from hemseg.errors import DependencyError, InputError
from hemseg.runtime.io.dicom_mask import RTSTRUCT_SOP_CLASS
from hemseg.runtime.io.dicom_seg import (
    SERIES_DESCRIPTION,
    TYPE2_COPIED,
    AlgorithmInfo,
    _series_number,
    is_dicom_volume,
    number_after,
    source_headers,
    type2_present,
    volume_mask,
    warn_values_over_length,
)
from hemseg.runtime.io.rtstruct_mask import slice_geometry
from hemseg.runtime.io.volume import ImageVolume
from hemseg.runtime.io.writers import write_dicom

log = logging.getLogger(__name__)

ROI_NAME = "hemangioma"
STRUCTURE_SET_LABEL = "HEMANGIOMA"

#: the top-level attributes of the Patient, Clinical Trial Subject, General Study, Patient Study and Clinical Trial
#: Study modules (all five in the MR Image and the RT Structure Set IODs), copied from the source when present: what
#: highdicom 0.28 copies into a SEG (``SOPClass.copy_patient_and_study_information``); a fixed short list lost the
#: issuer of the Patient ID, the de-identification flags, age and weight that the SEG kept (QA, stop 57)
PATIENT_AND_STUDY = (
    # Patient
    "ReferencedPatientSequence", "PatientName", "PatientID", "IssuerOfPatientID", "TypeOfPatientID",
    "IssuerOfPatientIDQualifiersSequence", "SourcePatientGroupIdentificationSequence",
    "GroupOfPatientsIdentificationSequence", "PatientBirthDate", "PatientBirthTime",
    "PatientBirthDateInAlternativeCalendar", "PatientDeathDateInAlternativeCalendar", "PatientAlternativeCalendar",
    "PatientSex", "QualityControlSubject", "StrainDescription", "StrainNomenclature", "StrainStockSequence",
    "StrainAdditionalInformation", "StrainCodeSequence", "GeneticModificationsSequence", "OtherPatientNames",
    "OtherPatientIDsSequence", "ReferencedPatientPhotoSequence", "EthnicGroupCodeSequence",
    "PatientSpeciesDescription", "PatientSpeciesCodeSequence", "PatientBreedDescription", "PatientBreedCodeSequence",
    "BreedRegistrationSequence", "ResponsiblePerson", "ResponsiblePersonRole", "ResponsibleOrganization",
    "PatientComments", "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    # Clinical Trial Subject
    "ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialProtocolName",
    "IssuerOfClinicalTrialProtocolID", "OtherClinicalTrialProtocolIDsSequence", "ClinicalTrialSiteID",
    "ClinicalTrialSiteName", "IssuerOfClinicalTrialSiteID", "ClinicalTrialSubjectID", "IssuerOfClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID", "IssuerOfClinicalTrialSubjectReadingID", "ClinicalTrialProtocolEthicsCommitteeName",
    "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
    # General Study
    "StudyDate", "StudyTime", "AccessionNumber", "IssuerOfAccessionNumberSequence", "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianName", "ConsultingPhysicianIdentificationSequence",
    "StudyDescription", "ProcedureCodeSequence", "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence",
    "NameOfPhysiciansReadingStudy", "PhysiciansReadingStudyIdentificationSequence", "ReferencedStudySequence",
    "StudyInstanceUID", "StudyID", "RequestingService", "RequestingServiceCodeSequence",
    "ReasonForPerformedProcedureCodeSequence",
    # Patient Study
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "PatientAge", "PatientSize",
    "PatientSizeCodeSequence", "PatientBodyMassIndex", "MeasuredAPDimension", "MeasuredLateralDimension",
    "PatientWeight", "MedicalAlerts", "Allergies", "Occupation", "SmokingStatus", "AdditionalPatientHistory",
    "PregnancyStatus", "LastMenstrualDate", "PatientSexNeutered", "ReasonForVisit", "ReasonForVisitCodeSequence",
    "AdmissionID", "IssuerOfAdmissionIDSequence", "ServiceEpisodeID", "ServiceEpisodeDescription",
    "IssuerOfServiceEpisodeIDSequence", "PatientState",
    # Clinical Trial Study
    "ClinicalTrialTimePointID", "ClinicalTrialTimePointDescription", "LongitudinalTemporalOffsetFromEvent",
    "LongitudinalTemporalEventType", "ClinicalTrialTimePointTypeCodeSequence", "IssuerOfClinicalTrialTimePointID",
    "ConsentForClinicalTrialUseSequence",
)


#: the four sides of a pixel (r, c) as directed edges between pixel corners (x = column, y = row; pixel (r, c) spans
#: x in [c, c + 1], y in [r, r + 1]), clockwise on screen: (neighbour offset (dr, dc), start corner, direction)
_SIDES = (((-1, 0), (0, 0), (1, 0)),   # top: east
          ((0, 1), (1, 0), (0, 1)),    # right: south
          ((1, 0), (1, 1), (-1, 0)),   # bottom: west
          ((0, -1), (0, 1), (0, -1)))  # left: north


def mask_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """Polygons ((col, row) pixel coordinates, pixel centres at integers) along the pixel edges of ``mask`` (2D):
    the boundary of its pixels taken as unit squares, one closed loop per outer boundary and per hole. Their
    even-odd (XOR) fill is ``mask``, every pixel centre half a pixel from every edge (no centre lies on a contour,
    so any centre-inside rasterization gives the mask back), and each outer loop's area minus its holes' is the
    region's pixel count. Where two pixels touch only at a corner the loops turn toward the pixel they trace, so
    they meet at that corner without crossing."""
    fg = np.asarray(mask) != 0
    padded = np.pad(fg, 1)
    h, w = fg.shape
    edges: dict[tuple[int, int, int, int], tuple[int, int]] = {}  # (x, y, dx, dy) -> end corner
    for (dr, dc), (ox, oy), (dx, dy) in _SIDES:
        rows, cols = np.nonzero(fg & ~padded[1 + dr:1 + dr + h, 1 + dc:1 + dc + w])
        for r, c in zip(rows.tolist(), cols.tolist()):
            edges[(c + ox, r + oy, dx, dy)] = (c + ox + dx, r + oy + dy)
    polygons: list[np.ndarray] = []
    while edges:
        start = next(iter(edges))
        x, y, dx, dy = start
        corners = []
        while True:
            end = edges.pop((x, y, dx, dy))
            for ndx, ndy in ((-dy, dx), (dx, dy), (dy, -dx)):  # right turn (on screen), straight on, left turn
                if (end[0], end[1], ndx, ndy) in edges or (end[0], end[1], ndx, ndy) == start:
                    break
            if (ndx, ndy) != (dx, dy):
                corners.append(end)  # a vertex only where the direction changes
            x, y, dx, dy = end[0], end[1], ndx, ndy
            if (x, y, dx, dy) == start:
                break
        polygons.append(np.array(corners, dtype=np.float64) - 0.5)
    return polygons


def _ds_text(value: float) -> str:
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def build_rtstruct(mask: np.ndarray, vol: ImageVolume, algorithm: AlgorithmInfo, headers: list | None = None):
    """The RTSTRUCT data set for an (N, H, W) {0, 1} mask of the DICOM input ``vol``."""
    try:
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.sequence import Sequence
        from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    except ImportError as exc:
        raise DependencyError(f"RT Structure Set output needs pydicom ({exc}); pip install pydicom") from None
    if not is_dicom_volume(vol):
        raise InputError(vol.path, f"RT Structure Set output needs a DICOM input (a file or series folder); this is "
                                   f"a {vol.kind} input")
    mask = volume_mask(mask, vol)
    headers = source_headers(vol, headers, output="an RT Structure Set", thickness=False)
    geo = slice_geometry(vol, headers)
    h0 = headers[0]
    patient = type2_present(h0)  # the patient and study values as a derived object may carry them
    warn_values_over_length(vol, patient, "the RT Structure Set")
    multi = len(headers) == 1 and vol.n_slices > 1
    now = dt.datetime.now()

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 192"
    for key in PATIENT_AND_STUDY:  # when present (the Type 2 ones always are, maybe empty)
        elem = patient.data_element(key) if key in patient else None
        if elem is not None and elem.value is not None:
            value = elem.value
            if elem.VR == "SQ":                       # the items' text decoded with the source's character set
                for item in value:                    # (still raw bytes, it was written as is into UTF-8)
                    for _elem in item.iterall():
                        pass
            setattr(ds, key, copy.deepcopy(value))
    for key in TYPE2_COPIED:
        if key not in ds:
            setattr(ds, key, "")  # Type 2: present, may be empty
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = str(generate_uid(entropy_srcs=["hemseg RTSTRUCT", str(h0.get("SeriesInstanceUID", "")),
                                                          *algorithm.series_entropy()]))
    ds.SeriesNumber = _series_number(h0)
    ds.SeriesDescription = SERIES_DESCRIPTION
    ds.OperatorsName = ""  # Type 2 in the RT Series Module: present, empty (no operator made this)
    ds.InstanceNumber = 1
    ds.Manufacturer = "hemseg"
    ds.ManufacturerModelName = "hemseg"
    ds.SoftwareVersions = algorithm.version
    ds.DeviceSerialNumber = algorithm.model_sha256[:16] or "unknown"
    ds.StructureSetLabel = STRUCTURE_SET_LABEL
    ds.StructureSetName = f"hemseg {algorithm.model_name}"[:64]
    ds.StructureSetDescription = f"hemseg {algorithm.version}: {algorithm.parameter_text()}"[:1024]
    ds.StructureSetDate, ds.StructureSetTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.StructureSetDate, ds.StructureSetTime
    frame_uid = str(h0.FrameOfReferenceUID)

    def image_ref(k: int) -> Dataset:
        ref = Dataset()
        src = headers[0] if multi else headers[k]
        ref.ReferencedSOPClassUID = src.SOPClassUID
        ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
        if multi:
            ref.ReferencedFrameNumber = k + 1
        return ref

    series_ref = Dataset()
    series_ref.SeriesInstanceUID = h0.SeriesInstanceUID
    series_ref.ContourImageSequence = Sequence([image_ref(k) for k in range(vol.n_slices)])
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired; customary)
    study_ref.ReferencedSOPInstanceUID = h0.StudyInstanceUID
    study_ref.RTReferencedSeriesSequence = Sequence([series_ref])
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = frame_uid
    frame_ref.RTReferencedStudySequence = Sequence([study_ref])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame_ref])

    roi = Dataset()
    roi.ROINumber, roi.ReferencedFrameOfReferenceUID = 1, frame_uid
    roi.ROIName, roi.ROIGenerationAlgorithm = ROI_NAME, "AUTOMATIC"
    roi.ROIGenerationDescription = f"hemseg {algorithm.version} {algorithm.model_name}"[:64]
    ds.StructureSetROISequence = Sequence([roi])

    contours = []
    for k in range(vol.n_slices):
        for poly in mask_polygons(mask[k]):
            points = (geo.positions[k] + np.outer(poly[:, 0] * geo.spacing[1], geo.row_dir)
                      + np.outer(poly[:, 1] * geo.spacing[0], geo.col_dir))
            item = Dataset()
            item.ContourImageSequence = Sequence([image_ref(k)])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourData = [_ds_text(v) for v in points.reshape(-1)]
            contours.append(item)
    roi_contour = Dataset()
    roi_contour.ReferencedROINumber = 1
    roi_contour.ROIDisplayColor = [255, 0, 0]
    if contours:
        roi_contour.ContourSequence = Sequence(contours)
    ds.ROIContourSequence = Sequence([roi_contour])

    observation = Dataset()
    observation.ObservationNumber, observation.ReferencedROINumber = 1, 1
    observation.RTROIInterpretedType, observation.ROIInterpreter = "", ""
    ds.RTROIObservationsSequence = Sequence([observation])
    ds.ApprovalStatus = "UNAPPROVED"
    return ds


def write_rtstruct(path: str | Path, mask: np.ndarray, vol: ImageVolume, algorithm: AlgorithmInfo,
                   headers: list | None = None, replaces: Path | None = None):
    """Build the RTSTRUCT of ``mask`` for ``vol`` and write it to ``path`` atomically; returns the data set.
    ``replaces``: the earlier output this one replaces (:func:`hemseg.runtime.io.dicom_seg.number_after`)."""
    ds = build_rtstruct(mask, vol, algorithm, headers)
    number_after(ds, replaces)
    write_dicom(path, ds)
    return ds
