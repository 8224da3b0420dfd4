"""The classical baseline: K-Means intensity clustering (numpy + OpenCV only, no torch).

Per 2D image:

1. the shared preprocessing chain up to the filters, :func:`hemseg.runtime.preprocess.filter_uint8` (resize to
   ``spec.size``, CLAHE, NLM, bilateral, each switchable through the spec);
2. ``cv2.kmeans`` on the pixel intensities with ``k`` clusters (k-means++ seeding, 3 attempts, at most 100
   iterations or a centre shift below 0.2 grey levels), seeded with ``cv2.setRNGSeed(seed)`` so a run is repeatable
   (this reseeds OpenCV's global RNG of the calling thread);
3. **lesion rule**: the cluster with the brightest centre is the lesion (vertebral hemangiomas are typically
   hyperintense on T1- and T2-weighted images). Bright non-lesion tissue (fat, CSF) lands in that cluster too, which
   is exactly the weakness a learned model must beat. An image with fewer than two distinct grey levels after
   filtering has no contrast to cluster: its mask is empty;
4. optionally the morphological cleaning of :func:`hemseg.runtime.postprocess.clean_mask` (closing, opening,
   small-component removal, hole filling) at ``spec.size`` (the config's ``threshold`` is not used);
5. nearest-neighbour resize back to the original image size.

:func:`evaluate_kmeans` runs it over a dataset and writes two evaluation reports, ``raw`` and ``cleaned``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from hemseg.errors import UsageError
from hemseg.runtime.metrics import compute_metrics, lesion_counts
from hemseg.runtime.postprocess import PostprocessConfig, clean_mask, resize_back
from hemseg.runtime.preprocess import PreprocessSpec, filter_uint8

log = logging.getLogger(__name__)

#: The cleaning of the "cleaned" baseline variant, in px of a 256 px preprocessing size; :func:`evaluate_kmeans`
#: scales it to ``spec.size`` (:meth:`PostprocessConfig.scaled`).
DEFAULT_CLEANING = PostprocessConfig(closing_radius=2, opening_radius=2, min_area=20, fill_holes=True)
K_RANGE = (2, 8)
_CRITERIA = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 100, 0.2)
_ATTEMPTS = 3

#: (the summary keys copied into the top-level DIR/summary.json of :func:`evaluate_kmeans`)
_MEAN_KEYS = ("n_images", "dice", "dice_std", "iou", "iou_std", "precision", "precision_std", "recall",
              "recall_std", "accuracy", "accuracy_std", "specificity", "specificity_std", "hd95", "hd95_std",
              "assd", "assd_std", "dice_global", "ci95", "n_nan", "n_gt_empty", "n_pred_empty", "lesions")


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not K_RANGE[0] <= k <= K_RANGE[1]:
        raise UsageError(f"K-Means needs an integer k in {K_RANGE[0]}..{K_RANGE[1]}, got {k!r}")
    return int(k)


def kmeans_lesion_mask(image_u8: np.ndarray, spec: PreprocessSpec, k: int = 4, *, seed: int = 0) -> np.ndarray:
    """Steps 1-3: the brightest-cluster mask, uint8 ``{0, 1}`` at ``(spec.size, spec.size)``, not cleaned."""
    k = _check_k(k)
    filtered = filter_uint8(image_u8, spec)
    if int(filtered.min()) == int(filtered.max()):
        return np.zeros(filtered.shape, np.uint8)
    samples = filtered.reshape(-1, 1).astype(np.float32)
    cv2.setRNGSeed(int(seed))
    _, labels, centers = cv2.kmeans(samples, k, None, _CRITERIA, _ATTEMPTS, cv2.KMEANS_PP_CENTERS)
    lesion = int(np.argmax(centers.ravel()))
    return (labels.reshape(filtered.shape) == lesion).astype(np.uint8)


def kmeans_segment(image_u8: np.ndarray, spec: PreprocessSpec, k: int = 4,
                   postprocess: PostprocessConfig | None = None, *, seed: int = 0) -> np.ndarray:
    """The baseline's mask of one uint8 ``(H, W)`` image: uint8 ``{0, 1}`` ``(H, W)`` at the original size.

    ``postprocess=None`` is the raw variant; pass a :class:`PostprocessConfig` (e.g. :data:`DEFAULT_CLEANING`) for
    the cleaned one.
    """
    low = kmeans_lesion_mask(image_u8, spec, k, seed=seed)
    if postprocess is not None:
        low = clean_mask(low, postprocess)
    return resize_back(low, image_u8.shape)


def _check_report_folders(out: Path) -> None:
    """UsageError unless ``out/raw`` and ``out/cleaned`` can take the two reports: absent, or earlier K-Means
    reports. Another evaluation's report there (``hemseg eval -o OUT/raw``) was replaced without a word."""
    from hemseg.runtime.io.writers import is_json_with
    from hemseg.train.eval_report import check_report_folder

    for name in ("raw", "cleaned"):
        folder = out / name
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{folder}: a file is in the way of the {name} report folder; move it or choose "
                             "another --out")
        check_report_folder(folder)
        summary = folder / "summary.json"
        if summary.is_file() and not is_json_with(summary, {"baseline"}):
            raise UsageError(f"{folder} holds another evaluation's report (its summary.json is not a K-Means "
                             "baseline's), which this run would replace; choose another --out or move it")


def evaluate_kmeans(data: str | Path, out_dir: str | Path, *, spec: PreprocessSpec, k: int = 4,
                    labels: Sequence[int] | None = None, cleaning: PostprocessConfig = DEFAULT_CLEANING,
                    seed: int = 0, n_overlays: int = 4) -> dict:
    """Evaluate the raw and the cleaned baseline on every image/mask pair of ``data``.

    Writes ``out_dir/raw/`` and ``out_dir/cleaned/`` (each a full :func:`write_eval_report` report) and
    ``out_dir/summary.json`` = ``{"raw": means, "cleaned": means, "config": ...}``; returns that dict. ``cleaning``
    is in px of a 256 px image and is scaled to ``spec.size``; the config records the scaled one. Volumes are
    evaluated slice by slice, each slice a record named as ``hemseg eval`` names it (``<stem>_s<iii>``) with its
    sample's case, so the bootstrap resamples cases and ``hemseg eval-compare`` pairs it with a model's report. Metrics are computed at the original
    image size, in pixels, plus ``hd95_mm``/``assd_mm`` for images whose file records a pixel spacing. A dataset
    with layout problems (see ``hemseg data check``) is refused with :class:`DatasetError` rather than evaluated on
    the pairs that happen to be usable.
    """
    from hemseg.runtime.dataset import load_pair, load_pair_spacing, usable_index, warn_label_maps
    from hemseg.runtime.io.writers import is_json_with, refuse_replacing
    from hemseg.train.eval_report import EvalRecord, json_safe, refuse_inside, write_eval_report, write_json
    from hemseg.train.evaluate import slice_stem

    k = _check_k(k)
    # never another tool's summary.json (hemseg predict's record of the masks in its -o folder), before any work
    refuse_inside(out_dir, dataset=data)
    refuse_replacing(Path(out_dir) / "summary.json", "--out", lambda p: is_json_with(p, {"raw", "cleaned", "config"}),
                     "K-Means baseline summary")
    _check_report_folders(Path(out_dir))
    labels = list(labels) if labels else None
    cleaning = cleaning.scaled(spec.size)
    index = usable_index(data, "evaluate")
    warn_label_maps(data, index.samples, labels, require_labels=True)  # a --label no mask holds: every Dice 0
    # id(record) -> (sample, slice index, packed prediction), so overlays show exactly the mask that was measured
    where: dict[int, tuple[object, int, np.ndarray]] = {}
    raw_records: list[EvalRecord] = []
    clean_records: list[EvalRecord] = []
    start = time.perf_counter()
    for sample in index.samples:
        images, masks, spacing = load_pair_spacing(sample, labels=labels)
        n = images.shape[0]
        for z in range(n):
            stem = slice_stem(sample.stem, z, n)
            low = kmeans_lesion_mask(images[z], spec, k, seed=seed)
            shape = images[z].shape
            raw = resize_back(low, shape)
            cleaned = resize_back(clean_mask(low, cleaning), shape)
            for records, pred in ((raw_records, raw), (clean_records, cleaned)):
                records.append(EvalRecord(stem, sample.category, {**compute_metrics(pred, masks[z], spacing),
                                                                    **lesion_counts(pred, masks[z])},
                                          case=sample.case_id))
                where[id(records[-1])] = (sample, z, np.packbits(pred))
        log.debug("k-means baseline: %s (%d slice(s))", sample.stem, n)
    seconds = time.perf_counter() - start

    def overlay_loader(rec: EvalRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sample, z, packed = where[id(rec)]
        images, masks = load_pair(sample, labels=labels)
        shape = images[z].shape
        return images[z], masks[z], np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape)

    config = {"method": "kmeans", "k": k, "seed": seed, "lesion_rule": "brightest cluster",
              "preprocess": spec.to_dict(), "labels": labels, "data": str(Path(data).resolve()),
              "n_pairs": len(index.samples), "n_slices": len(raw_records), "seconds": seconds,
              "slices_per_s": len(raw_records) / max(seconds, 1e-9)}
    out = Path(out_dir)
    result: dict = {}
    # the three outputs are one result: each report folder is checked before either is written (and before any
    # work), and the summary of an earlier run goes first and the new one comes last, so a run stopped between the
    # two reports leaves no summary.json describing a raw/ of another run
    _check_report_folders(out)
    (out / "summary.json").unlink(missing_ok=True)
    for name, records, post in (("raw", raw_records, None), ("cleaned", clean_records, cleaning)):
        extra = {"baseline": {**config, "variant": name, "postprocess": post.to_dict() if post else None}}
        summary = write_eval_report(out / name, records, extra, n_overlays=n_overlays,
                                    overlay_loader=overlay_loader, predictor=f"the K-Means baseline ({name}) predicts")
        result[name] = {key: summary[key] for key in _MEAN_KEYS if key in summary}
    result["config"] = {**config, "cleaning": cleaning.to_dict()}
    write_json(out / "summary.json", result)
    return json_safe(result)
