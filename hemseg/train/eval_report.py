"""The evaluation report: summary JSON, per-image CSV, per-category Markdown table and best/worst overlays.

numpy + OpenCV only (no torch), so the K-Means baseline and the trainer's ``hemseg eval`` write the same report.

``write_eval_report(out_dir, records, extra)`` writes, each file atomically (temp file in the same folder, then
``os.replace``):

- ``summary.json``: ``n_images``; the mean and population std (``<key>_std``) of ``dice``, ``iou``, ``precision``,
  ``recall``, ``accuracy``, ``specificity``, ``hd95``, ``assd`` (and ``hd95_mm``/``assd_mm`` when the records have
  them), NaN skipped (:func:`hemseg.runtime.metrics.aggregate`); ``n_nan`` (per metric, how many images were
  skipped); ``dice_global`` (Dice of all pixels pooled); ``n_gt_empty``/``n_pred_empty``; ``per_category``
  (``{category: {n, dice_global, dice, iou, precision, recall, accuracy, hd95}}``, pooled Dice and means, and
  ``hd95_mm`` where the records have it);
  ``lesions`` (when the records carry :data:`hemseg.runtime.metrics.LESION_KEYS`: lesion-wise recall and precision
  with the overlap rule, false-positive components per lesion-free slice; see
  :func:`hemseg.runtime.metrics.lesion_summary`); ``warnings`` (e.g. a model that predicts no lesion anywhere);
  ``overlays`` (the stems drawn); and the keys of ``extra`` (model, checkpoint, post-processing, ...). Non-finite
  numbers are written as ``null``.
- ``per_image.csv``: one row per record: ``stem``, ``category``, ``case`` (where records have cases), the metrics (``nan`` where undefined) and the
  pixel counts.
- ``per_case.csv`` and ``per_case`` / ``n_cases`` / ``dice_per_case`` in ``summary.json``, when records carry a
  ``case`` and some case spans several slices (a volume, or the slices of one patient in ``cases.csv``): each
  case's slices pooled, and the mean over cases of its pooled Dice (the patient-level number); ``hd95_mm`` (a column
  in the CSV) where the records have it.
- ``ci95`` in ``summary.json``: 95 % percentile-bootstrap intervals of ``dice_global`` and ``dice``, resampling
  cases when some case spans several slices, else images (:mod:`hemseg.runtime.bootstrap`); ``{}`` for one image.
- ``per_category.md``: a Markdown table, one row per category and a ``**total**`` row over all images, the pooled
  ``dice_global`` first; below it the lesion-wise figures and any warning.
- ``overlays/best_01_<stem>.png`` ... and ``overlays/worst_01_<stem>.png`` ...: the ``n_overlays`` best and worst
  images by Dice (ties by stem; for the best, images with a lesion in the reference come first, then lesion-free
  ones, whose Dice 1 shows no outline, and failures of Dice 0 last), the image in gray, the ground-truth outline
  green and the prediction outline red.
  Where two categories share a stem (``t1/000.png``, ``t2/000.png``) every overlay is named
  ``..._<category>_<stem>.png`` and ``summary.json``'s ``overlays`` lists ``<category>/<stem>``.
  Only records with ``image``, ``gt`` and ``pred`` arrays (or all of them, given ``overlay_loader``) are candidates;
  with fewer than ``2 * n_overlays`` candidates the two lists overlap. Earlier ``best_*``/``worst_*`` PNGs in that
  folder are removed first so the folder always matches ``summary.json``.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import logging
import math
import operator
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import cv2
import numpy as np

from hemseg.errors import UsageError
from hemseg.runtime.bootstrap import bootstrap_dice, paired_difference, too_few_text, units_text
from hemseg.runtime.dataset import sample_ids
from hemseg.runtime.io.lock import staging_folder
from hemseg.runtime.io.regular import read_regular_bytes
from hemseg.runtime.io.signals import signals_held
from hemseg.runtime.io.writers import atomic_write_bytes, file_mode, final_names, is_json_with, keep_mode, write_png
from hemseg.runtime.io.writers import write_json as _write_plain_json
from hemseg.runtime.metrics import (
    COUNT_KEYS,
    LESION_KEYS,
    LESION_MIN_OVERLAP,
    METRIC_KEYS,
    MM_KEYS,
    aggregate,
    lesion_summary,
)

log = logging.getLogger(__name__)

#: Reported per category: the pooled Dice first, then means per image.
CATEGORY_KEYS = ("dice_global", "dice", "iou", "precision", "recall", "accuracy", "hd95")
#: ... and, for groups whose records know their pixel size (NIfTI, DICOM), the mean HD95 in mm
GROUP_MM_KEYS = ("hd95_mm",)
GT_COLOR = (0, 255, 0)  # BGR green
PRED_COLOR = (0, 0, 255)  # BGR red
_OVERLAY_RE = re.compile(r"^(best|worst)_\d{2}_.*\.png$")


@dataclass
class EvalRecord:
    """One evaluated image (or slice). Arrays are optional and used only for overlays; masks are nonzero = lesion."""

    stem: str
    category: str
    metrics: dict
    image: np.ndarray | None = None  # uint8 (H, W)
    gt: np.ndarray | None = None
    pred: np.ndarray | None = None
    case: str | None = None  # the patient / volume the slice belongs to (per-case figures when cases span slices)

    @property
    def has_arrays(self) -> bool:
        return self.image is not None and self.gt is not None and self.pred is not None


OverlayLoader = Callable[[EvalRecord], "tuple[np.ndarray, np.ndarray, np.ndarray]"]


def _as_record(r: EvalRecord | Mapping) -> EvalRecord:
    if isinstance(r, EvalRecord):
        return r
    if not isinstance(r, Mapping):
        raise UsageError(f"evaluation records must be EvalRecord or dict, got {type(r).__name__}")
    d = dict(r)
    if "image_u8" in d:
        d["image"] = d.pop("image_u8")
    try:
        return EvalRecord(**d)
    except TypeError as exc:
        raise UsageError(f"bad evaluation record: {exc}") from None


# -- JSON --------------------------------------------------------------------------------------------------------------
def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically, with NaN/inf written as ``null`` (see :func:`json_safe`)."""
    _write_plain_json(path, json_safe(obj))


def json_safe(obj: Any) -> Any:
    """``obj`` with numpy values made plain, paths made strings, dataclasses made dicts, non-finite floats ``None``."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return json_safe(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


# -- tables ----------------------------------------------------------------------------------------------------------
def _metric_columns(records: list[EvalRecord]) -> list[str]:
    present: list[str] = []
    for r in records:
        present.extend(k for k in r.metrics if k not in present)
    first = [k for k in METRIC_KEYS + MM_KEYS if k in present]
    counts = [k for k in COUNT_KEYS if k in present]
    rest = [k for k in present if k not in first and k not in counts]
    return first + rest + counts


def _fmt_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        # the shortest text that reads back as the same float: hemseg eval-compare pairs these values, and 6 digits
        # moved a bootstrap bound off 0 (2/3 written 0.666667; a QA finding of stop 55)
        return "nan" if math.isnan(v) else repr(float(v))
    return str(v)


def _per_image_csv(records: list[EvalRecord]) -> str:
    cols = _metric_columns(records)
    cased = any(r.case is not None for r in records)  # the case column only where cases exist
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["stem", "category"] + (["case"] if cased else []) + cols)
    for r in records:
        w.writerow([r.stem, r.category] + ([r.case or ""] if cased else [])
                   + [_fmt_cell(r.metrics.get(c)) for c in cols])
    return buf.getvalue()


def read_per_image(path: str | Path) -> list[EvalRecord]:
    """The records of a ``per_image.csv`` written by :func:`write_eval_report` (metrics as floats, ``nan`` kept;
    no image arrays), e.g. to compare two models on the same images (:func:`hemseg.runtime.bootstrap.paired_difference`)."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        missing = {"stem", "category", "dice"} - set(reader.fieldnames or ())
    if missing or not rows:  # a file of other content (or an empty one) read as a report of no images
        raise ValueError(f"no {', '.join(sorted(missing))} column" if missing else "no rows: a report of no images")
    out = []
    for row in rows:
        metrics = {k: float(v) for k, v in row.items() if k not in ("stem", "category", "case") and v != ""}
        out.append(EvalRecord(stem=row["stem"], category=row["category"], metrics=metrics,
                              case=row.get("case") or None))
    return out


def compare_reports(base: str | Path, other: str | Path) -> dict[str, Any]:
    """``other``'s Dice minus ``base``'s, two report folders (``hemseg eval``, ``hemseg eval-masks``) of the same
    images: :func:`hemseg.runtime.bootstrap.paired_difference` of their ``per_image.csv`` (cases as the units where
    cases span several slices), with ``n_images``. An :class:`~hemseg.errors.InputError` names a folder without a
    report, a :class:`UsageError` two reports of different images."""
    from hemseg.errors import InputError

    records = []
    for folder in (Path(base), Path(other)):
        path = folder / "per_image.csv"
        if not path.is_file():
            raise InputError(folder, "no per_image.csv here: give a folder written by hemseg eval or eval-masks")
        try:
            records.append(read_per_image(path))
        except (OSError, KeyError, ValueError, csv.Error) as exc:
            raise InputError(path, f"not a hemseg per_image.csv ({exc})") from None
    a, b = records
    key = _record_key
    if _same_stems_other_categories(a, b):  # one report made with categories.csv, the other without (QA, stop 55)
        category_b = {r.stem: r.category for r in b}
        ra = next(r for r in a if r.category != category_b[r.stem])
        log.warning("%s and %s put the same images in other categories (e.g. %s: %s and %s): paired by file name",
                    base, other, ra.stem, ra.category, category_b[ra.stem])
        key = _stem_key
    by_key = {key(r): r for r in b}  # by category and stem: category folders may share file names
    if len(by_key) != len(b) or sorted(by_key) != sorted(key(r) for r in a):
        missing = sorted({key(r) for r in a} ^ set(by_key))
        raise UsageError(f"{base} ({len(a)} images) and {other} ({len(b)} images) are not reports of the same "
                         f"images" + (f" (e.g. {', '.join(missing[:3])} in one only)" if missing else ""))
    b = [by_key[key(r)] for r in a]
    _check_same_references(base, other, a, b)
    grouped_a, grouped_b = _has_cases(a), _has_cases(b)
    merged = [EvalRecord(stem=ra.stem, category=ra.category, metrics={},
                         case=_one_case(base, other, ra, rb, grouped_a, grouped_b)) for ra, rb in zip(a, b)]
    ma, mb = [r.metrics for r in a], [r.metrics for r in b]
    out = {"base": str(base), "other": str(other), "n_images": len(a),
           **paired_difference(ma, mb, case_units(merged))}
    for key, value in _point_differences(ma, mb).items():  # without an interval when too few units to resample
        out.setdefault(key, {"difference": value, "interval": None})
    return out


def _record_key(record: EvalRecord) -> str:
    """A record's name in eval-compare: ``<category>/<stem>``."""
    return f"{record.category}/{record.stem}"


def _stem_key(record: EvalRecord) -> str:
    return record.stem


def _same_stems_other_categories(a: Sequence[EvalRecord], b: Sequence[EvalRecord]) -> bool:
    """Whether two reports hold the same file names, each once, under other categories: the same images scored
    with and without a categories.csv (or other category folders) pair by name."""
    stems_a, stems_b = [r.stem for r in a], [r.stem for r in b]
    return (len(set(stems_a)) == len(stems_a) and len(set(stems_b)) == len(stems_b) and set(stems_a) == set(stems_b)
            and {_record_key(r) for r in a} != {_record_key(r) for r in b})


def _has_cases(records: Sequence[EvalRecord]) -> bool:
    """Whether a report groups its images into cases: some case holds two or more images. A report made without
    cases writes each image as a case of its own (case = stem), which groups nothing."""
    cases = [r.case for r in records if r.case is not None]
    return len(set(cases)) < len(cases)


def _one_case(base, other, ra: EvalRecord, rb: EvalRecord, grouped_a: bool, grouped_b: bool) -> str | None:
    """The case of one image in the two reports: the bootstrap resamples cases when either report has them (so
    the verdict does not depend on which report is BASE); two different cases for one image are refused. Whether a
    report has cases is decided per report (:func:`_has_cases`), not per image: a case may be named like one of
    its images."""
    case_a, case_b = (ra.case if grouped_a else None), (rb.case if grouped_b else None)
    if case_a is not None and case_b is not None and case_a != case_b:
        raise UsageError(f"{base} and {other} put image {ra.stem} in different cases ({case_a}, {case_b}): "
                         "evaluate both with the same cases.csv")
    return case_a if case_a is not None else case_b


def _check_same_references(base, other, a: Sequence[EvalRecord], b: Sequence[EvalRecord]) -> None:
    """Two reports of one test set count the same reference pixels per image (tp + fn): else they were scored
    against different masks (another --label, other data) and their difference means nothing. They also count the
    same pixels per image (tp + fp + fn + tn): images of other sizes under the same names are other images (a
    lesion-free image has no reference pixel to tell them by; QA, stop 55)."""
    for ra, rb in zip(a, b):
        ref = [r.metrics.get("tp", math.nan) + r.metrics.get("fn", math.nan) for r in (ra, rb)]
        if all(math.isfinite(v) for v in ref) and ref[0] != ref[1]:
            raise UsageError(f"{base} and {other} were scored against different reference masks (image {ra.stem}: "
                             f"{ref[0]:g} and {ref[1]:g} lesion pixels): compare reports of the same masks")
        size = [sum(r.metrics.get(k, math.nan) for k in ("tp", "fp", "fn", "tn")) for r in (ra, rb)]
        if all(math.isfinite(v) for v in size) and size[0] != size[1]:
            raise UsageError(f"{base} and {other} are not reports of the same images (image {ra.stem}: {size[0]:g} "
                             f"and {size[1]:g} pixels): compare reports of the same images")


def _point_differences(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``b`` minus ``a``: the mean per-image Dice and the pooled Dice, on all images."""
    out: dict[str, float] = {}
    da = [float(m.get("dice", math.nan)) for m in a]
    db = [float(m.get("dice", math.nan)) for m in b]
    if all(math.isfinite(v) for v in da + db) and da:
        out["dice"] = float(np.mean(db) - np.mean(da))

    def pooled(ms):
        tp, fp, fn = (sum(float(m.get(k, math.nan)) for m in ms) for k in ("tp", "fp", "fn"))
        return 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 1.0

    if all(k in m for m in list(a) + list(b) for k in ("tp", "fp", "fn")):
        out["dice_global"] = float(pooled(b) - pooled(a))
    return out


def case_units(records: Sequence[EvalRecord]) -> list[str] | None:
    """The bootstrap units of ``records``: their cases when some case spans several slices (a record without a case
    is a unit of its own), else ``None`` (every image a unit)."""
    cases = [r.case for r in records if r.case is not None]
    if len(cases) == len(set(cases)):
        return None
    return [r.case if r.case is not None else f"\0{i}" for i, r in enumerate(records)]


def _md_num(v: Any, digits: int) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def _finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _report_title(summary: Mapping) -> str:
    """What was scored, as the report's first line (a K-Means report's table did not say it was one: QA, stop 55)."""
    base = summary.get("baseline")
    if isinstance(base, Mapping):
        return (f"{base.get('method', 'baseline')} baseline, {base.get('variant', '')} (k {base.get('k')}, "
                f"{base.get('lesion_rule')}) on {base.get('data')}")
    model = summary.get("checkpoint") or summary.get("model_file")
    if model:
        how = [f"ensemble with {len(summary['ensemble_with'])} other model(s)"] if summary.get("ensemble_with") else []
        how += ["flip TTA"] if summary.get("tta") else []
        how += ["post-processed"] if summary.get("postprocess") else []
        settings = f" ({', '.join(how)})" if how else ""
        return f"{summary.get('model') or 'model'} {model}{settings} on {summary.get('data')}"
    if summary.get("predictions"):
        return f"masks in {summary['predictions']} against {summary.get('data')}"
    return "evaluation"


def _per_category_md(summary: dict) -> str:
    # the per-category HD95 in mm as a column where summary.json has it (it was there only: a QA finding of stop 52)
    with_mm = any(_finite_number(b.get("hd95_mm")) for b in summary["per_category"].values())
    keys = [*CATEGORY_KEYS, *(GROUP_MM_KEYS if with_mm else ())]
    head = ["category", "n"] + keys
    lines = [f"# {_report_title(summary)}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = list(summary["per_category"].items()) + [("**total**", {"n": summary["n_images"],
                                                                 **{k: summary.get(k) for k in keys}})]
    for cat, block in rows:
        cells = [str(cat), str(block["n"])] + [_md_num(block.get(k), 2 if k.startswith("hd95") else 4) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    skipped = summary.get("n_nan", {}).get("hd95", 0)
    lines += ["", "dice_global: the Dice of all pixels pooled (a lesion-free slice counts only through its false-"
                  "positive pixels: predicted empty, it changes nothing). The other columns are means per image; both "
                  "masks empty counts 1 in every ratio, exactly one empty counts 0 in every undefined ratio (a false "
                  "alarm on a lesion-free slice: recall 0 too; a missed lesion: precision 0 too). hd95 in pixels: the larger of "
                  "the two directed 95th percentiles of boundary-to-boundary distances (MONAI's rule; MedPy pools "
                  "both directions' distances), per 2D slice, averaged over the "
                  f"images whose reference has a lesion and the prediction too: {skipped} image(s) left out "
                  "(lesion-free references, missed lesions)."]
    les = summary.get("lesions")
    if les:
        lines.append(f"Lesions: recall {_md_num(les.get('recall'), 4)} ({les['gt_lesions_detected']} of "
                     f"{les['gt_lesions']} detected), precision {_md_num(les.get('precision'), 4)} "
                     f"({les['pred_lesions_true']} of {les['pred_lesions']} predicted components), "
                     f"{_md_num(les.get('fp_components_per_lesion_free_slice'), 2)} false-positive components per "
                     f"lesion-free slice ({les['lesion_free_slices']} such slices). Rule: {les['rule']}.")
    ci = summary.get("ci95") or {}
    if ci.get("dice_global") or ci.get("dice"):
        parts = [f"{name} {_md_num(ci[key][0], 3)}-{_md_num(ci[key][1], 3)}"
                 for key, name in (("dice_global", "pooled Dice"), ("dice", "mean Dice per image")) if ci.get(key)]
        lines.append(f"95 % bootstrap interval ({ci['resamples']} resamples of the {ci['n_units']} {ci['unit']}s): "
                     f"{', '.join(parts)}{too_few_text(ci)}.")
    elif ci.get("n_units") is not None:
        lines.append(f"No bootstrap interval: only {units_text(ci['n_units'], ci['unit'])}, nothing to resample.")
    if summary.get("n_cases"):
        n = summary["n_cases"]
        lines.append(f"Per case ({n} case{'s' if n != 1 else ''}, each case's slices pooled for Dice and "
                     "the ratios; its hd95 is the mean of its slices' hd95, not a 3D distance; per_case.csv): mean Dice "
                     f"{_md_num(summary.get('dice_per_case'), 4)} +/- {_md_num(summary.get('dice_per_case_std'), 4)}.")
    for warning in summary.get("warnings", []):
        lines.append(f"**Warning:** {warning}")
    mm = summary.get("hd95_mm")
    if isinstance(mm, float) and math.isfinite(mm):
        n_mm = summary["n_images"] - summary.get("n_nan", {}).get("hd95_mm", 0)
        lines.append(f"HD95 in mm (images whose file records a pixel spacing, {n_mm} with a value): {mm:.2f} mm.")
    return "\n".join(lines) + "\n"


# -- overlays --------------------------------------------------------------------------------------------------------
def _safe_name(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:120] or "image"


def draw_overlay(image_u8: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """BGR uint8 picture: the image in gray, the ground-truth outline green, the prediction outline red.

    Masks of another size than the image are resized to it (nearest neighbour).
    """
    img = np.asarray(image_u8)
    if img.ndim != 2 or img.dtype != np.uint8:
        raise UsageError(f"overlay needs a uint8 (H, W) image, got {img.dtype} {img.shape}")
    out = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    h, w = img.shape
    for mask, color in ((gt, GT_COLOR), (pred, PRED_COLOR)):
        m = (np.asarray(mask) != 0).astype(np.uint8)
        if m.ndim != 2:
            raise UsageError(f"overlay needs (H, W) masks, got shape {m.shape}")
        if m.shape != (h, w):
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, color, 1)
    return out


def _best_key(r: EvalRecord) -> tuple:
    """The order of the best overlays: slices with a lesion in the reference by Dice, then lesion-free slices by
    Dice (one predicted empty, Dice 1, shows no outline: the best overlays of a phantom evaluation were four such
    slices), failures (Dice 0: a missed lesion, a false alarm) last (QA, stop 59)."""
    m = r.metrics
    lesion_free = "tp" in m and "fn" in m and m["tp"] + m["fn"] == 0
    return (_dice_key(r) <= 0, lesion_free, -_dice_key(r))


def _dice_key(r: EvalRecord) -> float:
    d = r.metrics.get("dice", float("nan"))
    return float(d) if d is not None and math.isfinite(d) else -math.inf


def _publish(stage: Path, out: Path) -> None:
    """Move a complete report from ``stage`` into ``out`` (renames, no new space needed): the overlays replace the
    earlier report's, the tables follow (an earlier per_case.csv of another dataset goes), summary.json last. New
    overlays take the permissions the earlier ones had in common (pictures of patients made readable to their owner
    only stay so; they are other files, named after other slices, so no one file's mode can be kept)."""
    odir = out / "overlays"
    odir.mkdir(exist_ok=True)
    modes = []
    for old in odir.iterdir():
        if old.is_file() and _OVERLAY_RE.match(old.name):
            mode = file_mode(old)
            modes += [] if mode is None else [mode]
            old.unlink()
    common = functools.reduce(operator.and_, modes) if modes else None
    for new in sorted((stage / "overlays").iterdir()):
        if common is not None:
            os.chmod(new, common)
        os.replace(new, odir / new.name)
    for name in ("per_image.csv", "per_category.md", "per_case.csv"):
        if (stage / name).exists():
            keep_mode(out / name, stage / name)  # a report made readable to its owner only stays so
            os.replace(stage / name, out / name)
        else:
            (out / name).unlink(missing_ok=True)
    keep_mode(out / "summary.json", stage / "summary.json")
    os.replace(stage / "summary.json", out / "summary.json")


def _write_overlays(out_dir: Path, records: list[EvalRecord], n: int,
                    loader: OverlayLoader | None) -> dict[str, list[str]]:
    odir = out_dir / "overlays"
    odir.mkdir(parents=True, exist_ok=True)
    cands = [r for r in records if loader is not None or r.has_arrays]
    if n <= 0 or not cands:
        if n > 0:
            log.info("no overlays: the records carry no image/mask arrays")
        return {"best": [], "worst": []}
    names = {id(r): name for r, name in zip(records, sample_ids(records))}  # <category>/<stem> where stems repeat
    label = lambda r: names[id(r)]  # noqa: E731
    best = sorted(cands, key=lambda r: (*_best_key(r), label(r)))[:n]
    worst = sorted(cands, key=lambda r: (_dice_key(r), label(r)))[:n]
    drawn: dict[str, list[str]] = {}
    for kind, chosen in (("best", best), ("worst", worst)):
        drawn[kind] = []
        for i, r in enumerate(chosen, 1):
            image, gt, pred = (r.image, r.gt, r.pred) if r.has_arrays else loader(r)  # type: ignore[misc]
            write_png(odir / f"{kind}_{i:02d}_{_safe_name(label(r))}.png", draw_overlay(image, gt, pred))
            drawn[kind].append(label(r))
    return drawn


# -- the report ------------------------------------------------------------------------------------------------------
def summarize(records: Iterable[EvalRecord | Mapping], predictor: str = "the model predicts") -> dict:
    """The summary block (means, stds, NaN counts, per-category means) of per-image records, NaN kept as NaN."""
    recs = [_as_record(r) for r in records]
    if not recs:
        raise UsageError("no evaluated images to report")
    metrics = [r.metrics for r in recs]
    keys = [k for k in METRIC_KEYS + MM_KEYS if any(k in m for m in metrics)]
    summary = aggregate(metrics, keys=keys)
    if all(all(k in m for k in COUNT_KEYS) for m in metrics):
        summary["n_gt_empty"] = sum(1 for m in metrics if m["tp"] + m["fn"] == 0)
        summary["n_pred_empty"] = sum(1 for m in metrics if m["tp"] + m["fp"] == 0)
        pixels = sum(float(m[k]) for m in metrics for k in COUNT_KEYS)
        if pixels > 0:  # how much of all pixels each side calls lesion (a model marking everything is told)
            summary["predicted_lesion_fraction"] = sum(float(m["tp"] + m["fp"]) for m in metrics) / pixels
            summary["reference_lesion_fraction"] = sum(float(m["tp"] + m["fn"]) for m in metrics) / pixels
    summary["per_category"] = _per_group(recs, lambda r: r.category)
    summary.update(_per_case(recs))
    summary["ci95"] = bootstrap_dice(metrics, case_units(recs))  # cases spanning slices: the units
    if all(all(k in m for k in LESION_KEYS) for m in metrics):
        summary["lesions"] = lesion_summary(metrics)
    summary["warnings"] = summary_warnings(summary, predictor)
    return summary


def _per_group(recs: list[EvalRecord], key: Callable[[EvalRecord], str]) -> dict[str, dict]:
    """``{group: {n, dice_global, dice, iou, ...}}`` over the records of each ``key`` (sorted): the pooled Dice and
    the means of :data:`CATEGORY_KEYS`."""
    groups: dict[str, list[dict]] = {}
    for r in recs:
        groups.setdefault(key(r), []).append(r.metrics)
    out = {}
    for name in sorted(groups):
        sub = groups[name]
        agg = aggregate(sub, keys=[k for k in CATEGORY_KEYS + GROUP_MM_KEYS if any(k in m for m in sub)])
        out[name] = {"n": len(sub), **{k: agg[k] for k in CATEGORY_KEYS + GROUP_MM_KEYS if k in agg}}
    return out


def _per_case(recs: list[EvalRecord]) -> dict:
    """``per_case`` (``{case: {n, dice_global, dice, ...}}``: each case's slices pooled, as ``per_category``) and
    ``n_cases``, ``dice_per_case`` / ``dice_per_case_std`` (the mean and std over cases of their pooled Dice: one
    number per patient or volume, the unit of independence); empty when no case holds more than one slice (then a
    case is an image and ``per_image.csv`` says it all)."""
    if case_units(recs) is None:
        return {}
    per_case = _per_group([r for r in recs if r.case is not None], lambda r: r.case)
    pooled = [v["dice_global"] for v in per_case.values() if "dice_global" in v]
    out: dict[str, Any] = {"per_case": per_case, "n_cases": len(per_case)}
    if pooled:
        out["dice_per_case"] = float(np.mean(pooled))
        out["dice_per_case_std"] = float(np.std(pooled)) if len(pooled) > 1 else math.nan  # one case: no spread
    return out


def _per_case_csv(summary: Mapping) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    keys = CATEGORY_KEYS + tuple(k for k in GROUP_MM_KEYS if any(k in v for v in summary["per_case"].values()))
    w.writerow(["case", "n_slices", *keys])
    for case, v in summary["per_case"].items():
        w.writerow([case, v["n"], *[_fmt_cell(v.get(k)) for k in keys]])
    return buf.getvalue()


#: a prediction marking at least this share of all pixels (and 5 times the references' share) marks so much that a
#: lesion counts as detected by chance: marked at random, that share of each lesion is covered, and the lesion-wise
#: rule takes a lesion covered to :data:`hemseg.runtime.metrics.LESION_MIN_OVERLAP` as found
MOSTLY_MARKED = LESION_MIN_OVERLAP


def summary_warnings(summary: Mapping, predictor: str = "the model predicts") -> list[str]:
    """Warnings about what the numbers can say: references without any lesion (nothing to detect, so the scores
    say nothing about detecting), predictions marking so many pixels that lesions count as detected by chance, or
    predictions without a lesion pixel on any slice (``predictor``: what made them, "the model predicts", or for
    eval-masks "the predicted masks hold")."""
    who = predictor
    n, empty, gt_empty = summary.get("n_images"), summary.get("n_pred_empty"), summary.get("n_gt_empty")
    if n and gt_empty == n:
        return [f"none of the {n} reference masks holds a lesion: there is nothing to detect, and Dice, IoU, "
                "precision and recall say nothing about detecting one (a slice left empty scores Dice 1, any "
                "predicted pixel 0); check --label and the masks"]
    marked, truth = summary.get("predicted_lesion_fraction"), summary.get("reference_lesion_fraction")
    if marked is not None and truth is not None and marked >= MOSTLY_MARKED and marked > 5 * truth:
        return [f"{who} lesion on {100 * marked:.0f} % of all pixels (the references: {100 * truth:.2g} %): so much "
                f"is marked that a lesion counts as detected by chance ({100 * LESION_MIN_OVERLAP:.0f} % of it "
                "covered), and lesion recall says nothing; precision, accuracy and Dice show the false positives"]
    if n and empty == n:
        if gt_empty == 0:
            return [f"{who} no lesion on any of the {n} slices, and every one of them holds a lesion: "
                    "every Dice is 0; it detects nothing"]
        return [f"{who} no lesion on any of the {n} slices: its Dice numbers come only from the "
                f"{gt_empty if gt_empty is not None else 'lesion-free'} slices without a lesion, which an empty "
                "prediction gets right by default; it detects nothing"]
    return []


def refuse_inside(out: str | Path, dataset: str | Path | None = None, predictions: str | Path | None = None,
                  whose: str = "the report's") -> None:
    """UsageError when the report folder ``out`` is the dataset folder or lies inside it (its files would lie among
    the images and masks, and a later ``hemseg data check`` / ``train`` meet them), or is the predictions' folder
    itself (the report's files mixed with the masks it scores), as ``hemseg train`` refuses a run folder there."""
    here = Path(out).resolve()
    for what, folder, below in (("dataset", dataset, True), ("predictions' folder", predictions, False)):
        if folder is None or not Path(folder).is_dir():
            continue
        for there in _folders_read(Path(folder)) if below else [Path(folder).resolve()]:
            if here == there or (below and there in here.parents):
                raise UsageError(f"--out {out} is {'inside ' if below else ''}the {what} {folder}: {whose} "
                                 "files would lie among its files; choose a folder outside it")


def _folders_read(dataset: Path, depth: int = 4) -> list[Path]:
    """The dataset folder and the folders its symbolic links to folders lead to (an ``images`` linked to the
    scanner export's folder: a run there was written among the images, unrefused; a QA finding of stop 54),
    resolved; links followed ``depth`` levels below the dataset."""
    found = [dataset.resolve()]
    for root, dirs, _ in os.walk(dataset):
        level = len(Path(root).relative_to(dataset).parts)
        for name in dirs:
            sub = Path(root) / name
            if sub.is_symlink():
                try:
                    found.append(sub.resolve(strict=True))
                except (OSError, RuntimeError):  # a loop: the dataset reader says so
                    continue
        if level + 1 >= depth:
            dirs.clear()
    return found


def check_report_folder(out: str | Path, dataset: str | Path | None = None,
                        predictions: str | Path | None = None) -> None:
    """Refuse a report folder whose ``summary.json`` or ``per_image.csv`` was not written by an evaluation (e.g.
    ``hemseg predict``'s ``summary.json``, the record of the model that made the masks, when the report is asked
    for in the predictions' folder): an earlier report is replaced, anything else never. With ``dataset`` /
    ``predictions``: :func:`refuse_inside` first."""
    refuse_inside(out, dataset, predictions)
    out = Path(out)
    summary, per_image = out / "summary.json", out / "per_image.csv"
    odd = [p for p in (out / n for n in ("summary.json", "per_image.csv", "per_case.csv", "per_category.md"))
           if os.path.lexists(p) and not p.is_file()]
    odir = out / "overlays"
    if odir.is_dir():  # the earlier overlays are removed before the new ones move in: one that cannot be replaced
        odd += [p for p in sorted(odir.iterdir()) if _OVERLAY_RE.match(p.name) and not p.is_file()]
    if odd:  # a folder, a named pipe, a link to nothing: not an earlier report's file
        raise UsageError(f"{odd[0]} is not a regular file, and the report writes one there; write the report into "
                         "another folder")
    if summary.is_file():
        if not is_json_with(summary, {"n_images", "per_category"}):
            what = ("hemseg predict's summary.json (the record of the model that made the masks)"
                    if is_json_with(summary, {"inputs"}) else "a summary.json that is not an evaluation report")
            raise UsageError(f"{out} holds {what}, which the report would replace; write the report into another "
                             "folder")
    if per_image.is_file():
        head = read_regular_bytes(per_image, 4096).decode("utf-8", errors="replace").split("\n", 1)[0]
        if not head.startswith("stem,category"):
            raise UsageError(f"{per_image} is not an evaluation report's per_image.csv, which the report would "
                             "replace; write the report into another folder")
    if not summary.is_file():  # no earlier report here: none of the report's other names may be taken
        taken = [n for n in ("per_case.csv", "per_category.md") if (out / n).exists()]
        if taken:
            raise UsageError(f"{out} holds {', '.join(taken)} but no evaluation summary.json: not an earlier "
                             "report's, which the report would replace; write the report into another folder")


def write_eval_report(out_dir: str | Path, records: Iterable[EvalRecord | Mapping], extra: Mapping | None = None, *,
                      predictor: str = "the model predicts",
                      n_overlays: int = 4, overlay_loader: OverlayLoader | None = None) -> dict:
    """Write the report described in the module docstring into ``out_dir``; returns the summary as written.

    ``records`` are :class:`EvalRecord` or dicts with the same fields (``image_u8`` is accepted for ``image``).
    ``overlay_loader(record) -> (image_u8, gt, pred)`` supplies arrays for records that carry none, so callers need
    not keep every image in memory; it is called only for the overlays drawn.
    """
    recs = [_as_record(r) for r in records]
    summary = summarize(recs, predictor)
    extra = dict(extra or {})
    summary["warnings"] = list(summary["warnings"]) + list(extra.pop("warnings", []))  # the caller's, e.g. inputs
    clash = sorted(set(extra) & (set(summary) | {"overlays"}))
    if clash:
        raise UsageError(f"extra report keys {clash} would overwrite computed metrics")
    try:
        json.dumps(json_safe(extra), allow_nan=False)
    except TypeError as exc:
        raise UsageError(f"report extra info is not JSON-serializable: {exc}") from None
    out = Path(out_dir)
    check_report_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"{out}: cannot create the report folder (a file is in the way)") from None
    # every file is written into a staging folder first and moved into place once all are written: a report that
    # fails part-way (a full disk) leaves the earlier report whole, not a mix of two runs
    with staging_folder(out, ".report-") as stage, final_names(stage, out):
        summary["overlays"] = _write_overlays(stage, recs, int(n_overlays), overlay_loader)
        summary.update(extra)
        summary = json_safe(summary)
        atomic_write_bytes(stage / "per_image.csv", _per_image_csv(recs).encode())
        atomic_write_bytes(stage / "per_category.md", _per_category_md(summary).encode())
        if "per_case" in summary:
            atomic_write_bytes(stage / "per_case.csv", _per_case_csv(summary).encode())
        write_json(stage / "summary.json", summary)
        with signals_held():  # a Ctrl-C between two renames left new overlays beside the earlier summary
            _publish(stage, out)
    for warning in summary.get("warnings", []):
        log.warning("%s", warning)
    log.info("evaluation report of %d image(s) in %s (pooled Dice %s, mean Dice per image %s)", len(recs), out,
             _md_num(summary.get("dice_global"), 4), _md_num(summary.get("dice"), 4))
    return summary
