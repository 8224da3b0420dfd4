"""``hemseg eval``: evaluate a checkpoint, or an exported model, on a dataset at each image's native resolution.

For every slice of every sample of ``data`` (:func:`hemseg.runtime.dataset.discover` / ``load_pair``), the
runtime's one inference pipeline (:func:`hemseg.runtime.pipeline.run_batch`, the same function ``hemseg predict``,
the bench and the export's gates run) with the model as its Runner: for a checkpoint the PyTorch model
(:class:`hemseg.train.torch_runner.TorchRunner`, float32, eval mode, :func:`evaluate_checkpoint`); for an exported
model (``.onnx`` FP32/FP16/INT8, OpenVINO IR, TensorRT ``.plan`` or an export folder) the runtime backend that
``hemseg predict`` would use (:func:`evaluate_model`; no torch needed), so the engine that ships is scored against
the reference masks, not only against the FP32 model:

1. :func:`hemseg.runtime.preprocess.preprocess` with the checkpoint's own preprocessing spec;
2. the network -> logits;
3. :func:`hemseg.runtime.postprocess.postprocess` on the logits resampled (bilinear) to the slice's original size,
   with the checkpoint's tuned threshold (``config["threshold"]``, applied in the logit domain) and, with
   ``postprocess=True``, the morphological cleanup :data:`CLEANUP` scaled to that size;
4. :func:`hemseg.runtime.metrics.compute_metrics` against the ground-truth mask at that size, with the image's
   pixel spacing where its file records one (NIfTI, DICOM): then ``hd95_mm``/``assd_mm`` too; and
   :func:`hemseg.runtime.metrics.lesion_counts` (connected components) for the report's ``lesions`` block.

The report (:func:`hemseg.train.eval_report.write_eval_report`) goes into ``out``: ``summary.json`` (means,
per-category block, plus the checkpoint, threshold, post-processing, device and timing), ``per_image.csv``,
``per_category.md`` and ``overlays/`` of the best and worst slices. Slices of a volume are reported as
``<stem>_s<k>`` (see :class:`hemseg.train.slices.SliceItem`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hemseg.errors import NonFiniteLogits
from hemseg.progress import shown
from hemseg.runtime.backends.base import Runner
from hemseg.runtime.backends.ensemble import EnsembleRunner, check_distinct, check_members, ensemble_threshold
from hemseg.runtime.backends.tta import FlipTTARunner
from hemseg.runtime.io.images import PREDICT_MASK_SUFFIXES
from hemseg.runtime.metrics import compute_metrics, lesion_counts
from hemseg.runtime.pipeline import Pipeline
from hemseg.runtime.postprocess import PostprocessConfig
from hemseg.runtime.preprocess import PreprocessSpec
from hemseg.train.eval_report import EvalRecord, check_report_folder, refuse_inside, write_eval_report

log = logging.getLogger(__name__)

#: The cleanup of ``--postprocess`` (after the threshold, on the scores resampled to each image's size): closing and
#: opening with elliptical kernels of radius 2 px, removal of components under 20 px, hole filling, in px of a 256 px
#: image (scaled to the checkpoint's image size with :meth:`PostprocessConfig.scaled`, then to each image's). The
#: sizes of the K-Means baseline's cleaning (:data:`hemseg.train.kmeans.DEFAULT_CLEANING`), which applies them at the
#: preprocessing size before enlarging its mask.
CLEANUP = PostprocessConfig(closing_radius=2, opening_radius=2, min_area=20, fill_holes=True)


def slice_stem(stem: str, i: int, n: int) -> str:
    """The record name of slice ``i`` of a sample of ``n`` slices: the stem itself, or ``<stem>_s<iii>`` (every
    evaluation's per_image.csv, so that reports of one dataset pair up in eval-compare)."""
    return stem if n == 1 else f"{stem}_s{i:03d}"


def _slice_records(sample, preds, gt: np.ndarray, spacing) -> list[EvalRecord]:
    """One record per slice of ``sample``: the metrics and lesion counts of ``preds[i]`` against ``gt[i]``."""
    n = len(gt)
    return [EvalRecord(stem=slice_stem(sample.stem, i, n), category=sample.category,
                       metrics={**compute_metrics(preds[i], gt[i], spacing), **lesion_counts(preds[i], gt[i])},
                       case=sample.case_id)
            for i in range(n)]


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path, out: str | Path,
                        labels: Sequence[int] | None = None, postprocess: bool = False, device: str = "cpu",
                        batch_size: int = 8, progress: bool = True, n_overlays: int = 4,
                        tta: bool = False, ensemble_with: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on the dataset ``data``; write the report into ``out``; return the summary.

    ``labels`` selects mask values counted as lesion (default: the checkpoint's own ``labels``, else any nonzero).
    ``tta``: flip test-time augmentation (:class:`hemseg.runtime.backends.tta.FlipTTARunner` around the model).
    ``ensemble_with``: further checkpoints (same preprocessing) averaged with ``checkpoint``
    (:class:`hemseg.runtime.backends.ensemble.EnsembleRunner`, at the mean of their thresholds).
    """
    from hemseg.train.checkpoint import load_checkpoint_hashed, spec_of, untuned_threshold_note
    from hemseg.train.device import describe, resolve_device
    from hemseg.train.torch_runner import TorchRunner

    checkpoint = Path(checkpoint)
    model, config, digest = load_checkpoint_hashed(checkpoint)  # the hash of the bytes the weights came from
    dev = resolve_device(device)
    spec = spec_of(config)
    threshold = float(config["threshold"])
    runner: Runner = TorchRunner(model, device=str(dev))
    members = [Path(p) for p in ensemble_with]
    loaded = [load_checkpoint_hashed(p) for p in members]
    if members:
        # by the weights (a checkpoint saved again with another key, or a last.pt beside its best.pt, is the same model)
        check_distinct([str(checkpoint)] + [str(p) for p in members],
                       [weights_digest(model)] + [weights_digest(m) for m, _, _ in loaded])
        check_members([str(checkpoint)] + [str(p) for p in members], [spec] + [spec_of(c) for _, c, _ in loaded])
        threshold = ensemble_threshold([threshold] + [float(c["threshold"]) for _, c, _ in loaded])
        runner = EnsembleRunner([runner] + [TorchRunner(m, device=str(dev)) for m, _, _ in loaded])
    about = {"checkpoint": str(checkpoint.resolve()), "checkpoint_sha256": digest,
             "model": config["model"], "model_kwargs": config.get("model_kwargs", {}),
             "ensemble_with": [{"checkpoint": str(p.resolve()), "checkpoint_sha256": d}
                               for p, (_, _, d) in zip(members, loaded)],
             "device": describe(dev)}
    configs = [config, *(c for _, c, _ in loaded)]
    untuned = [note for p, c in zip([checkpoint, *members], configs)
               if (note := untuned_threshold_note(p, c))]  # the report logs its warnings
    return _evaluate(runner, spec, threshold, list(labels) if labels else config.get("labels"), data, out, about,
                     postprocess=postprocess, tta=tta, batch_size=batch_size, progress=progress,
                     n_overlays=n_overlays, what=checkpoint,
                     trained=TrainedOn.of([checkpoint, *members], [c.get("data_fingerprint") for c in configs],
                                          [c.get("pixel_digests") for c in configs]),
                     label_option="--label" if labels else CHECKPOINT_LABELS, model_warnings=untuned)


@dataclasses.dataclass(frozen=True)
class TrainedOn:
    """What the evaluated model (every member of an ensemble: scored on any member's training images, the numbers
    are optimistic) records of its training data: the datasets' ``fingerprints``, the pixel digests of the
    training and validation slices (``slices``), and the models that record no digests (``unrecorded``: made by an
    earlier hemseg; what the others record is then a lower bound)."""

    #: (model, fingerprint of its training data) of each member that records one
    trained_by: tuple[tuple[str, str], ...]
    slices: frozenset[str]
    unrecorded: tuple[str, ...]

    @classmethod
    def of(cls, models: Sequence, fingerprints: Sequence, digests: Sequence) -> "TrainedOn":
        return cls(tuple((str(m), str(f)) for m, f in zip(models, fingerprints) if f),
                   frozenset(str(d) for ds in digests for d in ds or ()),
                   tuple(str(m) for m, ds in zip(models, digests) if not ds))

    @property
    def fingerprints(self) -> frozenset[str]:
        """The fingerprints of the members' training datasets."""
        return frozenset(f for _, f in self.trained_by)

    def models_of(self, fingerprint: str) -> list[str]:
        """The members trained on the dataset of ``fingerprint`` (the warning named the ensemble's first model only:
        a QA finding of stop 55)."""
        return [m for m, f in self.trained_by if f == fingerprint]

    @property
    def exact(self) -> bool:
        """Whether a model records the exact-value digests of stop 51 (no kind prefix: compared as such; a copy
        with its values rescaled is not told by them)."""
        from hemseg.runtime.dataset import PIXEL_DIGEST_KIND

        return any(not d.startswith(PIXEL_DIGEST_KIND) for d in self.slices)


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to the dataset folder ``root`` where it lies under it, else as it is."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _seen_text(seen: list, n: int, unrecorded: Sequence[str] = ()) -> str:
    lower = f"at least {len(seen)}" if unrecorded else f"{len(seen)}"
    unknown = f" ({', '.join(unrecorded)} record{'s' if len(unrecorded) == 1 else ''} none)" if unrecorded else ""
    return (f"{lower} of the {n} images are, by their pixels, images the model was trained or validated on (e.g. "
            f"{seen[0].image}; summary.json's training_images lists them){unknown}: their numbers are optimistic, "
            "not a held-out evaluation")


def weights_digest(model) -> str:
    """SHA-256 of a network's parameters and buffers (names and values), whatever file they came from."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu()
        h.update(name.encode() + b"\0" + str(t.dtype).encode() + b"\0" + str(tuple(t.shape)).encode())
        h.update((t.float() if t.is_floating_point() else t).contiguous().numpy().tobytes())
    return h.hexdigest()


def _loaded_sha256(path: str | Path, before: dict) -> str:
    """SHA-256 of a model file just loaded, if it is the version that was there before it was loaded
    (``before``: :func:`hemseg.runtime.io.hashing.versions_under` the model paths); ModelError when it was replaced
    meanwhile (the report would name a file that is not the model scored)."""
    from hemseg.errors import ModelError
    from hemseg.runtime.io.hashing import sha256_of_version

    version = before.get(str(Path(path).absolute()))
    digest = sha256_of_version(path, version) if version is not None else None
    if digest is None:
        raise ModelError(path, "was replaced while it was read (an export into its folder?); run again")
    return digest


def evaluate_model(model: str | Path, data: str | Path, out: str | Path, labels: Sequence[int] | None = None,
                   postprocess: bool = False, backend: str = "auto", device: int = 0, batch_size: int = 8,
                   progress: bool = True, n_overlays: int = 4, tta: bool = False,
                   ensemble_with: Sequence[str | Path] = ()) -> dict[str, Any]:
    """:func:`evaluate_checkpoint` for an exported model (what ``hemseg predict`` takes: ``.onnx``, OpenVINO
    ``.xml``, TensorRT ``.plan`` or an export folder), run by the runtime backend ``backend`` (``auto`` chooses as
    ``hemseg predict`` does) with the model's own preprocessing, threshold and labels from its metadata."""
    from hemseg.runtime.backends.ensemble import open_ensemble
    from hemseg.runtime.io.hashing import versions_under
    from hemseg.runtime.verification import threshold_notes, with_verification

    before = versions_under([model, *ensemble_with])
    loaded = open_ensemble(model, ensemble_with, backend, device)
    try:
        # warned of as by hemseg predict: a --no-verify export, a changed file, gates that do not cover this run
        loaded = with_verification(loaded)
        meta = loaded.metadata
        metas = loaded.member_metadata or (meta,)  # each model's own record of its training data
        about = {"model_file": str(Path(loaded.path).resolve()),
                 "model_file_sha256": _loaded_sha256(loaded.path, before),
                 "checkpoint_sha256": meta.checkpoint_sha256, "model": meta.model, "model_precision": meta.precision,
                 "backend": loaded.backend, "backend_reason": loaded.reason,
                 "export_verification": loaded.verification[0] if loaded.verification else None,
                 "export_verification_gap": loaded.verification_gaps[0] if loaded.verification_gaps else None,
                 "ensemble_with": [{"model_file": str(Path(p).resolve()), "model_file_sha256": _loaded_sha256(p, before)}
                                   for p in loaded.members],
                 "device": loaded.backend}
        return _evaluate(loaded.runner, meta.preprocess, float(meta.threshold),
                         list(labels) if labels else (list(meta.labels) if meta.labels else None), data, out, about,
                         postprocess=postprocess, tta=tta, batch_size=batch_size, progress=progress,
                         n_overlays=n_overlays, what=Path(model),
                         trained=TrainedOn.of([loaded.path, *loaded.members],
                                              [m.data_fingerprint for m in metas], [m.pixel_digests for m in metas]),
                         label_option="--label" if labels else CHECKPOINT_LABELS,
                         model_warnings=threshold_notes(loaded))
    finally:
        loaded.runner.close()


def _evaluate(runner: Runner, spec: PreprocessSpec, threshold: float, labels: list[int] | None, data: str | Path,
              out: str | Path, about: dict[str, Any], postprocess: bool, tta: bool, batch_size: int, progress: bool,
              n_overlays: int, what: Path, trained: TrainedOn, label_option: str = "--label",
              model_warnings: Sequence[str] = ()) -> dict[str, Any]:
    """The evaluation itself, for any Runner: ``about`` (what was evaluated, on which device) goes into the
    summary; ``trained`` is what the model (or every member) records of its training data; ``model_warnings`` (an
    untuned threshold) lead the report's warnings, which it logs."""
    from tqdm.auto import tqdm

    from hemseg.runtime.dataset import (
        dataset_fingerprint,
        file_versions,
        left_out_warnings,
        load_pair,
        load_pair_digests,
        load_pair_spacing,
        usable_index,
        warn_label_maps,
    )

    data = Path(data)
    check_report_folder(out, dataset=data)  # before any work
    pp = (CLEANUP.scaled(spec.size) if postprocess else PostprocessConfig()).replace(threshold=threshold)
    if tta:
        runner = FlipTTARunner(runner)
    pipeline = Pipeline(runner, spec, pp, batch_size=batch_size)

    index = usable_index(data, "evaluate")
    label_warnings = warn_label_maps(data, index.samples, labels, require_labels=True, option=label_option,
                                     logged=False)  # the report logs its warnings
    versions = file_versions([p for s in index.samples for p in (s.image, s.mask)])
    fingerprint = dataset_fingerprint(index)
    same_data = fingerprint in trained.fingerprints if trained.fingerprints else None  # None: not known
    trainers = trained.models_of(fingerprint)  # the members whose training data it is, named in the warning
    if trained.unrecorded:
        log.info("%s record%s no pixel digests of %s training images (made by an earlier hemseg): training images "
                 "among %s cannot all be told", ", ".join(trained.unrecorded),
                 "s" if len(trained.unrecorded) == 1 else "", "its" if len(trained.unrecorded) == 1 else "their", data)
    seen = []  # the samples with a slice the model trained or validated on
    records: list[EvalRecord] = []
    where: dict[int, tuple[Any, int, np.ndarray, tuple[int, int]]] = {}
    seconds = {"preprocess": 0.0, "infer": 0.0, "postprocess": 0.0, "metrics": 0.0}
    start = time.perf_counter()
    notes: list[str] = []  # what the readers say of the images' layout or geometry: in the report's warnings
    for sample in tqdm(index.samples, desc="eval", unit="image", disable=not shown(progress), leave=False):
        if trained.slices:  # (the slices' digests only where the model records some: ~4 ms a 512 px slice)
            image, gt, spacing, digests = load_pair_digests(sample, labels=labels, notes=notes,
                                                            exact=trained.exact)
            if any(d in trained.slices for d in digests if d):
                seen.append(sample)
        else:
            image, gt, spacing = load_pair_spacing(sample, labels=labels, notes=notes)
        n = image.shape[0]
        try:
            result = pipeline.run_all([image[i] for i in range(n)])
        except NonFiniteLogits as exc:  # which image: the model alone was named (a QA finding of stop 54)
            raise NonFiniteLogits(exc.path, f"{exc.reason}; on the image {sample.image}") from None
        preds = result.masks
        t3 = time.perf_counter()
        for i, record in enumerate(_slice_records(sample, preds, gt, spacing)):
            records.append(record)
            where[id(record)] = (sample, i, np.packbits(preds[i]), preds[i].shape)  # stems may repeat across categories
        seconds["preprocess"] += result.stages["preprocess"] / 1000.0
        seconds["infer"] += sum(result.stages[k] for k in ("copy_in", "infer", "copy_out")) / 1000.0
        seconds["postprocess"] += result.stages["postprocess"] / 1000.0
        seconds["metrics"] += time.perf_counter() - t3
    total = time.perf_counter() - start
    _refuse_changed(data, versions)

    def overlay_loader(record: EvalRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sample, i, packed, shape = where[id(record)]
        image, gt = load_pair(sample, labels=labels, notes=[])  # its notes are in the report already
        pred = np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape)
        return image[i], gt[i], pred

    extra = {
        **about, "image_size": spec.size,
        "threshold": threshold, "postprocess": pp.to_dict() if postprocess else None,
        "tta": "flip" if tta else None,
        "labels": list(labels) if labels else None, "data": str(data.resolve()), "n_samples": len(index.samples),
        "resolution": "native", "seconds": total,
        "seconds_by_stage": seconds, "slices_per_s": len(records) / max(total, 1e-9),
        "data_fingerprint": fingerprint, "same_data_as_training": same_data,
        "training_images_in_data": None if trained.unrecorded else len(seen),
        # which they are, so that they can be left out (only one was named: a QA finding of stop 52)
        "training_images": [_relative(s.image, data) for s in seen],
        # (on the training folder itself one warning says it; the count stays in training_images_in_data)
        "warnings": list(model_warnings) + label_warnings + left_out_warnings(data, index) + list(dict.fromkeys(notes)) + (
            [f"{data} is the dataset {' and '.join(trainers) or what} {'were' if len(trainers) > 1 else 'was'} "
             "trained on (training and validation images together): optimistic "
             "numbers, not a held-out evaluation"] if same_data else
            [_seen_text(seen, len(index.samples), trained.unrecorded)] if seen else []),
    }
    summary = write_eval_report(out, records, extra, n_overlays=n_overlays, overlay_loader=overlay_loader)
    log.info("evaluated %d slice(s) of %d sample(s): mean Dice %.4f -> %s", len(records), len(index.samples),
             summary.get("dice") if summary.get("dice") is not None else float("nan"), Path(out) / "summary.json")
    return summary


#: How a prediction file may be named for the sample ``<stem>``: as the reference mask, or as hemseg predict names it.
PREDICTION_SUFFIXES = ("", *PREDICT_MASK_SUFFIXES)


def find_prediction(folder: Path, stem: str, stems: frozenset[str] | set[str] = frozenset()) -> Path | None:
    """The prediction for sample ``stem`` in ``folder``: ``<stem>[_mask|_seg|_rtstruct].<ext>``, else under the
    file-name-safe stem ``hemseg predict`` writes (``case é 1`` -> ``case_e_1``, long stems cut) unless that is
    another sample's stem (``stems``: every sample's); InputError when several files claim it. A file named after
    another sample exactly (``t2_seg.png`` of sample ``t2_seg``) is that sample's, not ``t2``'s."""
    from hemseg.errors import InputError
    from hemseg.runtime.io.sniff import stem_of
    from hemseg.runtime.predict import safe_stem

    # every entry but folders: a pipe or device named as a prediction is that sample's, refused when it is read
    # (reported as "no prediction" it sent users looking for a file that is there)
    files = [p for p in sorted(folder.iterdir()) if not p.is_dir() and not p.name.startswith(".")
             and not p.name.endswith("_overlay.png")]
    found: list[Path] = []
    safe = safe_stem(stem)
    for candidate in (stem, safe) if safe != stem and safe not in stems else (stem,):
        names = {candidate + suffix for suffix in PREDICTION_SUFFIXES} - (set(stems) - {stem})
        found = [p for p in files if stem_of(p) in names]
        if found:
            break
    if len(found) > 1:
        raise InputError(folder, f"several predictions for {stem}: {', '.join(p.name for p in found)}")
    return found[0] if found else None


def predict_records(folder: Path) -> dict[str, list[tuple[Path, Path]]]:
    """hemseg predict's own record of whose mask each file in ``folder`` is (its ``summary.json``'s
    ``outputs_by_input``): input stem -> [(input path, mask file)]; empty without such a summary. Its file-name-safe
    names cannot always be read back: ``a b.png`` and ``a_b.png`` are written as ``a_b_mask.png`` and
    ``a_b_1_mask.png`` (by name, ``a_b`` was scored against ``a b``'s mask), ``名前.png`` as ``input_mask.png``."""
    import json

    from hemseg.runtime.io.regular import read_regular_text
    from hemseg.runtime.io.sniff import stem_of

    try:
        by_input = json.loads(read_regular_text(folder / "summary.json"))["outputs_by_input"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    out: dict[str, list[tuple[Path, Path]]] = {}
    for source, names in by_input.items() if isinstance(by_input, dict) else ():
        if not isinstance(names, list):
            continue
        masks = [folder / n for n in names if isinstance(n, str) and Path(n).name == n and
                 stem_of(Path(n)).endswith(PREDICT_MASK_SUFFIXES) and (folder / n).is_file()]
        if len(masks) == 1:
            out.setdefault(stem_of(Path(source)), []).append((Path(source), masks[0]))
    return out


def recorded_prediction(records: dict[str, list[tuple[Path, Path]]], sample, folder: Path) -> Path | None:
    """The mask ``records`` (:func:`predict_records`) give for ``sample``: the one of its image's path, else of the
    one input of its stem (predict run on a copy of the images); None when no input of that stem was recorded
    (then names decide). InputError when several inputs of that stem were segmented elsewhere (two runs into one
    folder, the data moved since): which is the sample's cannot be told, and names would pick one at random."""
    from hemseg.errors import InputError
    from hemseg.runtime.io.sniff import stem_of

    image = Path(sample.image).resolve()
    for stem in dict.fromkeys((sample.stem, stem_of(Path(sample.image)))):
        found = records.get(stem, [])
        same = [mask for source, mask in found if source == image]
        if same or len(found) == 1:
            return (same or [found[0][1]])[0]
        if found:
            shown = ", ".join(f"{source} -> {mask.name}" for source, mask in found[:3])
            raise InputError(folder, f"hemseg predict's summary.json here records masks of {len(found)} inputs named "
                                     f"{stem} ({shown}), none of them {sample.image} (the data moved since?): which "
                                     "is this sample's cannot be told; evaluate the images predict read, or keep one "
                                     "run's masks per folder")
    return None


def recorded_for_another(records: dict[str, list[tuple[Path, Path]]], path: Path, sample) -> Path | None:
    """The input that predict's records give ``path`` (a mask found by name for ``sample``) to, when that input is
    not of the sample's name: ``a_b_mask.png`` found for sample ``a_b`` but written for ``a b.png``."""
    from hemseg.runtime.io.sniff import stem_of

    own = {sample.stem, stem_of(Path(sample.image))}
    return next((source for stem, entries in records.items() if stem not in own
                 for source, mask in entries if mask == path), None)


def _by_image_name(folder: Path, sample, stems: frozenset[str] | set[str]) -> Path | None:
    """The prediction ``hemseg predict`` wrote for ``sample`` when its image's name is not its stem: an nnU-Net
    image ``<case>_0000.nii.gz`` of sample ``<case>`` gives ``<case>_0000_mask.nii.gz``."""
    from hemseg.runtime.io.sniff import stem_of

    image_stem = stem_of(Path(sample.image))
    if image_stem == sample.stem or image_stem in stems:
        return None
    return find_prediction(folder, image_stem, stems)


def _prediction_folder(predictions: Path, category: str, layout: str) -> Path:
    """Where a category's predictions are: for a dataset of category folders (which may share file names; one may
    be named ``all``), ``PREDICTIONS/<category>/`` when that folder exists, else ``PREDICTIONS`` itself (always, for
    the other layouts: their file names are unique, and a sub-folder is not theirs)."""
    sub = predictions / category
    return sub if layout == "category-folders" and sub.is_dir() else predictions


def _unclaimed_files(folder: Path, used: set[Path]) -> list[Path]:
    """The mask-like files of ``folder`` (by name; not predict's overlays and probability maps) not in ``used``."""
    from hemseg.runtime.io.sniff import format_from_name

    return [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".") and p not in used
            and format_from_name(p) is not None and not p.name.endswith(("_overlay.png", "_prob.npy"))]


def _unmatched_predictions(folder: Path, used: set[Path]) -> list[str]:
    """A warning naming the mask-like files of ``folder`` that no sample claimed (nnU-Net's evaluation refuses
    them): predictions of images missing from the dataset, or named so that they pair with nothing."""
    extra = _unclaimed_files(folder, used)
    if not extra:
        return []
    return [f"{folder}: {len(extra)} prediction file(s) match no sample of the dataset and were not scored (e.g. "
            f"{extra[0].name})"]


#: where the labels of an evaluation came from when no --label was given
CHECKPOINT_LABELS = "the model's training labels (its --label)"


def _refuse_changed(folder: Path, versions: dict) -> None:
    """DatasetError when files of ``folder`` read during the evaluation changed meanwhile (:func:`file_versions`):
    a dataset replaced under it (``hemseg data synth``) gave scores of two versions under one fingerprint."""
    from hemseg.errors import DatasetError
    from hemseg.runtime.dataset import changed_files

    changed = changed_files(versions)
    if changed:
        raise DatasetError(f"{folder}: {len(changed)} file(s) changed while they were evaluated (e.g. {changed[0]}: "
                           "replaced, edited or removed); evaluate again when the folder is complete")


def _refuse_predict_at_work(predictions: Path) -> None:
    """UsageError when a ``hemseg predict`` is writing into ``predictions`` or was interrupted there: its journal
    (:data:`hemseg.runtime.predict.JOURNAL`) stands until its summary is written, and the masks are then of two
    runs (an eval-masks of a folder predict was rewriting scored a mix of two models without a word)."""
    from hemseg.errors import UsageError
    from hemseg.runtime.predict import JOURNAL

    if os.path.lexists(predictions / JOURNAL):
        raise UsageError(f"{predictions}: a hemseg predict is writing into this folder, or was interrupted there "
                         f"({JOURNAL} is its journal): its masks may be of two runs. Score them when it has ended, or "
                         "run it again to its end")


def _prediction_label_warnings(predictions: Path, paths: Sequence[Path], pred_labels: Sequence[int] | None
                               ) -> list[str]:
    """What the predictions' values say, as :func:`warn_label_maps` says of the references. With ``pred_labels``: a
    DatasetError when no prediction holds any of them while they hold other values (every prediction would be empty
    and Dice 0, as for a --label typo), a warning when a prediction holds fractions. Without: a warning when
    predictions hold more than one nonzero value (a soft probability map saved as 0-255, a label map of several
    structures), every one of which counts as lesion."""
    from hemseg.errors import DatasetError
    from hemseg.runtime.dataset import format_values, fractional_label_warning, label_map_advice, other_label_warning
    from hemseg.runtime.io.images import mask_label_values

    values = [(path, mask_label_values(path)) for path in paths]
    if pred_labels:
        present = {float(v) for _, held in values for v in held}
        if present and not present & {float(v) for v in pred_labels}:
            raise DatasetError(f"{predictions}: no prediction holds --pred-label {', '.join(map(str, pred_labels))}; "
                               f"the predictions hold {format_values(sorted(present))}")
        said = [f"{predictions}: {path.name} {w}" for path, held in values
                if (w := fractional_label_warning(held, pred_labels, "--pred-label"))]
        other = other_label_warning(values, pred_labels, "--pred-label")
        return said[:1] + ([f"{predictions}: {other}"] if other else [])
    found = [(path, held) for path, held in values if len(held) > 1]
    if not found:
        return []
    path, held = found[0]
    return [f"{predictions}: {len(found)} of {len(paths)} prediction(s) hold more than one nonzero value (e.g. "
            f"{path.name}: {format_values(held)}); every nonzero value counts as lesion: "
            f"{label_map_advice(held, '--pred-label')}"]


def evaluate_masks(predictions: str | Path, data: str | Path, out: str | Path, labels: Sequence[int] | None = None,
                   pred_labels: Sequence[int] | None = None, progress: bool = True,
                   n_overlays: int = 4) -> dict[str, Any]:
    """Score masks that already exist (another tool's, a second reader's, an earlier ``hemseg predict``) against the
    references of ``data``, with the same metrics and report as :func:`evaluate_checkpoint` (nnU-Net's
    ``evaluate_folder``). Each sample's prediction is the mask hemseg predict's ``summary.json`` there records for
    its image (:func:`predict_records`), else found by stem (:func:`find_prediction`), and read like a
    reference mask of the sample's image (any mask format; NIfTI onto the image's grid by geometry; a DICOM SEG or
    RTSTRUCT by its references). A sample without a prediction is an error naming it, never a silent skip."""

    from tqdm.auto import tqdm

    from hemseg.errors import InputError
    from hemseg.runtime.dataset import (
        DEFAULT_CATEGORY,
        file_versions,
        left_out_warnings,
        load_pair_and_prediction,
        usable_index,
        warn_label_maps,
    )

    predictions, data = Path(predictions), Path(data)
    if not predictions.is_dir():
        raise InputError(predictions, "predictions must be a folder of mask files")
    _refuse_predict_at_work(predictions)
    check_report_folder(out, dataset=data, predictions=predictions)  # before any work
    index = usable_index(data, "evaluate")
    label_warnings = warn_label_maps(data, index.samples, labels, require_labels=True,
                                     logged=False)  # the report logs its warnings
    folders = {s.category: _prediction_folder(predictions, s.category, index.layout) for s in index.samples}
    for folder in sorted(set(folders.values())):  # PRED/<category>/ folders are predict's --out each
        _refuse_predict_at_work(folder)
        refuse_inside(out, predictions=folder)  # the report among one category's masks
    stems = {s.stem for s in index.samples}
    records = {folder: predict_records(folder) for folder in set(folders.values())}
    elsewhere: list[tuple[Path, Path]] = []  # (mask found by name, the input predict wrote it for)

    def prediction_of(sample) -> Path | None:
        folder = folders[sample.category]
        found = recorded_prediction(records[folder], sample, folder)
        if found is not None:
            return found
        found = find_prediction(folder, sample.stem, stems) or _by_image_name(folder, sample, stems)
        owner = recorded_for_another(records[folder], found, sample) if found is not None else None
        if owner is not None:  # another input's mask by predict's own record: not this sample's
            elsewhere.append((found, owner))
            return None
        return found

    pairs = [(s, prediction_of(s)) for s in index.samples]
    claimed: dict[Path, Any] = {}
    for sample, path in pairs:
        if path is not None and claimed.setdefault(path, sample) != sample:
            other = claimed[path]
            if other.stem == sample.stem:  # one file name in two category folders
                raise InputError(path, f"would be scored as the prediction of both {other.category}/{other.stem} "
                                       f"and {sample.category}/{sample.stem} (one file name in two categories); put "
                                       f"each category's predictions in {predictions}/<category>/")
            # file-name-safe stems of two samples may coincide (long stems cut alike)
            stale = (f"; hemseg predict's summary.json in {path.parent} records whose each mask is: if the files were "
                     "renamed since, remove or update it" if records.get(path.parent) else "")
            raise InputError(path, f"claimed as the prediction of both {other.stem} and {sample.stem}, whose "
                                   f"file-name-safe stems coincide; name the predictions after their samples{stale}")
    missing = [s for s, p in pairs if p is None]
    if missing:
        where = folders[missing[0].category]
        names = [s.stem if s.category == DEFAULT_CATEGORY else f"{s.category}/{s.stem}" for s in missing[:3]]
        unclaimed = _unclaimed_files(where, {p for _, p in pairs if p is not None}) if where.is_dir() else []
        near = (f"; {len(unclaimed)} file(s) there pair with no sample (e.g. {', '.join(p.name for p in unclaimed[:3])})"
                if unclaimed else "")
        if elsewhere:
            near += (f"; {elsewhere[0][0].name}, named as this sample's, is by predict's summary.json the mask of "
                     f"{elsewhere[0][1]}")
        raise InputError(where, f"no prediction for {len(missing)} of {len(pairs)} sample(s) (e.g. "
                                f"{', '.join(names)}); expected <stem>[_mask|_seg|_rtstruct].<ext>, or hemseg predict's "
                                f"<image name>_mask.<ext>{near}")
    pred_warnings = _prediction_label_warnings(predictions, [p for _, p in pairs], pred_labels)
    used = {p for _, p in pairs}
    versions = file_versions([p for s, pred in pairs for p in (s.image, s.mask, pred)])
    # PREDICTIONS itself too where the categories' predictions are in its sub-folders: a file beside them is
    # scored for no one
    warnings = label_warnings + pred_warnings + left_out_warnings(data, index) + [
        w for folder in sorted(set(folders.values()) | {predictions}) for w in _unmatched_predictions(folder, used)]
    records: list[EvalRecord] = []
    where: dict[int, tuple] = {}
    start = time.perf_counter()
    notes: list[str] = []  # what the readers say of the images' layout or geometry: in the report's warnings
    for sample, pred_path in tqdm(pairs, desc="eval", unit="image", disable=not shown(progress), leave=False):
        _, gt, pred, spacing = load_pair_and_prediction(sample, pred_path, labels, pred_labels, notes=notes)
        for i, record in enumerate(_slice_records(sample, pred, gt, spacing)):
            records.append(record)
            where[id(record)] = (sample, pred_path, i)
    for folder in sorted(set(folders.values()) | {predictions}):  # one that started while the masks were read
        _refuse_predict_at_work(folder)
    _refuse_changed(data, versions)

    def overlay_loader(record: EvalRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sample, pred_path, i = where[id(record)]
        image, gt, pred, _ = load_pair_and_prediction(sample, pred_path, labels, pred_labels, notes=[])
        return image[i], gt[i], pred[i]

    extra = {"warnings": warnings + list(dict.fromkeys(notes)), "predictions": str(predictions.resolve()),
             "labels": list(labels) if labels else None,
             "prediction_labels": list(pred_labels) if pred_labels else None, "data": str(data.resolve()),
             "n_samples": len(index.samples), "resolution": "native", "seconds": time.perf_counter() - start}
    summary = write_eval_report(out, records, extra, n_overlays=n_overlays, overlay_loader=overlay_loader,
                                predictor="the predicted masks hold")
    log.info("evaluated %d slice(s) of %d sample(s) from %s -> %s", len(records), len(index.samples), predictions,
             Path(out) / "summary.json")
    return summary
