"""Datasets of image/mask pairs: discovery, pair loading, checking and fingerprinting.

Layouts (``DATA`` is the folder given):

- ``DATA/images/<stem>.<ext>`` + ``DATA/masks/<stem>.<ext>``: one category, ``"all"``;
- the same plus ``DATA/categories.csv`` with rows ``stem,category`` (an optional header row naming the columns, :data:`HEADER_WORDS`):
  every paired stem must be listed;
- ``DATA/<category>/images`` + ``DATA/<category>/masks``: one level of category folders;
- nnU-Net's raw layout, ``DATA/imagesTr/<case>_0000.<ext>`` + ``DATA/labelsTr/<case>.<ext>`` (``imagesTs`` +
  ``labelsTs`` when there is no ``imagesTr``), one category, or those of ``DATA/categories.csv`` (rows ``<case>,<category>``,
  every paired case listed): an nnU-Net dataset folder trains as it is. hemseg segments one channel: images of
  other channels (``_0001`` ...) are left out with a warning.

Images are any format :func:`hemseg.runtime.io.read_image` reads (PNG, JPEG, TIFF, NPY, NIfTI, DICOM files, and
sub-folders of ``images/`` holding one DICOM series, whose stem is the folder name); masks are PNG, NPY or NIfTI,
or for a DICOM image a DICOM SEG or RT Structure Set of it (:mod:`hemseg.runtime.io.dicom_mask`).
Any layout may add ``DATA/cases.csv`` with rows ``stem,case`` (an optional header row naming the columns): the case (the
patient, or the series) each image file belongs to. Training and report splits then keep a case's files together
(slices of one patient on both sides of a validation split make its Dice, the best checkpoint and the threshold
optimistic); every paired stem must be listed. Without it every file is its own case.
Stems are file names without the image extension (``a.nii.gz`` -> ``a``); image and mask of a pair share the stem
(a mask may add one of :data:`MASK_SUFFIXES`: ``a_mask.png``, ``a_seg.nii.gz``, as hemseg predict names its masks
and many public datasets do, or BIDS derivative entities, :data:`BIDS_MASK_TAIL`: ``a_seg-manual.nii.gz``,
``a_label-SC_mask.nii.gz``; a mask of the exact stem wins) and may differ in format; a NIfTI mask is sliced along
its image's slice axis (for a DICOM image: the layout :func:`hemseg.runtime.io.write_nifti_labels` writes). Folders are not searched recursively; hidden files are skipped; other files are listed as
ignored (a warning).

:func:`check_dataset` reads every pair. The dataset is *usable* when it has at least one valid pair and no
unreadable file, no image/mask size or geometry mismatch and no layout problem (duplicate stems, a bad
``categories.csv``).
Unpaired stems, empty masks and ignored files are warnings. Unpaired files are not read.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from hemseg.errors import DatasetError, GeometryError, InputError, UsageError
from hemseg.runtime.io.dicom import dicom_files_in
from hemseg.runtime.io.hashing import sha256_file
from hemseg.runtime.io.images import (
    NIFTI_MASK_BESIDE_RASTER,
    PREDICT_MASK_SUFFIXES,
    detect_format,
    mask_label_values,
    nifti_mask_turn,
    read_image,
    read_mask_and_values,
)
from hemseg.runtime.io.intensity import is_blank, to_uint8
from hemseg.runtime.io.mask_geometry import pairing_notes
from hemseg.runtime.io.once import warn_once
from hemseg.runtime.io.regular import read_regular_text
from hemseg.runtime.io.sniff import format_from_name, is_dicom_file, stem_of

log = logging.getLogger(__name__)

DEFAULT_CATEGORY = "all"
CATEGORIES_CSV = "categories.csv"
#: optional ``stem,case`` table: which files belong to one case (patient), kept on one side of every split
CASES_CSV = "cases.csv"
LAYOUTS = ("flat", "categories-csv", "category-folders", "nnunet")
#: mask names that pair with the image of the name without them (``a.png`` + ``a_mask.png``, ``a_seg.nii.gz``):
#: hemseg predict's names and those of public 2D/3D datasets
MASK_SUFFIXES = (*PREDICT_MASK_SUFFIXES, "_segmentation", "_label", "_gt")
#: BIDS derivative names of a segmentation of an image (``sub-01_T2w`` + ``_seg-manual``, as spine-generic and the
#: Spinal Cord Toolbox name their masks; ``_label-SC_mask``, ``_desc-x_seg``, ``_dseg``): key-value entities of a
#: derivative, with an optional segmentation suffix (not ``_probseg``: a probability map is not a mask)
BIDS_MASK_TAIL = re.compile(r"(?:_(?:space|res|den|seg|label|desc)-[A-Za-z0-9]+)+(?:_(?:mask|seg|dseg))?$|_dseg$",
                            re.IGNORECASE)
#: an nnU-Net image name: ``<case>_<4-digit channel>``
NNUNET_CHANNEL = re.compile(r"(.+)_(\d{4})")


def sample_ids(samples: Sequence["Sample"]) -> list[str]:
    """How a split (``config.json``'s ``splits``, a checkpoint's ``val_stems``, ``--splits``) and an evaluation's
    overlays name the samples (anything with a ``stem`` and a ``category``): their stems, or ``<category>/<stem>``
    for every sample when two categories share a stem (category folders ``t1/images/000.png`` and
    ``t2/images/000.png``), so that each name is one sample."""
    stems = [s.stem for s in samples]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{s.category}/{s.stem}" for s in samples]


@dataclass(frozen=True)
class Sample:
    """One image/mask pair."""

    stem: str
    category: str
    image: Path
    mask: Path
    #: the case (patient) from :data:`CASES_CSV`; ``None``: the sample is its own case
    case: str | None = None

    @property
    def case_id(self) -> str:
        """The case this sample belongs to: its ``case``, else the sample is its own case, named by its stem, or by
        ``<category>/<stem>`` in a named category (two category folders may each hold a ``000.png``)."""
        if self.case is not None:
            return self.case
        return self.stem if self.category == DEFAULT_CATEGORY else f"{self.category}/{self.stem}"


@dataclass
class DatasetIndex:
    """What :func:`discover` found. ``problems`` make the dataset unusable; ``warnings`` do not."""

    root: Path
    layout: str
    samples: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unpaired_images: list[tuple[str, Path]] = field(default_factory=list)  # (category, path)
    unpaired_masks: list[tuple[str, Path]] = field(default_factory=list)
    #: where the samples' cases come from: :data:`CASES_CSV`, a DICOM header field
    #: (:data:`hemseg.runtime.io.dicom_cases.KEY_NAMES`), or ``None`` (every sample its own case)
    cases_from: str | None = None

    @property
    def categories(self) -> list[str]:
        cats = {s.category for s in self.samples}
        cats |= {c for c, _ in self.unpaired_images} | {c for c, _ in self.unpaired_masks}
        return sorted(cats)


# --------------------------------------------------------------------------------------------------- discovery
def _entries(folder: Path, index: DatasetIndex, masks: bool) -> dict[str, list[Path]]:
    """stem -> files (several when a stem is duplicated) in one images/ or masks/ folder."""
    found: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            if not masks and dicom_files_in(p):
                found.setdefault(p.name, []).append(p)
            else:
                index.warnings.append(f"{p}: sub-folder ignored ({'masks must be files' if masks else 'no DICOM files'})")
            continue
        if p.is_symlink() and not p.exists():  # paired by its name, then refused as a link to nothing when read
            found.setdefault(stem_of(p) if format_from_name(p) is not None else p.name, []).append(p)
        elif format_from_name(p) is not None or (not masks and is_dicom_file(p)):
            found.setdefault(stem_of(p), []).append(p)
        else:
            index.warnings.append(f"{p}: ignored (not an image file extension)")
    return found


def _pair(index: DatasetIndex, images_dir: Path, masks_dir: Path, category_of) -> None:
    _pair_entries(index, _entries(images_dir, index, masks=False), _entries(masks_dir, index, masks=True),
                  category_of)


def _nnunet_cases(images: dict[str, list[Path]], index: DatasetIndex) -> dict[str, list[Path]]:
    """nnU-Net image stems ``<case>_<CCCC>`` (CCCC: the 4-digit channel) -> ``<case>``: channel 0000's files. hemseg models
    read one channel; other channels are left out with one warning. A name without a channel suffix pairs with the
    mask of its own name, as in hemseg's other layouts, with one warning (it was ignored, yet called an unpaired image
    and its mask an unpaired mask beside that: a QA finding of stop 55)."""
    cases: dict[str, list[Path]] = {}
    others: list[Path] = []
    plain: list[Path] = []
    for stem, files in images.items():
        m = NNUNET_CHANNEL.fullmatch(stem)
        if m is None:
            cases.setdefault(stem, []).extend(files)
            plain.extend(files)
        elif m.group(2) == "0000":
            cases.setdefault(m.group(1), []).extend(files)
        else:
            others.extend(files)
    if plain:
        index.warnings.append(f"{plain[0].parent}: {len(plain)} image(s) without nnU-Net's channel suffix (e.g. "
                              f"{plain[0].name}; nnU-Net names them <case>_0000.<ext>): each paired with the mask of "
                              "its own name")
    if others:
        index.warnings.append(f"{others[0].parent}: {len(others)} image(s) of nnU-Net channels other than 0000 "
                              f"(e.g. {others[0].name}) left out: hemseg segments one channel (_0000)")
    return cases


def _channel_named_labels(index: DatasetIndex, images: dict[str, list[Path]]) -> None:
    """Labels named like their images' whole names, channel suffix included (labelsTr/hem_0000.png beside
    imagesTr/hem_0000.png): the image is case 'hem' and they stayed 'unpaired' with no word why (QA, stop 55)."""
    named = [p for _, p in index.unpaired_masks if NNUNET_CHANNEL.fullmatch(stem_of(p)) and stem_of(p) in images]
    if named:
        case = NNUNET_CHANNEL.fullmatch(stem_of(named[0])).group(1)
        index.warnings.append(f"{named[0].parent}: {len(named)} label(s) named like an image with its channel suffix "
                              f"(e.g. {named[0].name}): nnU-Net reads the image as case '{case}', channel "
                              f"{stem_of(named[0])[-4:]}, and names its label by case ({case}{named[0].suffix}); "
                              "name one case's images <case>_0000, <case>_0001 ... and its label <case>")


def named_images(mask_stem: str) -> list[str]:
    """The image stems a mask stem may name: without one of :data:`MASK_SUFFIXES` (any case), then without a BIDS
    derivative tail (:data:`BIDS_MASK_TAIL`); nonempty ones only."""
    lower = mask_stem.lower()
    out = [mask_stem[: -len(sfx)] for sfx in MASK_SUFFIXES if lower.endswith(sfx)]
    bids = BIDS_MASK_TAIL.search(mask_stem)
    if bids:
        out.append(mask_stem[: bids.start()])
    return [s for s in out if s]


def _strip_mask_suffixes(images: dict[str, list[Path]], masks: dict[str, list[Path]]) -> dict[str, list[Path]]:
    """Mask stems with a mask suffix (:data:`MASK_SUFFIXES`, any case: ``a_mask.png``, ``a_seg.nii.gz``) re-keyed
    to the image stem they name, when that image exists and has no mask of its exact stem; others stay as they are
    (an image whose own name ends in ``_mask`` pairs with the mask of that exact name)."""
    out: dict[str, list[Path]] = {}
    for stem, files in masks.items():
        key = stem
        if stem not in images:
            base = next((b for b in named_images(stem) if b in images), None)
            if base and base not in masks:
                key = base
        out.setdefault(key, []).extend(files)
    return out


def _pair_entries(index: DatasetIndex, images: dict[str, list[Path]], masks: dict[str, list[Path]],
                  category_of) -> None:
    masks = _strip_mask_suffixes(images, masks)
    for kind, entries in (("images", images), ("masks", masks)):
        for stem, files in entries.items():
            if len(files) > 1:
                index.problems.append(f"{files[0].parent}: duplicate stem '{stem}' in {kind}/: "
                                      f"{', '.join(f.name for f in files)}")
    dup = {s for s, f in images.items() if len(f) > 1} | {s for s, f in masks.items() if len(f) > 1}
    for stem in sorted(set(images) | set(masks)):
        if stem in dup:
            continue
        category = category_of(stem)
        if stem in images and stem in masks:
            if category is None:
                index.problems.append(f"{images[stem][0]}: stem '{stem}' is not listed in {CATEGORIES_CSV}")
                continue
            index.samples.append(Sample(stem=stem, category=category, image=images[stem][0], mask=masks[stem][0]))
        elif stem in images:
            index.unpaired_images.append((category or DEFAULT_CATEGORY, images[stem][0]))
        else:
            index.unpaired_masks.append((category or DEFAULT_CATEGORY, masks[stem][0]))


#: header words of a stem table's columns: a first row of these is a header, read by its names (``image,patient``
#: was read as a row for a file 'image'; ``case,stem`` read every row the wrong way round: a QA finding of stop 55)
#: Words are compared lower-case with spaces and hyphens as underscores (``Patient ID``, ``image-name``).
HEADER_WORDS = {"stem": {"stem", "image", "images", "file", "filename", "file_name", "name", "image_id", "image_name",
                         "image_file", "path", "file_path", "filepath", "slice", "slice_id"},
                "case": {"case", "cases", "case_id", "patient", "patient_id", "patientid", "subject", "subject_id",
                         "patient_name", "study", "study_id", "accession", "accession_number", "mrn"},
                "category": {"category", "categories", "class", "group", "sequence", "series", "plane", "contrast",
                             "series_description", "modality", "protocol"}}


def _header_word(cell: str) -> str:
    """``Patient ID`` -> ``patient_id``: a header cell as :data:`HEADER_WORDS` holds it."""
    return "_".join(cell.strip().lower().replace("-", " ").split())


def _header_order(row: list[str], column: str) -> bool | None:
    """A first row that names the two columns: ``False`` for (stem, column), ``True`` for (column, stem), else
    ``None`` (a row of data)."""
    a, b = (_header_word(c) for c in row)
    if a in HEADER_WORDS["stem"] and b in HEADER_WORDS[column]:
        return False
    if a in HEADER_WORDS[column] and b in HEADER_WORDS["stem"]:
        return True
    return None


def _bare_stem(name: str) -> str:
    """A row's stem without an image file extension (``s00.png`` -> ``s00``, ``t1/000.nii.gz`` -> ``t1/000``): a row
    written as the file's name named nothing ('stem s00 is not listed', the row 'has no files'; QA, stop 55)."""
    head, sep, tail = name.rpartition("/")
    return head + sep + stem_of(tail)


def _read_stem_table(path: Path, index: DatasetIndex, column: str) -> dict[str, str]:
    """``stem -> value`` from a two-column CSV (``stem,<column>``; an optional header row naming the columns, in
    either order (:data:`HEADER_WORDS`); ``#`` comments; a stem may be written as the file's name)."""
    mapping: dict[str, str] = {}
    try:
        text = read_regular_text(path, "utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        index.problems.append(f"{path}: cannot read: {exc}")
        return mapping
    swapped, first = False, True
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            index.problems.append(f"{path}: line {lineno}: expected 'stem,{column}', got {','.join(row)!r}")
            first = False
            continue
        if first:
            first = False
            order = _header_order(row, column)
            if order is not None:
                swapped = order
                continue
        stem, value = (row[1].strip(), row[0].strip()) if swapped else (row[0].strip(), row[1].strip())
        stem = _bare_stem(stem)
        if stem in mapping and mapping[stem] != value:
            index.problems.append(f"{path}: line {lineno}: stem '{stem}' listed with two {column} values "
                                  f"({mapping[stem]}, {value})")
            continue
        mapping[stem] = value
    return mapping


def stem_table_text(column: str, rows: Iterable[tuple[str, str]]) -> str:
    """A ``stem,<column>`` table (``categories.csv``, ``cases.csv``) with its header row, quoted as CSV where a
    value needs it (a Patient ID with a comma), so that :func:`_read_stem_table` reads back exactly ``rows``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("stem", column))
    writer.writerows(rows)
    return buf.getvalue()


def _listed_without_files(index: DatasetIndex, path: Path, mapping: dict[str, str]) -> None:
    known = {s.stem for s in index.samples} | {stem_of(p) for _, p in index.unpaired_images}
    known |= {stem_of(p) for _, p in index.unpaired_masks} | {f"{s.category}/{s.stem}" for s in index.samples}
    known |= {f"{c}/{stem_of(p)}" for c, p in (*index.unpaired_images, *index.unpaired_masks)}
    extra = sorted(set(mapping) - known)
    if extra:
        index.warnings.append(f"{path}: {len(extra)} listed stem(s) have no files: {', '.join(extra[:5])}"
                              + (" ..." if len(extra) > 5 else ""))


def _not_a_table(path: Path) -> str:
    """Why ``path``, named like a stem table, cannot be read as one."""
    if path.is_symlink() and not path.exists():
        return "a symbolic link to nothing; fix or remove it"
    return "not a regular file (a folder, pipe, socket or device); give a stem table or remove it"


def _apply_cases(index: DatasetIndex) -> None:
    """Give every sample its case: from ``DATA/cases.csv`` when there is one (an unlisted pair is a problem), else
    from the headers of DICOM images (:func:`_apply_dicom_cases`)."""
    path = index.root / CASES_CSV
    if not path.is_file():
        if os.path.lexists(path):  # a broken link, a pipe: patients would be mixed across splits without a word
            index.problems.append(f"{path}: {_not_a_table(path)}")
        _apply_dicom_cases(index)
        return
    mapping = _read_stem_table(path, index, "case")
    samples = []
    # a row names a stem, or <category>/<stem> where category folders share file names (t1/000.png, t2/000.png)
    for s in index.samples:
        key = f"{s.category}/{s.stem}" if f"{s.category}/{s.stem}" in mapping else s.stem
        if key not in mapping:
            index.problems.append(f"{s.image}: stem '{s.stem}' is not listed in {CASES_CSV} (as {s.stem} or "
                                  f"{s.category}/{s.stem})")
        samples.append(replace(s, case=mapping.get(key)))
    shared: dict[str, set[str]] = {}
    for s in index.samples:
        if s.stem in mapping and f"{s.category}/{s.stem}" not in mapping:
            shared.setdefault(s.stem, set()).add(s.category)
    shared = {stem: cats for stem, cats in shared.items() if len(cats) > 1}
    if shared:
        stem, cats = next(iter(sorted(shared.items())))
        index.warnings.append(f"{path}: {len(shared)} row(s) name a stem of several categories, which all get its "
                              f"case (e.g. '{stem}': {', '.join(f'{c}/{stem}' for c in sorted(cats))}); write "
                              "<category>/<stem> rows if they are not one patient's")
    index.samples = samples
    index.cases_from = CASES_CSV
    _listed_without_files(index, path, mapping)


def _first_dicom_file(image: Path) -> Path | None:
    """The DICOM file whose header stands for ``image`` (a file, or the first file of a series folder)."""
    if image.is_dir():
        files = dicom_files_in(image)
        return files[0] if files else None
    if format_from_name(image) not in (None, "dicom"):  # a PNG, NIfTI, ... by its name: no header to read
        return None
    return image if is_dicom_file(image) else None


def _apply_dicom_cases(index: DatasetIndex) -> None:
    """Without ``cases.csv``: DICOM images are grouped by patient (or study) as their headers say
    (:mod:`hemseg.runtime.io.dicom_cases`); other images stay cases of their own."""
    from hemseg.runtime.io.dicom_cases import KEY_NAMES, case_key, case_of, read_identity

    identities = {}
    for n, s in enumerate(index.samples):
        first = _first_dicom_file(s.image)
        if first is not None:
            identities[n] = read_identity(first)
    key = case_key(list(identities.values()))
    if key is None:
        return
    cases = {n: case_of(ident, key) for n, ident in identities.items()}
    if all(c is None for c in cases.values()):
        return
    index.samples = [replace(s, case=cases.get(n)) for n, s in enumerate(index.samples)]
    index.cases_from = KEY_NAMES[key]
    log.info("%s: cases from the %s of %d DICOM image(s): %d (write %s to set them yourself)", index.root,
             KEY_NAMES[key], len(identities), len({c for c in cases.values() if c is not None}), CASES_CSV)


def case_groups(samples: Sequence[Sample]) -> list[str] | None:
    """The case of each sample, for the splits (:mod:`hemseg.train.split`); ``None`` when no sample has one."""
    if all(s.case is None for s in samples):
        return None
    return [s.case_id for s in samples]


def case_count(samples: Sequence[Sample]) -> int | None:
    groups = case_groups(samples)
    return None if groups is None else len(set(groups))


#: folder names other tools give the masks and the images, named in the error when masks/ or images/ is missing
OTHER_FOLDER_NAMES = {"masks": ("labels", "label", "annotations", "segmentations", "seg", "gt", "ground_truth"),
                      "images": ("imgs", "image", "img", "scans", "data")}


def _other_name_hint(root: Path, missing: str) -> str:
    found = [n for n in OTHER_FOLDER_NAMES[missing] if (root / n).is_dir()]
    return f" (found {found[0]}/: hemseg reads DATA/{missing}/; rename or link it)" if found else ""


def mask_name_hint(images: Sequence[Path], masks: Sequence[Path]) -> str | None:
    """For unpaired files: a mask whose name starts with an unpaired image's name and ``_`` (``a_manual.png`` for
    ``a.png``) is probably its mask under a name hemseg does not pair; say which names pair. None when no such
    mask is among ``masks``. Names the first such mask and counts the others (the hint named the first only)."""
    stems = sorted({stem_of(p) for p in images}, key=len, reverse=True)  # the longest image name a mask starts with
    found = []
    for mask in masks:
        mask_stem = stem_of(mask)
        image = next((s for s in stems if mask_stem.startswith(s + "_")), None)
        if image is not None:
            found.append((mask, mask_stem, image))
    if not found:
        return None
    mask, mask_stem, image = found[0]
    ext = mask.name[len(mask_stem):]
    more = (f" (so do {len(found) - 1} more unpaired mask(s), e.g. {found[1][0].name} of {found[1][2]})"
            if len(found) > 1 else "")
    return (f"{mask.name} looks like the mask of {image}{more}, but masks pair with the image of their own name, "
            f"optionally followed by {', '.join(MASK_SUFFIXES)} or BIDS entities (_seg-manual, _label-SC_mask); "
            f"rename {'them' if more else 'it'}, e.g. {image}_mask{ext}")


def _side_by_side_hint(root: Path, subdirs: Sequence[Path]) -> str:
    """For the no-dataset error: images and masks side by side in one folder (``a.png`` + ``a_mask.png``, as some
    public datasets ship them, often one folder per patient) are named, with the layout to move them into."""
    for folder in [root, *subdirs[:20]]:
        try:
            files = sorted(p for p in folder.iterdir() if p.is_file() and format_from_name(p) is not None)
        except OSError:
            continue
        stems = {stem_of(p) for p in files}
        for p in files:
            if any(base in stems for base in named_images(stem_of(p))):
                return (f"; {folder} holds images and masks side by side (e.g. {p.name}): move the images into "
                        "DATA/images/ and the masks into DATA/masks/ (one folder per patient: list them in "
                        f"DATA/{CASES_CSV})")
    return ""


def discover(root: str | Path) -> DatasetIndex:
    """Find the image/mask pairs under ``root`` (see the module docstring for the layouts)."""
    root = Path(root)
    if not root.exists():
        raise InputError(root, "no such file or directory")
    if not root.is_dir():
        raise InputError(root, "a dataset must be a folder (DATA/images + DATA/masks)")
    images_dir, masks_dir = root / "images", root / "masks"
    nnunet = [(root / f"images{s}", root / f"labels{s}") for s in ("Tr", "Ts")
              if (root / f"images{s}").is_dir() or (root / f"labels{s}").is_dir()]
    if nnunet and not (images_dir.is_dir() or masks_dir.is_dir()):
        images_dir, masks_dir = nnunet[0]
        if not (images_dir.is_dir() and masks_dir.is_dir()):
            have, missing = (images_dir, masks_dir) if images_dir.is_dir() else (masks_dir, images_dir)
            raise InputError(root, f"has {have.name}/ but no {missing.name}/ folder (nnU-Net layout)")
        index = DatasetIndex(root=root, layout="nnunet")
        csv_path = root / CATEGORIES_CSV  # read as in the flat layout (it was ignored without a word)
        if os.path.lexists(csv_path) and not csv_path.is_file():
            raise InputError(csv_path, _not_a_table(csv_path))
        mapping = _read_stem_table(csv_path, index, "category") if csv_path.is_file() else None
        raw_images = _entries(images_dir, index, masks=False)
        _pair_entries(index, _nnunet_cases(raw_images, index), _entries(masks_dir, index, masks=True),
                      mapping.get if mapping is not None else lambda stem: DEFAULT_CATEGORY)
        _channel_named_labels(index, raw_images)
        if mapping is not None:
            _listed_without_files(index, csv_path, mapping)
    elif images_dir.is_dir() or masks_dir.is_dir():
        if not (images_dir.is_dir() and masks_dir.is_dir()):
            missing = "masks" if images_dir.is_dir() else "images"
            raise InputError(root, f"has {'images' if missing == 'masks' else 'masks'}/ but no {missing}/ folder"
                                   f"{_other_name_hint(root, missing)}")
        csv_path = root / CATEGORIES_CSV
        if os.path.lexists(csv_path) and not csv_path.is_file():
            raise InputError(csv_path, _not_a_table(csv_path))
        if csv_path.is_file():
            index = DatasetIndex(root=root, layout="categories-csv")
            mapping = _read_stem_table(csv_path, index, "category")
            _pair(index, images_dir, masks_dir, mapping.get)
            _listed_without_files(index, csv_path, mapping)
        else:
            index = DatasetIndex(root=root, layout="flat")
            _pair(index, images_dir, masks_dir, lambda stem: DEFAULT_CATEGORY)
    else:
        subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        cats = [d for d in subdirs if (d / "images").is_dir() and (d / "masks").is_dir()]
        if not cats:
            raise InputError(root, "no dataset found: expected DATA/images + DATA/masks, DATA/<category>/images + "
                                   f"DATA/<category>/masks, DATA/images + DATA/masks + DATA/{CATEGORIES_CSV}, or "
                                   f"nnU-Net's DATA/imagesTr + DATA/labelsTr{_side_by_side_hint(root, subdirs)}")
        index = DatasetIndex(root=root, layout="category-folders")
        for d in cats:
            before = len(index.samples) + len(index.unpaired_images) + len(index.unpaired_masks)
            _pair(index, d / "images", d / "masks", lambda stem, c=d.name: c)
            if len(index.samples) + len(index.unpaired_images) + len(index.unpaired_masks) == before:
                # (an empty category was dropped without a word: a user expecting 12 categories met 11)
                index.warnings.append(f"{d}: category folder with no images or masks")
        for d in subdirs:
            if d not in cats and ((d / "images").is_dir() or (d / "masks").is_dir()):
                index.problems.append(f"{d}: category folder needs both images/ and masks/")
        if (root / CATEGORIES_CSV).is_file():
            index.warnings.append(f"{root / CATEGORIES_CSV}: ignored (category folders decide the categories)")
    _other_layouts(root, index)
    _apply_cases(index)
    index.samples.sort(key=lambda s: (s.category, s.stem))
    return index


def _other_layouts(root: Path, index: DatasetIndex) -> None:
    """Warn about data in another layout beside the one read: one layout decides, and the rest was dropped
    without a word (category folders beside DATA/images + DATA/masks, nnU-Net folders beside either)."""
    used = {"flat": "DATA/images + DATA/masks", "categories-csv": "DATA/images + DATA/masks",
            "nnunet": "nnU-Net's DATA/imagesTr + DATA/labelsTr", "category-folders": "the category folders"}
    ignored = []
    if index.layout != "category-folders":
        cats = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                      and (d / "images").is_dir() and (d / "masks").is_dir())
        if cats:
            ignored.append(f"{len(cats)} category folder(s) with images/ and masks/ ({', '.join(cats[:3])}"
                           f"{', ...' if len(cats) > 3 else ''})")
    if index.layout != "nnunet" and (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
        ignored.append("nnU-Net's imagesTr/ + labelsTr/")
    if index.layout == "nnunet" and (root / "imagesTr").is_dir() and (root / "imagesTs").is_dir():
        if (root / "labelsTs").is_dir():
            index.warnings.append(f"{root}: ignored nnU-Net's imagesTs/ + labelsTs/: the training cases (imagesTr/ + "
                                  "labelsTr/) decide the dataset; to use the test cases, give a folder that holds "
                                  "only imagesTs/ + labelsTs/ (links will do)")
        else:  # nnU-Net's usual unlabelled test images: `hemseg predict` segments them
            index.warnings.append(f"{root}: ignored nnU-Net's imagesTs/ (test images without labels: no labelsTs/); "
                                  "the training cases (imagesTr/ + labelsTr/) decide the dataset; `hemseg predict` "
                                  "segments the test images")
    if ignored:
        index.warnings.append(f"{root}: ignored {' and '.join(ignored)}: {used[index.layout]} decide the dataset; "
                              "move the others out, or into a dataset folder of their own")


# ------------------------------------------------------------------------------------------------ loading
def _read_pair_raw(sample: Sample, labels: Sequence[int] | None, warn: bool = True, notes: list[str] | None = None):
    """(image volume, {0, 1} mask, the mask file's distinct nonzero values: :func:`mask_label_values`), one read
    of each file. What the reader says of the image's layout or geometry (:attr:`ImageVolume.geometry_warnings`:
    an NPY volume saved slices last, uneven DICOM slice spacing) is a warning, once per file (``warn``; ``hemseg
    data check`` puts them in its report instead), as ``hemseg predict`` says it; with ``notes``, they are added
    there instead (an evaluation's report lists and logs them)."""
    vol = read_image(sample.image)
    _say([f"{sample.image}: {said}" for said in vol.geometry_warnings], notes, warn)
    mask, values = _mask_of(vol, sample.mask, labels)
    if notes is not None or warn:  # data check (warn=False) lists them itself: not read twice for nothing
        _say(mask_layout_notes(sample.mask, vol), notes, warn)
    return vol, mask, values


def _say(said: list[str], notes: list[str] | None, warn: bool) -> None:
    """Lines of what a reader noticed: into ``notes`` (a report's), else logged once each (``warn``)."""
    if notes is not None:
        notes.extend(said)
    elif warn:
        for line in said:
            warn_once(log, line, "%s", line)


def mask_layout_notes(mask_path: Path, vol) -> list[str]:
    """What to say of a NIfTI mask beside an image without a geometry when both its array as stored and its form as
    read (as displayed, turned or flipped by its affine) fit the image, so the size check cannot tell a mask saved
    the other way (a square slice): which one was used. A mask that fits only as stored is named by the size check
    (:func:`_turned_hint`)."""
    turn = nifti_mask_turn(mask_path, vol)
    if turn is None or not turn[0] == turn[1] == tuple(vol.data.shape):
        return []
    return [f"{mask_path}: read as displayed, its array turned or flipped by its affine ({NIFTI_MASK_BESIDE_RASTER}); "
            "if it was saved from the image's array, it scores against a turned image"]


def _mask_of(vol, path: Path, labels: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """({0, 1} mask, distinct nonzero values) of the mask file ``path`` drawn on the image ``vol``; a mask the system
    will not let be read is an InputError naming it (a PermissionError stopped hemseg data check with no report)."""
    try:
        return _read_mask_of(vol, path, labels)
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from None


def _read_mask_of(vol, path: Path, labels: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    if path.is_file() and detect_format(path) == "dicom":  # a DICOM SEG or RTSTRUCT of the image
        from hemseg.runtime.io.dicom_mask import read_dicom_mask_and_labels

        return read_dicom_mask_and_labels(path, vol, labels)
    # a NIfTI mask is sliced like its image and put onto its voxel grid (mask_geometry)
    return read_mask_and_values(path, labels, image=vol)


def _mismatch_reason(sample: Sample, image_shape, mask_shape, vol=None) -> str:
    return (f"image {tuple(image_shape)} and mask {sample.mask} {tuple(mask_shape)} differ in (N, H, W) "
            "(slices, rows, columns)" + (_turned_hint(vol, mask_shape, sample.mask) if vol is not None else ""))


def _turned_hint(vol, mask_shape, mask_path: Path | None = None) -> str:
    """Why a mask of another format may not fit a NIfTI image: it fits the image's array order, while hemseg shows
    the slices as a viewer does (:mod:`hemseg.runtime.io.display`), transposed here. Or why a NIfTI mask may not fit
    an image without a geometry: its array as stored fits, and it is read as displayed."""
    if mask_path is not None and getattr(vol, "affine", 1) is None:
        turn = nifti_mask_turn(mask_path, vol)
        if turn is not None and turn[0] == tuple(vol.data.shape):
            return f"; the NIfTI mask's array as stored fits the image, but {NIFTI_MASK_BESIDE_RASTER}"
        return ""
    inplane = getattr(vol, "inplane", None)
    if inplane is None or vol.slice_axis is None or vol.kind != "nifti":
        return ""
    n, h, w = vol.data.shape
    stored = np.moveaxis(inplane.undo(vol.data), 0, vol.slice_axis).shape  # the file's voxel array, (x, y, z)
    if tuple(mask_shape) == tuple(stored):
        return ("; the mask is the NIfTI image's voxel array as stored (x, y, z), while a PNG / NPY mask is read "
                "as the image's displayed slices (N, H, W): save it as NIfTI with the image's affine")
    if not inplane.transpose or tuple(mask_shape) != (n, w, h):
        return ""
    return ("; the mask fits the NIfTI image's array order, whose slices hemseg shows as a viewer does "
            f"({inplane.describe()}): draw the mask on the displayed slices, or save it as NIfTI with the image's "
            "affine")


def load_pair(sample: Sample, labels: Sequence[int] | None = None,
              notes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (N, H, W), mask uint8 {0, 1} (N, H, W)); InputError naming both files when sizes differ.
    ``notes``: see :func:`_read_pair_raw`."""
    image, mask, _ = load_pair_spacing(sample, labels, notes)
    return image, mask


def load_pair_spacing(sample: Sample, labels: Sequence[int] | None = None, notes: list[str] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, tuple[float, float] | None]:
    """:func:`load_pair` plus the image's in-plane pixel spacing ``(row_mm, col_mm)`` (NIfTI, DICOM with
    ``PixelSpacing``), or ``None`` where the format does not record one (PNG, TIFF, NPY, ...). ``notes``: see
    :func:`_read_pair_raw`."""
    image, mask, spacing, _ = _load_pair(sample, labels, notes, digests=False)
    return image, mask, spacing


def load_pair_digests(sample: Sample, labels: Sequence[int] | None = None, notes: list[str] | None = None,
                      exact: bool = False) -> tuple[np.ndarray, np.ndarray, tuple[float, float] | None, list[str | None]]:
    """:func:`load_pair_spacing` plus the :func:`pixel_digests` of the image's slices (of its values as read, before
    the 8-bit conversion), one per slice: what training records and evaluation compares. ``exact``: the
    :func:`exact_pixel_digests` of the slices follow (what a model of stop 51 records)."""
    return _load_pair(sample, labels, notes, digests=True, exact=exact)


def _load_pair(sample: Sample, labels: Sequence[int] | None, notes: list[str] | None, digests: bool,
               exact: bool = False):
    vol, mask, _ = _read_pair_raw(sample, labels, notes=notes)
    if vol.data.shape != mask.shape:
        raise InputError(sample.image, _mismatch_reason(sample, vol.data.shape, mask.shape, vol))
    spacing = None if vol.spacing is None else (float(vol.spacing[0]), float(vol.spacing[1]))
    found = (pixel_digests(vol.data) + (exact_pixel_digests(vol.data) if exact else [])) if digests else []
    return to_uint8(vol.data, sample.image), mask, spacing, found


def load_pair_and_prediction(sample: Sample, prediction: Path, labels: Sequence[int] | None = None,
                             prediction_labels: Sequence[int] | None = None, notes: list[str] | None = None
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float] | None]:
    """:func:`load_pair_spacing` plus a second mask of the same image (a prediction), read like the reference mask
    from one read of the image: (image, mask, prediction, spacing)."""
    vol, mask, _ = _read_pair_raw(sample, labels, notes=notes)
    pred, values = _mask_of(vol, prediction, prediction_labels)
    _say(mask_layout_notes(prediction, vol), notes, True)
    if any(float(v) != round(float(v)) for v in values):  # a probability map or an image, not a mask
        raise InputError(prediction, f"holds values that are not whole numbers ({format_values(values)}): a "
                                     "probability map or an image, not a mask; threshold it into a mask first")
    for path, m in ((sample.mask, mask), (prediction, pred)):
        if vol.data.shape != m.shape:
            raise InputError(sample.image, _mismatch_reason(replace(sample, mask=path), vol.data.shape, m.shape, vol))
    spacing = None if vol.spacing is None else (float(vol.spacing[0]), float(vol.spacing[1]))
    return to_uint8(vol.data, sample.image), mask, pred, spacing


# ------------------------------------------------------------------------------------------------- checking
@dataclass
class CategoryCounts:
    images: int = 0
    masks: int = 0
    pairs: int = 0
    valid: int = 0
    slices: int = 0
    foreground_slices: int = 0
    empty_masks: int = 0


@dataclass
class CheckReport:
    """The result of :func:`check_dataset`. See :attr:`usable` for the rule."""

    root: Path
    layout: str
    labels: list[int] | None
    categories: dict[str, CategoryCounts] = field(default_factory=dict)
    unpaired_images: list[Path] = field(default_factory=list)
    unpaired_masks: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    empty_masks: list[Path] = field(default_factory=list)
    #: masks holding more than one distinct nonzero value, checked without ``labels`` only: (path, values)
    label_maps: list[tuple[Path, list]] = field(default_factory=list)
    size_mismatches: list[tuple[Path, Path, tuple, tuple]] = field(default_factory=list)
    #: images whose every pixel has one value (:func:`hemseg.runtime.io.intensity.is_blank`): (image, value)
    blank_images: list[tuple[Path, float]] = field(default_factory=list)
    #: NIfTI masks on another voxel grid than their image (:mod:`hemseg.runtime.io.mask_geometry`): (mask, reason)
    geometry_mismatches: list[tuple[Path, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: each valid pair's counts: image, mask, category, slices, foreground_slices (a volume whose mask covers few of
    #: its slices shows here; the table sums categories)
    pair_counts: list[dict[str, Any]] = field(default_factory=list)
    #: ``labels`` that no mask holds while the masks hold other values (every reference would be empty)
    label_problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: distinct cases among the pairs; ``None`` when every file is its own case (then :meth:`to_dict` gives the
    #: number of valid pairs, ``cases_from`` "files")
    cases: int | None = None
    #: where the cases come from (:attr:`DatasetIndex.cases_from`)
    cases_from: str | None = None

    @property
    def valid_pairs(self) -> int:
        return sum(c.valid for c in self.categories.values())

    @property
    def usable(self) -> bool:
        """At least one valid pair, and no unreadable file, size or geometry mismatch, layout or label problem."""
        return (self.valid_pairs >= 1 and not self.unreadable and not self.size_mismatches
                and not self.geometry_mismatches and not self.problems and not self.label_problems)

    def totals(self) -> CategoryCounts:
        total = CategoryCounts()
        for c in self.categories.values():
            for name in vars(total):
                setattr(total, name, getattr(total, name) + getattr(c, name))
        return total

    def error_lines(self) -> list[str]:
        lines = [f"unreadable: {p}: {reason}" for p, reason in self.unreadable]
        lines += [f"size mismatch: {img} {tuple(si)} vs mask {m} {tuple(sm)}" for img, m, si, sm in
                  self.size_mismatches]
        lines += [f"geometry mismatch: {p}: {reason}" for p, reason in self.geometry_mismatches]
        lines += [f"layout: {p}" for p in self.problems]
        lines += [f"labels: {p}" for p in self.label_problems]
        if self.valid_pairs == 0:
            lines.append(f"no valid image/mask pair in {self.root}")
        return lines

    def warning_lines(self) -> list[str]:
        lines = [f"unpaired image (no mask with the same stem): {p}" for p in self.unpaired_images]
        lines += [f"unpaired mask (no image with the same stem): {p}" for p in self.unpaired_masks]
        names = mask_name_hint(self.unpaired_images, self.unpaired_masks)
        if names:
            lines.append(names)
        lines += [f"empty mask (no foreground{' for labels ' + str(self.labels) if self.labels else ''}): {p}"
                  for p in self.empty_masks]
        lines += [f"mask with {len(v)} distinct nonzero values ({format_values(v)}), all counted as foreground; "
                  f"{label_map_advice(v)}: {p}" for p, v in self.label_maps]
        lines += [f"blank image (every pixel {v:g}; nothing to learn from, check the export): {p}"
                  for p, v in self.blank_images]
        lines += list(self.warnings)
        if self.valid_pairs == 1:
            lines.append("only one valid image/mask pair: usable for evaluation, but `hemseg train` needs at least 2 "
                         "(training and validation)")
        elif self.valid_pairs > 1 and self.cases == 1:
            lines.append(f"every pair belongs to one case ({self.cases_from}): usable for evaluation, but `hemseg "
                         "train` splits by case and needs at least 2 (or remove the case list to split by image)")
        if self.valid_pairs and not self.totals().foreground_slices:
            which = f"equal to --label {self.labels}" if self.labels else "nonzero"
            lines.append(f"no valid mask has a lesion pixel ({which}): usable for evaluation only, `hemseg train` "
                         "refuses it (check --label and the masks)")
        return lines

    def format_text(self) -> str:
        """The human-readable report: counts per category, then one line per problem."""
        header = ("category", "images", "masks", "pairs", "valid", "slices", "fg-slices", "empty-masks")
        rows = [(name, c.images, c.masks, c.pairs, c.valid, c.slices, c.foreground_slices, c.empty_masks)
                for name, c in sorted(self.categories.items())]
        t = self.totals()
        rows.append(("TOTAL", t.images, t.masks, t.pairs, t.valid, t.slices, t.foreground_slices, t.empty_masks))
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

        def fmt(row) -> str:
            return "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(row, widths)))

        out = [f"dataset: {self.root} (layout: {self.layout}"
               + (f", labels {self.labels}" if self.labels else ", foreground = nonzero") + ")", "",
               fmt(header), *[fmt(r) for r in rows], ""]
        volumes = [p for p in self.pair_counts if p["slices"] > 1]
        if volumes and len(volumes) <= VOLUME_LINES:
            width = max(len(p["image"]) for p in volumes)
            out += ["fg-slices per volume (slices with a lesion pixel):"] + [
                f"  {p['image'].ljust(width)}  {p['foreground_slices']:>4} of {p['slices']}" for p in volumes] + [""]
        elif volumes:
            out += [f"fg-slices per volume: {len(volumes)} volumes, listed in the --json report (pairs)", ""]
        if self.cases is not None:
            how = "" if self.cases_from == CASES_CSV else f"; write {self.root / CASES_CSV} (stem,case) to override"
            out += [f"cases: {self.cases} (from {self.cases_from}; splits keep each case's files together{how})", ""]
        elif t.valid >= 2 and t.slices == t.valid and self.cases_from is None:  # 2D files: maybe one patient's
            out += [f"cases: {t.valid} (every file is its own case); if files are slices of one patient, list them in "
                    f"{self.root / CASES_CSV} (stem,case) so that splits keep them together", ""]
        elif t.valid:  # volumes (or one 2D file): each its own patient unless a case list says otherwise
            out += [f"cases: {t.valid} (every file is its own case; {self.root / CASES_CSV} (stem,case) groups the "
                    "files of one patient, so that splits keep them together)", ""]
        errors, warnings = self.error_lines(), self.warning_lines()
        if errors:
            out.append(f"errors ({len(errors)}):")
            out += [f"  ERROR {line}" for line in errors]
        if warnings:
            out.append(f"warnings ({len(warnings)}):")
            out += [f"  WARN  {line}" for line in warnings]
        verdict = "USABLE" if self.usable else "NOT USABLE"
        out.append(f"result: {verdict}: {self.valid_pairs} valid pair(s), {len(errors)} error(s), "
                   f"{len(warnings)} warning(s)")
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "layout": self.layout,
            "labels": self.labels,
            "usable": self.usable,
            "valid_pairs": self.valid_pairs,
            "categories": {k: vars(v).copy() for k, v in sorted(self.categories.items())},
            "totals": vars(self.totals()).copy(),
            "unpaired_images": [str(p) for p in self.unpaired_images],
            "unpaired_masks": [str(p) for p in self.unpaired_masks],
            "unreadable": [{"path": str(p), "reason": r} for p, r in self.unreadable],
            "empty_masks": [str(p) for p in self.empty_masks],
            "label_maps": [{"mask": str(p), "values": v} for p, v in self.label_maps],
            "blank_images": [{"image": str(p), "value": v} for p, v in self.blank_images],
            "size_mismatches": [{"image": str(i), "mask": str(m), "image_shape": list(si), "mask_shape": list(sm)}
                                for i, m, si, sm in self.size_mismatches],
            "geometry_mismatches": [{"mask": str(p), "reason": r} for p, r in self.geometry_mismatches],
            "problems": list(self.problems),
            "label_problems": list(self.label_problems),
            "warnings": list(self.warnings),
            "pairs": [dict(p) for p in self.pair_counts],
            "cases": self.cases if self.cases is not None else self.totals().valid,
            "cases_from": self.cases_from if self.cases is not None else "files",
        }


#: at most this many volumes get a line of their own in ``hemseg data check``'s text (all are in its JSON)
VOLUME_LINES = 30


def _sniffed(path: Path) -> str | None:
    """The format ``path`` is read as (by content; a PNG named .jpg is a PNG), None when it cannot be told."""
    try:
        return detect_format(path)
    except (InputError, OSError):
        return None


def check_dataset(root: str | Path, labels: Sequence[int] | None = None) -> CheckReport:
    """Discover the dataset under ``root`` and read every pair; see :class:`CheckReport`."""
    labels = [int(v) for v in labels] if labels else None
    index = discover(root)
    report = CheckReport(root=index.root, layout=index.layout, labels=labels, problems=list(index.problems),
                         warnings=list(index.warnings), cases=case_count(index.samples),
                         cases_from=index.cases_from)
    for cat in index.categories:
        report.categories[cat] = CategoryCounts()
    for kind, unpaired, found in (("images", index.unpaired_images, report.unpaired_images),
                                  ("masks", index.unpaired_masks, report.unpaired_masks)):
        other = "mask" if kind == "images" else "image"
        for cat, p in unpaired:
            if p.is_symlink() and not p.exists():  # the real problem (it was called an unpaired image / mask)
                report.warnings.append(f"{p}: a symbolic link to nothing (and no {other} with its stem): skipped, as "
                                       "training and evaluation skip it; fix or remove it")
                continue
            setattr(report.categories[cat], kind, getattr(report.categories[cat], kind) + 1)
            found.append(p)
    jpeg = [s.mask for s in index.samples if _sniffed(s.mask) == "jpeg"] if labels is None else []
    if jpeg:
        report.warnings.append(f"{len(jpeg)} JPEG mask(s) (e.g. {jpeg[0]}): read as one class, binarized at Otsu's "
                               "threshold (lossy compression changes values; PNG keeps them exactly)")
    lesion_pixels, pixels = 0, 0
    present: set[float] = set()  # the nonzero values of the valid masks (with --label: are those among them?)
    values_of: list[tuple[Path, Any]] = []  # each valid mask's nonzero values (with --label: masks holding none)
    valid: list[Sample] = []  # (the cases are counted over these: a broken pair is no case, QA stop 57)
    for sample in index.samples:
        counts = report.categories[sample.category]
        counts.images += 1
        counts.masks += 1
        counts.pairs += 1
        try:
            with pairing_notes() as paired:  # counted in the report (they were only logged)
                vol, mask, values = _read_pair_raw(sample, labels, warn=False)
            to_uint8(vol.data, sample.image)
        except GeometryError as exc:
            report.geometry_mismatches.append((exc.path, exc.reason))
            continue
        except InputError as exc:
            report.unreadable.append((exc.path, exc.reason))
            continue
        if vol.data.shape != mask.shape:
            report.size_mismatches.append((sample.image, sample.mask, vol.data.shape, mask.shape))
            hint = _turned_hint(vol, mask.shape, sample.mask)
            if hint:
                report.warnings.append(f"{sample.mask}{hint}")
            continue
        counts.valid += 1
        valid.append(sample)
        report.warnings.extend(f"{sample.image}: {said}" for said in vol.geometry_warnings)
        report.warnings.extend(mask_layout_notes(sample.mask, vol))
        report.warnings.extend(paired)
        present.update(float(v) for v in values)
        values_of.append((sample.mask, values))
        if is_blank(vol.data):
            report.blank_images.append((sample.image, vol.data.flat[0].item()))
        if labels is None and len(values) > 1:
            report.label_maps.append((sample.mask, values.tolist()))
        elif labels is not None and fractional_label_warning(values, labels):
            report.warnings.append(f"{sample.mask} {fractional_label_warning(values, labels)}")
        lesion_pixels += int(mask.sum())
        pixels += mask.size
        counts.slices += mask.shape[0]
        fg = mask.reshape(mask.shape[0], -1).any(axis=1)
        counts.foreground_slices += int(fg.sum())
        if not fg.any():
            counts.empty_masks += 1
            report.empty_masks.append(sample.mask)
        report.pair_counts.append({"image": str(sample.image), "mask": str(sample.mask), "category": sample.category,
                                   "slices": int(mask.shape[0]), "foreground_slices": int(fg.sum())})
    if report.cases is not None:
        report.cases = case_count(valid) or 0  # (None for no usable pair: then no case, from the same list)
    said = mostly_lesion_warning(lesion_pixels, pixels, labels)
    if said:
        report.warnings.append(said)
    said = other_label_warning(values_of, labels) if labels else None
    if said:
        report.warnings.append(said)
    if labels is not None and present and not present & {float(v) for v in labels}:
        # every reference would be empty: hemseg eval, eval-masks and baseline refuse it (warn_label_maps)
        report.label_problems.append(f"no mask holds --label {', '.join(map(str, labels))}; the masks hold "
                               f"{format_values(sorted(present))}")
    return report


# ---------------------------------------------------------------------------------------------- fingerprint
def _entry_files(path: Path) -> list[Path]:
    """The files of one sample's image or mask: the file, or a DICOM series folder's files (hidden ones aside)."""
    return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")) if path.is_dir() else [path]


def _hash_entry(h, root: Path, path: Path) -> None:
    """Feed one image or mask (its relative path, its files' names and contents) into ``h``."""
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        rel = path.as_posix()
    h.update(rel.encode("utf-8") + b"\0")
    for f in _entry_files(path):
        h.update(f.name.encode("utf-8") + b"\0" + bytes.fromhex(sha256_file(f)))


#: hex digits kept of each slice's digest in a model's record of its training slices (64 bits: no two of a
#: dataset's slices meet by chance, and a record of thousands stays small in a checkpoint or ONNX metadata)
PIXEL_DIGEST_CHARS = 16
#: the first character of every :func:`pixel_digests` digest, naming its kind (digests of the slice's value ranks);
#: the exact-value digests of the hemseg before it (:func:`exact_pixel_digests`) have none
PIXEL_DIGEST_KIND = "r"


#: a slice with fewer distinct values than this (in every 4th row and column) gets no pixel digest: zero padding
#: with a constant frame, a constant slab outside the field of view, are alike in unrelated volumes, and one such
#: slice made a volume never trained on count as a training image (a QA finding of stop 51); a real MR slice
#: holds hundreds of values, its noise alone tells two apart
MIN_DISTINCT_VALUES = 16


def _whole_numbers(plane: np.ndarray) -> bool:
    """Whether a slice's values are whole numbers (an integer type, or floats without fractions, none infinite)."""
    return plane.dtype.kind in "biu" or bool(np.all(np.isfinite(plane)) and np.all(plane == np.round(plane)))


def value_ranks(plane: np.ndarray) -> np.ndarray:
    """Each pixel's rank among the slice's distinct values (0: the smallest), int32: the same for any increasing map
    of the values (an 8-bit image stored x257 in 16 bits, divided by 255 into floats, given a DICOM rescale slope and
    intercept, windowed without clipping)."""
    plane = np.asarray(plane)
    if _whole_numbers(plane) and plane.size:
        q = plane.astype(np.int64)
        q -= q.min()
        if q.max() < (1 << 24):  # whole numbers of a modest range: by a table, ~4x faster than sorting
            present = np.bincount(q.ravel()) > 0
            return (np.cumsum(present, dtype=np.int64) - 1).astype(np.int32)[q]
    return np.unique(plane, return_inverse=True)[1].reshape(plane.shape).astype(np.int32)


def _slice_digests(values: np.ndarray, tag: bytes, prefix: str, content) -> list[str | None]:
    """Per slice of ``values`` ((N, H, W) or (H, W)): ``prefix`` + the SHA-256 (first :data:`PIXEL_DIGEST_CHARS` hex
    digits) of ``tag``, the slice's size and ``content(slice)``; None for a slice with too little in it to tell it
    from another (blank, or fewer than :data:`MIN_DISTINCT_VALUES` values: synthetic padding slices of unrelated
    volumes would meet)."""
    values = np.asarray(values)
    if values.ndim == 2:
        values = values[None]
    out: list[str | None] = []
    for plane in values:
        if is_blank(plane) or np.unique(plane[::4, ::4]).size < MIN_DISTINCT_VALUES:
            out.append(None)
            continue
        h = hashlib.sha256(tag + b"\0" + f"{plane.shape[0]}x{plane.shape[1]}\0".encode())
        h.update(content(plane))
        out.append(prefix + h.hexdigest()[:PIXEL_DIGEST_CHARS])
    return out


def pixel_digests(values: np.ndarray) -> list[str | None]:
    """Per slice of an image's values as read (N, H, W) or (H, W): a digest of its size and of its values' ranks
    (:func:`value_ranks`), prefixed with :data:`PIXEL_DIGEST_KIND`; None for a slice with too little in it
    (:func:`_slice_digests`). What a model records of the slices it trained and validated on, to tell them again
    whatever their file: another name, folder or format (a PNG saved again, a 16-bit TIFF or a DICOM), its values
    mapped by any increasing function (x257 in 16 bits, floats in 0..1, a rescale slope), or a slice of a volume saved
    on its own. Values that were merged (16 bits cut to 8), resampled or lossily compressed make another slice."""
    return _slice_digests(values, b"hemseg-pixel-ranks-v2", PIXEL_DIGEST_KIND,
                          lambda plane: np.ascontiguousarray(value_ranks(plane)).tobytes())


def exact_pixel_digests(values: np.ndarray) -> list[str | None]:
    """The digests models of stop 51 recorded (of each slice's exact values, no kind prefix), which evaluation
    compares for such a model: the same slices as :func:`pixel_digests` skips get None."""
    return _slice_digests(values, b"hemseg-pixels-v1", "", lambda plane: np.ascontiguousarray(
        plane, np.int64 if _whole_numbers(plane) else np.float64).tobytes())


def image_pixel_digests(path: str | Path) -> set[str]:
    """The :func:`pixel_digests` of the image file (or DICOM series folder) ``path``."""
    return {d for d in pixel_digests(read_image(path).data) if d}


def file_versions(paths: Iterable[Path]) -> dict[str, Any]:
    """The version (:func:`hemseg.runtime.io.hashing.file_version`) of each file, or of each file in a folder (a
    DICOM series), None where it is gone: cheap to take again, to tell whether a dataset was replaced or edited
    while it was read lazily (``hemseg data synth`` replacing it under a running evaluation)."""
    from hemseg.runtime.io.hashing import file_version

    def version(p: Path):
        try:
            if p.is_dir():
                return tuple(file_version(f) for f in sorted(p.iterdir()) if f.is_file())
            return file_version(p)
        except OSError:
            return None

    return {str(p): version(Path(p)) for p in paths}


def changed_files(before: dict[str, Any]) -> list[str]:
    """The files of :func:`file_versions` ``before`` that are another version now (or gone)."""
    now = file_versions(Path(p) for p in before)
    return [p for p, v in before.items() if now[p] != v]


def dataset_fingerprint(index: DatasetIndex) -> str:
    """sha256 (hex) over the sorted samples: category, stem, relative paths and the content of every file.

    Content-based (not mtimes), so a copied dataset keeps its fingerprint and any edited pixel changes it.
    """
    h = hashlib.sha256(b"hemseg-dataset-v1\0")
    for s in sorted(index.samples, key=lambda s: (s.category, s.stem)):
        h.update(f"{s.category}\0{s.stem}\0".encode("utf-8"))
        if s.case is not None:  # datasets without cases.csv keep the fingerprint they had before it existed
            h.update(f"case\0{s.case}\0".encode("utf-8"))
        _hash_entry(h, index.root, s.image)
        _hash_entry(h, index.root, s.mask)
    return h.hexdigest()


def format_values(values: Sequence, limit: int = 5) -> str:
    """``1, 2, 255`` (at most ``limit`` values, then ``...``), integers without a decimal point, fractions to 4
    significant digits as many as tell them apart (a soft mask's 0.50001 and 0.50002 read '0.5, 0.5')."""
    values = [float(v) for v in values]
    for digits in range(4, 18):
        shown = [str(int(v)) if v.is_integer() else f"{v:.{digits}g}" for v in values[:limit]]
        if len(set(shown)) == len(set(values[:limit])):
            break
    return ", ".join(shown) + (", ..." if len(values) > limit else "")


def label_map_masks(samples: Sequence[Sample]) -> list[tuple[Path, np.ndarray]]:
    """The masks of ``samples`` that hold more than one distinct nonzero value, with those values."""
    found = []
    for sample in samples:
        values = mask_label_values(sample.mask)
        if len(values) > 1:
            found.append((sample.mask, values))
    return found


def fractional_label_warning(values: Sequence, labels: Sequence[int], option: str = "--label") -> str | None:
    """With ``--label`` (``option``): what to say about a mask whose nonzero ``values`` are not all whole numbers (a soft or
    resampled mask, of which --label keeps only the pixels exactly equal to a label), else None."""
    if all(float(v) == round(float(v)) for v in values):
        return None
    return (f"holds values that are not whole numbers ({format_values(values)}): {option} {', '.join(map(str, labels))} "
            "keeps only the pixels exactly equal to it, a soft or resampled mask's lesions shrink; binarize it "
            "first (e.g. >= 0.5)")


def other_label_warning(values_of: Sequence[tuple[Path, Sequence]], labels: Sequence[int],
                        option: str = "--label") -> str | None:
    """With ``--label``: what to say when some masks hold nonzero values but none of ``labels`` (``values_of``: each
    mask and its distinct nonzero values), while other masks hold a label. Those masks read as lesion-free; masks of
    one value each are most likely the same binary masks in another encoding (0/1 beside 0/255), which trained as
    lesion-free with nothing said (a QA finding of stop 55). A value that some mask holds beside a label is another
    structure of a label map (cord 1, lesion 2: a lesion-free slice holds the cord only), not named. A mask that
    holds no label at all is not named when no mask does: that is a refusal of its own (evaluation) or an empty
    training set. ``option`` may be a description (the model's labels): the advice names ``--label`` then."""
    wanted = {float(v) for v in labels}
    beside = {float(v) for _, values in values_of if wanted & {float(x) for x in values} for v in values}
    if not beside:
        return None
    others = [(path, values) for path, values in values_of
              if len(values) and not wanted & {float(v) for v in values} and {float(v) for v in values} - beside]
    if not others:
        return None
    path, values = others[0]
    binary = all(len(v) == 1 for _, v in others)
    flag = option if option.startswith("--") else "--label"
    advice = (f"binary masks in another encoding? give each lesion value ({flag} {labels[0]} {flag} "
              f"{format_values(values)})" if binary and len(values) == 1 else
              "if they hold the lesion under another value, add it with " + flag)
    return (f"{len(others)} of {len(values_of)} mask(s) hold nonzero values but not {option} "
            f"{', '.join(map(str, labels))} (e.g. {path.name}: {format_values(values)}): they read as lesion-free; "
            f"{advice}")


#: a lesion share of the mask pixels above which the masks are probably inverted (background marked)
MOSTLY_LESION = 0.5


def mostly_lesion_warning(lesion_pixels: int, pixels: int, labels: Sequence[int] | None) -> str | None:
    """When more than :data:`MOSTLY_LESION` of all mask pixels are lesion: the masks are probably inverted (the
    background marked) or ``--label`` names the background's value. Lesions are a small part of a slice."""
    if not pixels or lesion_pixels / pixels <= MOSTLY_LESION:
        return None
    which = f" (--label {', '.join(map(str, labels))})" if labels else ""
    return (f"the masks mark {100 * lesion_pixels / pixels:.1f} % of all pixels as lesion{which}: are they inverted "
            "(background marked as lesion), or does the label name the background?")


def warn_label_maps(data: str | Path, samples: Sequence[Sample], labels: Sequence[int] | None = None,
                    require_labels: bool = False, option: str = "--label", logged: bool = True) -> list[str]:
    """Log one warning when masks of ``samples`` hold several nonzero values and no ``--label`` picks one: every
    nonzero value then counts as lesion (a label map of several structures would train on all of them); with
    ``labels``, when masks hold fractions (:func:`fractional_label_warning`). ``require_labels`` (evaluation): refuse
    ``labels`` that no mask holds while the masks hold other values, since every reference would then be empty (a
    --label typo, or another dataset's numbering); ``option`` names where the labels came from. One read of each
    mask for both. Returns the warning ([] or one line), for a report's own warnings; ``logged=False`` leaves the
    logging to that report (an evaluation logs its warnings once, when it is written)."""
    if labels and 0 in labels:
        raise UsageError(f"{option} 0 selects the masks' background as the lesion; give the lesion's value(s)")
    if labels:
        present: set[float] = set()
        warned = False
        values_of = []
        for sample in samples:
            values = mask_label_values(sample.mask)
            values_of.append((sample.mask, values))
            present.update(float(v) for v in values)
            said = None if warned else fractional_label_warning(values, labels)
            if said:
                warned = f"{data}: {sample.mask.name} {said}"
                if logged:
                    log.warning("%s", warned)
        if require_labels and present and not present & {float(v) for v in labels}:
            raise DatasetError(f"{data}: no mask holds {option} {', '.join(map(str, labels))}; the masks hold "
                               f"{format_values(sorted(present))}")
        other = other_label_warning(values_of, labels, option)
        if other and logged:
            log.warning("%s: %s", data, other)
        return [w for w in (warned, other and f"{data}: {other}") if w]
    found = label_map_masks(samples)
    if not found:
        return []
    path, values = found[0]
    said = (f"{data}: {len(found)} of {len(samples)} mask(s) hold more than one nonzero value (e.g. {path.name}: "
            f"{format_values(values)}); every nonzero value counts as lesion: {label_map_advice(values)}")
    if logged:
        log.warning("%s", said)
    return [said]


def label_map_advice(values: Sequence, option: str = "--label") -> str:
    """What to do about a mask with several nonzero ``values``: pick labels, or, for fractional values (a soft or
    interpolated mask, which "nonzero" enlarges by every partial pixel), binarize it first."""
    if any(float(v) != round(float(v)) for v in values):
        return ("its values are not whole numbers (a soft or interpolated mask?): binarize it first (e.g. >= 0.5) "
                f"or resample masks with nearest neighbour; {option} cannot select fractions")
    if len(values) > MANY_LABELS:  # a 0-255 probability map saved as PNG reads as a run of whole numbers
        return ("so many values suggest a probability map saved as whole numbers (e.g. 0-255), which needs binarizing "
                f"first (e.g. >= 128); a label map of many structures: the lesion's value(s) chosen with {option}")
    return f"if these are label maps, choose the lesion's value(s) with {option}"


#: more distinct whole-number values than this in one mask: perhaps a probability map saved as 0-255
MANY_LABELS = 8


def left_out_warnings(data: str | Path, index: "DatasetIndex") -> list[str]:
    """One line per kind of file :func:`usable_index` leaves out for want of a counterpart (for a report's
    ``warnings``: an evaluation that skipped images without a mask says so in its summary, not only in the log)."""
    out = []
    for items, what in ((index.unpaired_images, "image(s) without a mask"),
                        (index.unpaired_masks, "mask(s) without an image")):
        if items and index.samples:
            out.append(f"{data}: {len(items)} {what} of the same name left out (e.g. {items[0][1].name})")
    return out


def usable_index(data: str | Path, purpose: str = "train on") -> "DatasetIndex":
    """:func:`discover`, logging warnings (files left out for want of a counterpart included) and refusing a dataset
    with layout problems or no pairs (DatasetError)."""
    index = discover(data)
    for warning in index.warnings:
        log.warning("%s", warning)
    for line in left_out_warnings(data, index):
        log.warning("%s; 'hemseg data check %s' lists them", line, data)
    if index.problems:
        raise DatasetError(f"{data}: {len(index.problems)} dataset problem(s): {'; '.join(index.problems[:3])}"
                           f"{' ...' if len(index.problems) > 3 else ''} (see hemseg data check)")
    if not index.samples:
        raise DatasetError(f"{data}: no image/mask pairs to {purpose}{_unpaired_hint(index)}")
    return index


def _unpaired_hint(index: "DatasetIndex") -> str:
    """Why no pair was found, for the error: the unpaired files on each side (masks pair with images by name)."""
    if not index.unpaired_images and not index.unpaired_masks:
        return ""
    def example(items):
        return f" (e.g. {items[0][1].name})" if items else ""
    names = mask_name_hint([p for _, p in index.unpaired_images], [p for _, p in index.unpaired_masks])
    return (f": {len(index.unpaired_images)} image(s){example(index.unpaired_images)} and "
            f"{len(index.unpaired_masks)} mask(s){example(index.unpaired_masks)} without a counterpart of the same name"
            + (f" ({names})" if names else ""))
