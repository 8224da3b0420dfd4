"""``hemseg train`` as a Python function: :func:`run_training` (one split or k-fold cross-validation).

Layout of a run folder ``RUN``:

- one split (default): ``RUN/best.pt``, ``RUN/last.pt``, ``RUN/history.csv``, ``RUN/metrics.json`` (see
  :mod:`hemseg.train.fit`) and ``RUN/config.json`` (the options, the resolved preprocessing, the split, the data
  fingerprint and the software versions).
- ``folds=K``: ``RUN/fold_<k>/`` (k = 1..K) each with the files above, ``RUN/config.json``, ``RUN/history.csv``
  (all folds, with a leading ``fold`` column) and ``RUN/metrics.json`` with ``folds`` (each fold's metrics), ``mean``
  and ``std`` (population std over folds) of the metrics, and the means again at the top level (``dice``, ``iou``,
  ...) so one-split and k-fold runs read alike.

A ``RUN`` that already holds a run (``config.json``, ``last.pt``, ``best.pt`` or ``metrics.json``) is never
overwritten: training into it needs ``resume=True``, which continues from ``last.pt`` (of each fold, saved at every
validation) up to the run's planned total of steps, or to a new ``--steps`` / ``--epochs``, and refuses when an
option that shapes the result differs from the stored ``config.json`` (model, its options, preprocessing, labels,
seed, split, recipe, batch size, learning rate, loss, crop, EMA, the data fingerprint). The run length, ``device``,
``precision`` and ``workers`` may change on resume (other workers draw other augmentations, a warning says so);
a ``--weights`` other than the run's own is not used (the weights come from ``last.pt``; config.json keeps the
run's start, and the slices its ``--weights`` checkpoint saw stay counted as seen). A resumed run continues the
same schedule, batches and augmentations: stopped at a validation and resumed, it ends with the weights of an
uninterrupted run (CPU, with or without DataLoader workers).

Run length (:func:`run_length`): ``--steps N`` optimizer steps, ``--minutes M`` (planned from a measured step time,
see :mod:`hemseg.train.budget`; with k folds the budget is shared by the folds) or ``--epochs E`` passes over the
training split (``E * ceil(slices / batch)`` steps).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hemseg.errors import DatasetError, HemsegError, UsageError
from hemseg.runtime.dataset import mostly_lesion_warning, sample_ids
from hemseg.runtime.io.lock import folder_lock
from hemseg.runtime.io.regular import read_regular_text
from hemseg.runtime.io.writers import (
    atomic_write_bytes,
    file_in_the_way,
    is_json_with,
    missing_folders,
    remove_empty_folders,
)
from hemseg.runtime.preprocess import OPTIONAL_STEPS, PreprocessSpec
from hemseg.train.eval_report import refuse_inside, write_json

log = logging.getLogger(__name__)

#: Metrics averaged over folds (mean and std) in a k-fold ``metrics.json``.
FOLD_KEYS = ("dice", "dice_global", "iou", "precision", "recall", "accuracy", "val_loss", "threshold",
             "val_dice_tuned", "epoch", "step")
#: Config entries that must match to resume a run.
RESUME_KEYS = ("model", "model_kwargs", "preprocess", "labels", "seed", "val_fraction", "folds", "batch_size", "lr",
               "pos_weight", "dice_loss", "augment", "data_fingerprint", "n_samples", "recipe", "crop", "patch", "ema",
               "val_every", "splits")
#: the option that sets a RESUME_KEYS entry, named in the --resume refusal (it named config keys: 'preprocess.size',
#: 'model_kwargs.base', where the user types --image-size, --unet-base; a QA finding of stop 54)
OPTION_OF = {"model": "--model", "model_kwargs.base": "--unet-base", "preprocess.size": "--image-size",
             "labels": "--label", "seed": "--seed", "val_fraction": "--val-fraction", "folds": "--folds",
             "batch_size": "--batch-size", "lr": "--lr", "pos_weight": "--pos-weight", "dice_loss": "--dice-loss",
             "recipe.name": "--recipe", "recipe.aux_weight": "--aux-loss", "recipe.dice": "--dice", "crop": "--crop",
             "patch": "--patch", "ema": "--ema", "val_every": "--val-every",
             "data_fingerprint": "the data", "n_samples": "the data", "augment": "--no-augment",
             "recipe.lr": "--lr", "recipe.batch_size": "--batch-size", "recipe.augment.fov": "--fov",
             "recipe.augment.fov_shape": "--fov-shape", "recipe.augment.remap": "--intensity-remap",
             "recipe.augment.gin": "--gin", "recipe.augment.invert": "--invert", "recipe.augment.lowres": "--lowres",
             "splits": "--splits, or the split --seed / --val-fraction / --folds draw"}
#: options of every key under a prefix (the filter chain's steps)
OPTION_UNDER = {"preprocess.": "--no-preprocess / --skip"}
#: default run length of the hemseg recipe when none of --steps / --minutes / --epochs is given
DEFAULT_CPU_MINUTES = 10.0
DEFAULT_CUDA_STEPS = 3000
PAPER_EPOCHS = 20
RUN_MARKERS = ("config.json", "last.pt", "best.pt", "metrics.json", "history.csv")


@dataclass(frozen=True)
class TrainOptions:
    """The options of ``hemseg train`` (same names, same defaults). See ``hemseg train --help``."""

    model: str = "fcn_resnet50"
    recipe: str = "hemseg"
    epochs: int | None = None
    steps: int | None = None
    minutes: float | None = None
    batch_size: int | None = None
    image_size: int = 256
    lr: float | None = None
    precision: str = "auto"
    crop: float = 0.0
    intensity_remap: float | None = None
    invert: float | None = None
    lowres: float | None = None
    gin: float | None = None
    fov: float | None = None
    fov_shape: str | None = None
    aux_loss: float | None = None
    zero_init_residual: bool | None = None
    patch: int | str | None = "auto"
    ema: bool = False
    ema_decay: float = 0.99
    val_every: int | None = None
    val_fraction: float = 0.2
    folds: int | None = None
    splits: str | None = None
    labels: tuple[int, ...] | None = None
    no_preprocess: bool = False
    skip: tuple[str, ...] = ()
    weights: str = "auto"
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    pos_weight: float | None = None
    dice_loss: bool = False
    dice: str | None = None
    workers: int = 0
    unet_base: int = 64
    augment: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        from hemseg.train.device import PRECISIONS
        from hemseg.train.models import MODEL_NAMES
        from hemseg.train.recipes import RECIPES

        if self.model not in MODEL_NAMES:
            raise UsageError(f"unknown model {self.model!r}; choose from {', '.join(MODEL_NAMES)}")
        if self.recipe not in RECIPES:
            raise UsageError(f"unknown recipe {self.recipe!r}; choose from {', '.join(RECIPES)}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")
        for name, low in (("epochs", 1), ("steps", 1), ("batch_size", 1), ("image_size", 16), ("unet_base", 1),
                          ("workers", 0), ("val_every", 1)):
            if getattr(self, name) is not None and int(getattr(self, name)) < low:
                raise UsageError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(self, name)}")
        from hemseg.runtime.preprocess import MAX_SIZE

        if int(self.image_size) > MAX_SIZE:
            raise UsageError(f"--image-size must be <= {MAX_SIZE}, got {self.image_size}")
        if self.splits is not None and self.folds is not None:
            raise UsageError("--splits and --folds exclude each other: the file's entries are the folds")
        if isinstance(self.weights, str) and self.weights not in ("none", "random", "auto") and (
                not self.weights.strip() or not Path(self.weights).expanduser().is_file()):
            # said now, not after the filter chain has run over the whole dataset (minutes on a large one)
            raise UsageError("--weights is empty (an unset shell variable?); give none, auto or a checkpoint file"
                             if not self.weights.strip() else
                             f"--weights must be none, auto or an existing file; {self.weights!r} is none of these")
        given = [f"--{n}" for n in ("steps", "minutes", "epochs") if getattr(self, n) is not None]
        if len(given) > 1:
            raise UsageError(f"{' and '.join(given)} exclude each other: give one run length")
        if self.minutes is not None and not self.minutes > 0:
            raise UsageError(f"--minutes must be > 0, got {self.minutes}")
        if self.lr is not None and not self.lr > 0:
            raise UsageError(f"--lr must be > 0, got {self.lr}")
        for name in ("crop", "intensity_remap", "invert", "lowres", "fov", "gin"):
            p = getattr(self, name)
            if p is not None and not 0 <= p <= 1:
                raise UsageError(f"--{name.replace('_', '-')} is a probability between 0 and 1, got {p}")
        if not self.augment:  # each of these is an augmentation, which --no-augment turns off: it was ignored
            given = [f"--{n.replace('_', '-')} {getattr(self, n):g}" for n in
                     ("crop", "intensity_remap", "invert", "lowres", "fov", "gin") if getattr(self, n)]
            given += [f"--fov-shape {self.fov_shape}"] if self.fov_shape is not None else []
            if given:
                raise UsageError(f"{', '.join(given)}: {'an augmentation' if len(given) == 1 else 'augmentations'} "
                                 "of the training slices, and --no-augment turns augmentation off; give one or the "
                                 "other")
        if self.fov_shape is not None:
            from hemseg.train.transforms import FOV_SHAPES  # torch: only when the option is given

            if self.fov_shape not in FOV_SHAPES:
                raise UsageError(f"--fov-shape must be one of {', '.join(FOV_SHAPES)}, got {self.fov_shape!r}")
        if self.aux_loss is not None:
            if not self.aux_loss >= 0:
                raise UsageError(f"--aux-loss must be >= 0, got {self.aux_loss}")
            if self.aux_loss > 0 and self.model != "fcn_resnet50":
                raise UsageError(f"--aux-loss trains a head on FCN-ResNet50's layer3; model {self.model!r} has none")
        if self.zero_init_residual and self.model != "fcn_resnet50":
            raise UsageError(f"--zero-init-residual starts FCN-ResNet50's residual blocks as the identity; model "
                             f"{self.model!r} has none")
        if self.patch is not None and self.patch != "auto":
            try:
                p = int(self.patch)
            except (TypeError, ValueError):
                p = -1
            if p != 0 and (p < 16 or p % 16 or p > int(self.image_size)):
                raise UsageError(f"--patch must be auto, 0 (whole slices) or a multiple of 16 between 16 and "
                                 f"--image-size ({self.image_size}), got {self.patch}")
            object.__setattr__(self, "patch", p or None)
        if self.ema and not 0 < self.ema_decay < 1:  # unused without --ema (the CLI says so)
            raise UsageError(f"--ema-decay must be between 0 and 1 (exclusive), got {self.ema_decay}")
        if self.folds is not None and int(self.folds) < 2:
            raise UsageError(f"--folds must be at least 2, got {self.folds}")
        if self.pos_weight is not None and not self.pos_weight > 0:
            raise UsageError(f"--pos-weight must be > 0, got {self.pos_weight}")
        from hemseg.train.loop import DICE_MODES

        if self.dice is not None and self.dice not in DICE_MODES:
            raise UsageError(f"--dice {self.dice!r}: choose from {', '.join(DICE_MODES)}")
        if self.dice_loss and self.dice not in (None, "batch"):
            raise UsageError(f"--dice-loss (a batch Dice term) and --dice {self.dice} exclude each other")
        if self.no_preprocess and self.skip:
            raise UsageError("--no-preprocess and --skip exclude each other (--no-preprocess skips every filter)")
        bad = [s for s in self.skip if s not in OPTIONAL_STEPS]
        if bad:
            raise UsageError(f"--skip {bad[0]!r}: choose from {', '.join(OPTIONAL_STEPS)}")
        if self.folds is None and not 0 < self.val_fraction < 1:
            raise UsageError(f"--val-fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")

    def spec(self) -> PreprocessSpec:
        spec = PreprocessSpec(size=int(self.image_size))
        if self.no_preprocess:
            return spec.without(["all"])
        return spec.without(self.skip) if self.skip else spec

    def model_kwargs(self) -> dict[str, Any]:
        return {} if self.model == "fcn_resnet50" else {"base": int(self.unet_base)}


def make_options(**options: Any) -> TrainOptions:
    """TrainOptions from keyword options (CLI names with underscores); unknown names are a UsageError."""
    known = {f.name for f in dataclasses.fields(TrainOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
    nullable = ("folds", "splits", "labels", "pos_weight", "epochs", "steps", "minutes", "batch_size", "lr", "val_every",
                "patch", "dice")
    opts = {k: v for k, v in options.items() if v is not None or k in nullable}
    if opts.get("labels") is not None:
        opts["labels"] = tuple(int(v) for v in opts["labels"]) or None
    if "skip" in opts:
        opts["skip"] = tuple(opts["skip"])
    if opts.get("folds") in (0, 1):
        opts["folds"] = None if opts["folds"] == 0 else opts["folds"]
    return TrainOptions(**opts)


# -- the run folder ----------------------------------------------------------------------------------------------------
#: the files a run writes atomically (:func:`hemseg.runtime.io.writers.atomic_write_bytes`) in its folder or a fold's
RUN_FILES = ("last.pt", "best.pt", "config.json", "history.csv", "metrics.json", "curves.png")


def _remove_killed_writes(out: Path) -> None:
    """The temporary files a killed run left while writing its files (a 372 MB ``.last.pt.*.tmp`` for an FCN-ResNet50
    stayed after every ``--resume``: a QA finding of stop 53); under the run folder's lock."""
    from hemseg.runtime.io.writers import remove_stale_temps

    stale = [f for folder in (out, *sorted(out.glob("fold_*"))) if folder.is_dir()
             for f in remove_stale_temps(folder, RUN_FILES)]
    if stale:
        log.info("%s: removed %d temporary file(s) of a run that was killed (e.g. %s)", out, len(stale), stale[0].name)


def _check_run_dir(out: Path, resume: bool, data: Path | None = None) -> None:
    refuse_inside(out, dataset=data, whose="the run's")  # the run's files would become part of the dataset
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    blocker = None if out.exists() else file_in_the_way(out)
    if blocker is not None:
        raise UsageError(f"--out {out}: {blocker} is a file, not a folder")  # before the slices are prepared
    held = [m for m in RUN_MARKERS if (out / m).exists()] + sorted(p.name for p in out.glob("fold_*")) \
        if out.is_dir() else []
    if held and not is_json_with(out / "config.json", {"model", "preprocess", "recipe"}):
        # no hemseg run's config beside them: another tool's metrics.json, notes in fold_x/, a config of yours;
        # calling them a run, with advice to --resume it, sent the user into a second refusal
        raise UsageError(f"--out {out} holds {', '.join(held[:4])} but no hemseg training run's config.json: files "
                         "of another tool or yours, which a run writes there; choose another --out or move them")
    if held and not resume:
        state = "a finished" if (out / "metrics.json").exists() else "an unfinished"
        raise UsageError(f"--out {out} already holds {state} training run ({', '.join(held[:4])}); pass --resume to "
                         f"continue it, or choose another --out (hemseg never overwrites a run)")
    if resume and not (out / "config.json").is_file():
        raise UsageError(f"--resume: {out} holds no run to resume (no config.json)")


def _warn_blank(samples: list, per_sample: list) -> None:
    """Warn of images whose every slice has one value throughout (a blank export: nothing to learn from), as
    ``hemseg data check`` does; training said nothing of them. (A blank image maps to a blank model input.)"""
    from hemseg.runtime.io.intensity import is_blank

    blank = [s.image for s, items in zip(samples, per_sample) if items and all(is_blank(it.image) for it in items)]
    if blank:
        log.warning("%d blank image(s) (every pixel one value; nothing to learn from, check the export): %s%s",
                    len(blank), ", ".join(map(str, blank[:3])), ", ..." if len(blank) > 3 else "")


def _compare_for_resume(out: Path, new: dict[str, Any]) -> None:
    try:
        old = json.loads(read_regular_text(out / "config.json"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"--resume: cannot read {out / 'config.json'}: {exc}") from None
    from dataclasses import MISSING, fields

    recipe = old.get("recipe")
    if isinstance(recipe, dict):
        from hemseg.train.recipes import Recipe

        # a run saved before a recipe field existed ran as its default says (e.g. zero_init_residual False)
        for f in fields(Recipe):
            if f.default is not MISSING:
                recipe.setdefault(f.name, f.default)
    augment = (recipe or {}).get("augment") if isinstance(recipe, dict) else None
    if isinstance(augment, dict):
        from hemseg.train.transforms import AugmentSpec

        # a run saved before an augmentation option existed ran without it (AugmentSpec.BEFORE_FIELD says otherwise)
        for f in fields(AugmentSpec):
            augment.setdefault(f.name, AugmentSpec.BEFORE_FIELD.get(f.name, f.default))
    if old.get("patch") is None and new.get("patch") == "auto":
        old["patch"] = "auto"  # a run from before --patch auto: its saved state keeps the whole slices it trained on
    diffs = [_difference(k, old.get(k), new.get(k)) for k in RESUME_KEYS
             if json.dumps(old.get(k), sort_keys=True) != json.dumps(new.get(k), sort_keys=True)]
    if diffs:
        raise UsageError(f"--resume: the run in {out} was made with other settings ({'; '.join(diffs)}); "
                         f"repeat the run's own options (its config.json records them), or train into a new --out")
    if "weights" in old and old["weights"] != new.get("weights"):
        # the weights a run started from are its history: config.json, and the slices counted as seen through a
        # --weights checkpoint, keep the run's own (a resume with another --weights rewrote both while best.pt kept
        # the first init: a QA finding of stop 56); last.pt holds the weights the steps left start from
        (log.info if new.get("weights") == "auto" else log.warning)(
            "--resume: --weights %s not used: the run started from %s, and its steps left start from its last.pt",
            new.get("weights"), old["weights"])
        new["weights"] = old["weights"]
    # what the run counted as seen (its --weights checkpoint's slices too, that file maybe gone since) stays counted
    new["pixel_digests"] = [str(d) for d in old.get("pixel_digests") or ()]
    if "workers" in old and old.get("workers") != new.get("workers"):
        # allowed (a speed setting), but the augmentations are drawn in the workers, by worker: not the same run
        log.warning("--resume with --workers %s (the run was started with %s): the steps left draw other "
                    "augmentations than the run's own would have; it will not end with the weights of an "
                    "uninterrupted run", new.get("workers"), old.get("workers"))


def _difference(key: str, old: Any, new: Any, limit: int = 120) -> str:
    """``key: old -> new`` for the --resume refusal: for two dicts the differing entries (``recipe.fov_shape:
    'box' -> 'band'``), each side cut to ``limit`` characters (the split's stem lists made it one line of thousands
    of characters)."""
    if isinstance(old, dict) and isinstance(new, dict):
        if "name" in old and "name" in new and old["name"] != new["name"]:  # another recipe: its name says it all
            return _difference(f"{key}.name", old["name"], new["name"], limit)
        return "; ".join(_difference(f"{key}.{k}", old.get(k), new.get(k), limit) for k in sorted(set(old) | set(new))
                         if json.dumps(old.get(k), sort_keys=True) != json.dumps(new.get(k), sort_keys=True))

    def short(value: Any) -> str:
        text = repr(value)
        return text if len(text) <= limit else text[:limit - 3] + "..."

    option = OPTION_OF.get(key) or next((o for prefix, o in OPTION_UNDER.items() if key.startswith(prefix)), None)
    return f"{key}{f' ({option})' if option else ''}: {short(old)} -> {short(new)}"


def _weights_digests(weights: str) -> list[str]:
    """The digests of what a ``--weights`` checkpoint saw (:func:`hemseg.train.weights.inherited_digests`), said."""
    from hemseg.train.weights import inherited_digests

    found = inherited_digests(weights)
    if found:
        log.info("--weights %s: the %d slice(s) it was trained and validated on count as seen by this model too "
                 "(an evaluation on them is told as optimistic)", weights, len(found))
    return found


def _check_foreground(data: Path, per_sample: list[list], labels: tuple[int, ...] | None) -> None:
    n_slices = sum(len(items) for items in per_sample)
    n_fg = sum(1 for items in per_sample for it in items if it.mask.any())
    # a lesion smaller than a pixel of the training size can vanish from the resized mask (nearest neighbour): that
    # slice trains as lesion-free and nothing said so (a QA finding of stop 54); validation scores its own size
    vanished = [it.name for items in per_sample for it in items
                if it.native is not None and it.native.any() and not it.mask.any()]
    size = per_sample[0][0].mask.shape[0]
    if n_fg == 0 and vanished:
        raise DatasetError(f"{data}: every lesion pixel of the {len(vanished)} mask(s) with one is lost when they are "
                           f"resized to the training size ({size} px, nearest neighbour); nothing to learn: a larger "
                           "--image-size keeps them")
    if n_fg == 0:
        which = f"equal to --label {list(labels)}" if labels else "nonzero"
        raise DatasetError(f"{data}: no mask of the {n_slices} slice(s) has a lesion pixel ({which}) at the training "
                           "size; nothing to learn (check --label and the masks)")
    log.info("%d of %d slice(s) show lesion pixels", n_fg, n_slices)
    if vanished:
        log.warning("%s: %d slice(s) lose every lesion pixel when their masks are resized to the training size "
                    "(%d px, nearest neighbour), so they train as lesion-free: %s%s; a larger --image-size keeps "
                    "them", data, len(vanished), size, ", ".join(vanished[:5]), ", ..." if len(vanished) > 5 else "")
    said = mostly_lesion_warning(sum(int(it.mask.sum()) for items in per_sample for it in items),
                                 sum(it.mask.size for items in per_sample for it in items), labels)
    if said:
        log.warning("%s: %s", data, said)


def _check_training_foreground(data: Path, per_sample: list[list], splits, samples) -> None:
    """Each training split must show a lesion: with few lesion images, the split can put them all in validation,
    and the model then learns that there is none (it trained silently, with advice for a run too short)."""
    for k, (train_idx, val_idx) in enumerate(splits, start=1):
        if any(it.mask.any() for i in train_idx for it in per_sample[i]):
            continue
        with_lesion = [samples[i].stem for i in val_idx if any(it.mask.any() for it in per_sample[i])]
        fold = f" of fold {k}" if len(splits) > 1 else ""
        raise DatasetError(f"{data}: the training split{fold} ({len(train_idx)} sample(s)) has no lesion pixel: "
                           f"every sample with one is in its validation split ({', '.join(with_lesion[:3])}"
                           f"{', ...' if len(with_lesion) > 3 else ''}); nothing to learn. Give more images with "
                           "lesions, another --seed, or the splits yourself (--splits FILE)")


def _warn_copies_across_split(data: Path, per_sample: list[list], splits) -> None:
    """Say when validation slices are exact copies (by their pixels, :attr:`SliceItem.digest`) of training slices:
    the validation Dice, the checkpoint it picks and the threshold tuned on it are then optimistic, and nothing said
    so (a QA finding of stop 54; ``hemseg eval`` says it of an evaluation on copies)."""
    for k, (train_idx, val_idx) in enumerate(splits, start=1):
        trained = {it.digest: it.name for i in train_idx for it in per_sample[i] if it.digest}
        copies = [(it.name, trained[it.digest]) for i in val_idx for it in per_sample[i] if it.digest in trained]
        if copies:
            fold = f" of fold {k}" if len(splits) > 1 else ""
            log.warning("%s: %d validation slice(s)%s are exact copies of training slices (%s%s): the validation "
                        "Dice, the checkpoint it chooses and the threshold tuned on it will be optimistic; remove "
                        "the copies, or give copies one case (cases.csv) so that the split keeps them together",
                        data, len(copies), fold, ", ".join(f"{a} = {b}" for a, b in copies[:3]),
                        ", ..." if len(copies) > 3 else "")


def _finished_metrics(out: Path, opts: TrainOptions) -> dict[str, Any] | None:
    """The stored metrics when the run in ``out`` is finished and has at least the asked run length (``--steps`` or
    ``--epochs``; any finished run when neither is given), else None."""
    path = out / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(read_regular_text(path))
    parts = metrics.get("folds", [metrics])
    if opts.steps is not None:
        return metrics if all(int(m.get("steps", 0)) >= opts.steps for m in parts) else None
    if opts.epochs is not None:
        return metrics if all(float(m.get("epochs_trained", 0)) >= opts.epochs - 1e-9 for m in parts) else None
    return metrics


def _resume_length(out: Path, opts: TrainOptions, asked: dict[str, Any]) -> dict[str, Any]:
    """The run length of a resumed run: the one it was started with when none is given (the default filled in
    would be recorded as if asked), a new ``--steps`` / ``--epochs`` (to lengthen it); a new ``--minutes`` is
    refused: the steps planned from the first budget fix the run's schedule, and a second budget was ignored."""
    try:
        saved = json.loads(read_regular_text(out / "config.json")).get("run_length")
    except (OSError, ValueError, AttributeError):
        return asked  # _compare_for_resume names the unreadable config
    if not isinstance(saved, dict) or len(saved) != 1:
        return asked
    if not any(getattr(opts, k) is not None for k in ("steps", "minutes", "epochs")):
        return saved
    if opts.minutes is not None and saved != asked:
        was = ", ".join(f"--{k} {v:g}" for k, v in saved.items())
        raise UsageError(f"--resume --minutes {opts.minutes:g}: the run in {out} was started with {was}, and a budget "
                         "fixes the steps of the schedule when the run plans them; resume without a run length to "
                         "finish it, or give --steps N to change its length")
    return asked


def _check_resume_length(out: Path, opts: TrainOptions, splits, per_sample, batch_size: int,
                         length: dict[str, Any]) -> None:
    """UsageError, before config.json records the new length, when a resumed split has trained more steps (its
    history.csv's last row) than the new ``--steps`` / ``--epochs`` give it (:func:`hemseg.train.fit.fit` checks
    against last.pt too)."""

    from hemseg.train.sampling import batches_per_epoch

    if "minutes" in length:
        return
    for k, (tr, _) in enumerate(splits, 1):
        run_dir = out / f"fold_{k}" if opts.folds else out
        try:
            rows = csv.DictReader(io.StringIO(read_regular_text(run_dir / "history.csv"), newline=""))
            done = max((int(float(r["step"])) for r in rows), default=0)
        except (OSError, KeyError, ValueError):
            continue
        total = (int(length["steps"]) if "steps" in length
                 else int(length["epochs"]) * batches_per_epoch(sum(len(per_sample[i]) for i in tr), batch_size))
        if total < done:
            raise UsageError(f"--resume: the run in {run_dir} has trained {done} steps; its new length is {total} "
                             f"steps: give a length of at least {done} steps")


def run_length(opts: TrainOptions, device_type: str) -> dict[str, Any]:
    """The run length asked for, with the defaults filled in: ``{"steps"|"minutes"|"epochs": value}``.

    Defaults: ``paper`` trains ``--epochs 20``; ``hemseg`` trains ``--minutes 10`` on the CPU and ``--steps 3000`` on
    CUDA."""
    for name in ("steps", "minutes", "epochs"):
        if getattr(opts, name) is not None:
            return {name: getattr(opts, name)}
    if opts.recipe == "paper":
        return {"epochs": PAPER_EPOCHS}
    return {"minutes": DEFAULT_CPU_MINUTES} if device_type == "cpu" else {"steps": DEFAULT_CUDA_STEPS}


# -- folds ---------------------------------------------------------------------------------------------------------
def _fold_summary(fold_metrics: list[dict]) -> dict[str, Any]:
    """Mean and std over the folds of each of :data:`FOLD_KEYS`; a fold without the value (a fold whose validation
    split has no lesion has no Dice) is left out of that key's mean, and ``n_scored`` counts the folds with one."""
    mean, std = {}, {}
    for k in FOLD_KEYS:
        vals = np.array([float(m[k]) for m in fold_metrics if m.get(k) is not None], np.float64)
        vals = vals[np.isfinite(vals)]
        mean[k] = float(vals.mean()) if vals.size else float("nan")
        std[k] = float(vals.std()) if vals.size > 1 else float("nan")  # one fold has no spread (it read 0)
    return {"mean": mean, "std": std, "n_scored": sum(m.get("dice") is not None for m in fold_metrics)}


def _write_fold_history(out: Path, k: int) -> None:
    lines: list[str] = []
    for f in range(1, k + 1):
        path = out / f"fold_{f}" / "history.csv"
        rows = read_regular_text(path).splitlines() if path.is_file() else []
        if rows and not lines:
            lines.append("fold," + rows[0])
        lines.extend(f"{f},{r}" for r in rows[1:])
    atomic_write_bytes(out / "history.csv", ("\n".join(lines) + "\n").encode())


# -- the entry point -----------------------------------------------------------------------------------------------
def _sessions_precision(config_path: Path, current: str) -> str:
    """The precision of a resumed run's sessions so far and of this one (``bf16+fp32``), in order, once each."""
    try:
        before = str(json.loads(read_regular_text(config_path)).get("precision") or "")
    except (OSError, ValueError, AttributeError):
        before = ""
    return "+".join(dict.fromkeys(p for p in [*before.split("+"), current] if p))


def run_training(data: str | Path, out: str | Path, **options: Any) -> dict[str, Any]:
    """Train a model on the dataset ``data`` into the run folder ``out``; returns the metrics written to
    ``out/metrics.json``. ``options`` are those of ``hemseg train`` (see :class:`TrainOptions`)."""
    opts = make_options(**options)
    data, out = Path(data), Path(out)
    _check_run_dir(out, opts.resume, data)

    from hemseg.runtime.dataset import dataset_fingerprint
    from hemseg.train.device import describe, resolve_device, resolve_precision, run_mode, versions
    from hemseg.train.fit import fit
    from hemseg.train.object_scale import check_object_scale
    from hemseg.train.recipes import get_recipe
    from hemseg.train.slices import prepare_samples

    device = resolve_device(opts.device)
    precision = resolve_precision(opts.precision, device)
    recipe = get_recipe(opts.recipe, lr=opts.lr, batch_size=opts.batch_size,
                        dice=opts.dice or ("batch" if opts.dice_loss else None), remap=opts.intensity_remap,
                        invert=opts.invert, lowres=opts.lowres, gin=opts.gin, fov=opts.fov, fov_shape=opts.fov_shape, aux_weight=opts.aux_loss,
                        zero_init_residual=opts.zero_init_residual)
    length = run_length(opts, device.type)
    if opts.resume:
        length = _resume_length(out, opts, length)
    from hemseg.runtime.dataset import (
        CASES_CSV,
        case_groups,
        changed_files,
        file_versions,
        usable_index,
        warn_label_maps,
    )

    index = usable_index(data)
    samples = list(index.samples)
    if len(samples) < 2:
        raise DatasetError(f"{data}: {len(samples)} image/mask pair; training needs at least 2 (one to train on, one "
                           "to validate on)")
    warn_label_maps(data, samples, opts.labels)
    spec = opts.spec()
    categories = [s.category for s in samples]
    groups = case_groups(samples)
    if groups is not None:
        log.info("splits by case: %d case(s) of %d sample(s) (from %s)", len(set(groups)), len(samples),
                 index.cases_from)
    else:  # said as hemseg data check says it (the log was silent: QA, stop 58)
        log.info("splits by file: every one of the %d sample(s) is its own case (no %s, and no DICOM Patient ID or "
                 "study telling patients apart); if files are slices of one patient, list them in %s (stem,case) so "
                 "that splits keep them together", len(samples), CASES_CSV, data / CASES_CSV)
    splits_file = opts.splits
    try:
        splits = _splits(opts, samples, groups)
    except DatasetError as exc:
        if opts.splits is not None:
            raise
        # the samples (or the cases) make the split impossible: name the dataset and where its cases come from
        where = "" if groups is None else \
            f" (cases from {data / CASES_CSV if index.cases_from == CASES_CSV else index.cases_from})"
        raise DatasetError(f"{data}{where}: {exc}") from None
    if splits_file is not None:  # from here on the file's entries are the folds (one entry: a single split)
        opts = dataclasses.replace(opts, splits=None, folds=len(splits) if len(splits) > 1 else None)

    ids = sample_ids(samples)  # each name one sample, also where category folders share file names
    # the files' versions with the fingerprint: checked again once the slices are read (a dataset replaced meanwhile,
    # as hemseg data synth does, gave a run that recorded one version's fingerprint and trained on the other)
    data_versions = file_versions([p for s in samples for p in (s.image, s.mask)])
    fingerprint = dataset_fingerprint(index)
    config: dict[str, Any] = {
        "data": str(data.resolve()), "model": opts.model, "model_kwargs": opts.model_kwargs(),
        "preprocess": spec.to_dict(), "image_size": spec.size, "labels": list(opts.labels) if opts.labels else None,
        "seed": opts.seed, "val_fraction": None if opts.folds or splits_file else opts.val_fraction,
        "folds": opts.folds,
        "batch_size": recipe.batch_size, "lr": recipe.lr, "pos_weight": opts.pos_weight, "dice_loss": opts.dice_loss,
        "augment": opts.augment, "data_fingerprint": fingerprint, "n_samples": len(samples),
        "recipe": recipe.to_dict(), "run_length": length, "precision": precision.name, "crop": opts.crop,
        "patch": opts.patch,
        "ema": opts.ema_decay if opts.ema else None, "val_every": opts.val_every,
        "epochs": opts.epochs, "weights": opts.weights, "device": str(device), "workers": opts.workers,
        "versions": versions(), "categories": sorted(set(categories)),
        "splits": [{"train": [ids[i] for i in tr], "val": [ids[i] for i in va]} for tr, va in splits],
        # ("files" when every file is its own case, as hemseg data check says it; null read as 'not known')
        "split_unit": "sample" if groups is None else "case", "cases_from": index.cases_from or "files",
        "splits_file": str(Path(splits_file).resolve()) if splits_file is not None else None,
    }
    if groups is not None:
        config["cases"] = dict(zip(ids, groups))
    if opts.resume:
        _compare_for_resume(out, config)
        done = _finished_metrics(out, opts)
        if done is not None:
            steps = [int(m.get("steps", 0)) for m in done.get("folds", [done])]
            asked = "no run length given" if not any(getattr(opts, k) is not None for k in ("steps", "minutes",
                                                                                            "epochs")) else length
            log.info("%s is already trained (%s step(s)%s; asked: %s): nothing to do; give a longer --steps or "
                     "--epochs to continue it", out, "/".join(map(str, steps)), " per fold" if len(steps) > 1 else "",
                     asked)
            return done
        from hemseg.train.fit import check_resumable

        for run_dir in [out] if not opts.folds else [out / f"fold_{k}" for k in range(1, opts.folds + 1)]:
            check_resumable(run_dir)  # before the slices are prepared

    start = time.perf_counter()
    # a budget from now: a resumed split that was planned keeps its planned steps (hemseg.train.fit), one that was
    # not (stopped before its plan, a fold not begun) is planned from what is left of it
    deadline = time.monotonic() + 60 * length["minutes"] if "minutes" in length else None
    log.info("recipe %s, precision %s on %s, run length %s", recipe.name, precision.name, describe(device), length)
    fresh = not opts.resume
    if fresh:
        from hemseg.train.weights import check_weights

        check_weights(opts.model, opts.weights, opts.model_kwargs())  # before the slices are prepared
    with run_mode(device):
        per_sample = prepare_samples(samples, spec, opts.labels, progress=opts.progress)
        changed = changed_files(data_versions)
        if changed:
            raise DatasetError(f"{data}: {len(changed)} file(s) changed while they were read (e.g. {changed[0]}: "
                               "replaced, edited or removed); train again when the dataset is complete")
        _check_foreground(data, per_sample, opts.labels)
        _warn_blank(samples, per_sample)
        # by their pixels, the slices trained and validated on: an evaluation on copies of them (laid out otherwise,
        # saved again, in another format) is told as optimistic; the fingerprint of the whole dataset matches its
        # own files only
        config["pixel_digests"] = sorted({it.digest for items in per_sample for it in items if it.digest}
                                         | set(_weights_digests(config["weights"]))
                                         | set(config.get("pixel_digests") or ()))  # a resumed run's own
        _check_training_foreground(data, per_sample, splits, samples)
        _warn_copies_across_split(data, per_sample, splits)
        if opts.resume:
            _check_resume_length(out, opts, splits, per_sample, recipe.batch_size, length)
        scale = check_object_scale((it.mask for items in per_sample for it in items), opts.model, opts.image_size,
                                   patch=opts.patch)
        created = missing_folders(out)  # out and the parents this run makes: removed again if it fails at once
        out.mkdir(parents=True, exist_ok=True)
        try:
            with folder_lock(out, "hemseg train"):
                _check_run_dir(out, opts.resume)  # again: another run may have begun in it since the first check
                _remove_killed_writes(out)
                if opts.resume:  # every session's precision, as metrics.json's amp (it said the last one only)
                    config["precision"] = _sessions_precision(out / "config.json", config["precision"])
                write_json(out / "config.json", config)  # only now: a run that fails before training leaves no trace
                if opts.folds:  # training goes on: the cross-validation is no longer finished (only now, locked)
                    (out / "metrics.json").unlink(missing_ok=True)
                try:
                    results = [fit(settings, train_items, val_items) for settings, train_items, val_items in
                               _fold_settings(out, opts, config, splits, per_sample, spec, device, precision, recipe,
                                              length, deadline, scale)]
                except (HemsegError, KeyboardInterrupt) as exc:
                    # refused, or stopped (Ctrl-C, SIGTERM), before its first checkpoint (e.g. a budget too short
                    # for one validation): no run left (a config.json alone made the folder 'an unfinished run')
                    if fresh and not any(out.rglob("last.pt")) and not any(out.rglob("best.pt")):
                        (out / "config.json").unlink(missing_ok=True)
                        if isinstance(exc, KeyboardInterrupt):
                            log.warning("%s: nothing of this run is kept (stopped before its first checkpoint); run "
                                        "it again, without --resume", out)
                    raise
        except (HemsegError, KeyboardInterrupt):
            if fresh:
                remove_empty_folders(created)  # the folders this run made, still empty
            raise
    if not opts.folds:
        if results[0].get("val_has_lesion", True):
            log.info("best val Dice %.4f (pooled %.4f) at step %d (threshold %.4g): %s", results[0]["dice"],
                     results[0]["dice_global"], results[0]["step"], results[0]["threshold"], out / "best.pt")
        return results[0]

    summary = _fold_summary(results)
    metrics: dict[str, Any] = {**summary["mean"], "folds": results, **summary,
                               "n_folds": opts.folds, "model": opts.model, "init": results[0]["init"],
                               "object_scale": scale,
                               "device": describe(device), "wall_time_s": sum(r["wall_time_s"] for r in results),
                               "session_seconds": time.perf_counter() - start,
                               "images_per_s": float(np.mean([r["images_per_s"] for r in results]))}
    # steps and seconds of all folds together (steps_per_fold: each fold's); the precision(s) the folds trained in;
    # recipe, batch size and learning rate are the same in every fold (fold_k/metrics.json has them too)
    metrics.update(steps=int(sum(int(r.get("steps", 0)) for r in results)),
                   steps_per_fold=[int(r.get("steps", 0)) for r in results],
                   amp="+".join(dict.fromkeys(p for r in results for p in str(r.get("amp") or "").split("+") if p)),
                   **{k: results[0].get(k) for k in ("recipe", "batch_size", "lr", "patch") if k in results[0]},
                   minutes_budget=length.get("minutes"), seconds=float(sum(r.get("seconds", 0.0) for r in results)))
    _write_fold_history(out, opts.folds)
    write_json(out / "metrics.json", metrics)
    log.info("%d-fold CV (%d fold(s) with validation lesions): val Dice pooled %.4f +/- %.4f, mean per slice "
             "%.4f +/- %.4f", opts.folds, summary["n_scored"], summary["mean"]["dice_global"],
             summary["std"]["dice_global"], summary["mean"]["dice"], summary["std"]["dice"])
    return metrics


def _splits(opts: TrainOptions, samples: list, groups: list[str] | None) -> list[tuple[list[int], list[int]]]:
    """The (train, val) index lists of the run: from ``--splits FILE``, else drawn (``--folds`` or one split), by
    case when the samples have cases (``groups``: ``cases.csv`` or DICOM headers)."""
    from hemseg.train.split import missing_from_folds, read_splits, stratified_kfold, stratified_split

    if opts.splits is not None:
        splits = read_splits(opts.splits, sample_ids(samples), groups)
        log.info("splits from %s: %d", opts.splits, len(splits))
        return splits
    categories = [s.category for s in samples]
    if opts.folds:
        folds = stratified_kfold(categories, opts.folds, opts.seed, groups=groups)
        missing = missing_from_folds(categories, folds)
        if missing:  # scikit-learn's StratifiedKFold warns alike (of categories smaller than K)
            shown = ", ".join(f"{c} ({n} of {opts.folds})" for c, n in list(missing.items())[:4])
            log.warning("--folds %d: %d categor%s missing from the validation of some folds, whose scores then leave "
                        "it out: %s%s (too few %s to be in every fold)", opts.folds, len(missing),
                        "y is" if len(missing) == 1 else "ies are", shown, ", ..." if len(missing) > 4 else "",
                        "cases holding it" if groups is not None else "samples")
        return folds
    train, val = stratified_split(categories, opts.val_fraction, opts.seed, groups=groups)
    if groups is not None:
        share = len(val) / len(samples)
        n_val_cases, n_cases = len({groups[i] for i in val}), len(set(groups))
        log.info("validation: %d of %d sample(s) (%.0f %%), %d of %d case(s)", len(val), len(samples), 100 * share,
                 n_val_cases, n_cases)
        if share > 2 * opts.val_fraction:
            log.warning("the validation split holds %.0f %% of the samples (--val-fraction %.2f): splits move whole "
                        "cases and there are only %d; more cases, or --splits FILE, give training more", 100 * share,
                        opts.val_fraction, n_cases)
    return [(train, val)]


def _fold_settings(out: Path, opts: TrainOptions, config: dict[str, Any], splits, per_sample, spec, device,
                   precision, recipe, length: dict[str, Any], deadline: float | None, scale: dict[str, Any]):
    """``(FitSettings, train_items, val_items)`` per split, made when the split's turn comes (the budget of the
    folds still to train is shared evenly)."""
    from hemseg.train.fit import FitSettings
    from hemseg.train.sampling import batches_per_epoch

    for k, (tr, va) in enumerate(splits, 1):
        fold_dir = out / f"fold_{k}" if opts.folds else out
        label = f"fold {k}/{opts.folds} " if opts.folds else ""
        split_info = {"train_stems": config["splits"][k - 1]["train"], "val_stems": config["splits"][k - 1]["val"],
                      "split_seed": opts.seed, "fold": k if opts.folds else None, "folds": opts.folds}
        base_config = {"labels": config["labels"], "data_fingerprint": config["data_fingerprint"],
                       "pixel_digests": config["pixel_digests"],
                       "versions": config["versions"], "hemseg_version": config["versions"]["hemseg"],
                       "data": config["data"], "train_options": _train_options(opts), **split_info}
        train_items = [it for i in tr for it in per_sample[i]]
        val_items = [it for i in va for it in per_sample[i]]
        total: int | None = None
        if "steps" in length:
            total = int(length["steps"])
        elif "epochs" in length:
            total = int(length["epochs"]) * batches_per_epoch(len(train_items), recipe.batch_size)
        fold_deadline = None
        if deadline is not None:
            fold_deadline = time.monotonic() + (deadline - time.monotonic()) / (len(splits) - k + 1)
        settings = FitSettings(
            run_dir=fold_dir, model=opts.model, model_kwargs=opts.model_kwargs(), spec=spec,
            base_config=base_config, device=device, recipe=recipe, precision=precision, total_steps=total,
            deadline=fold_deadline, minutes_budget=length.get("minutes"), val_every=opts.val_every,
            crop=opts.crop, patch=opts.patch, ema_decay=opts.ema_decay if opts.ema else None, weights=opts.weights,
            pos_weight=opts.pos_weight, workers=opts.workers, seed=opts.seed, resume=opts.resume,
            progress=opts.progress, augment=opts.augment, label=label,
            extra_metrics={"model": opts.model, "n_train_samples": len(tr), "n_val_samples": len(va),
                           "object_scale": scale,
                           **({"fold": k} if opts.folds else {})})
        yield settings, train_items, val_items


def _train_options(opts: TrainOptions) -> dict[str, Any]:
    d = dataclasses.asdict(opts)
    d["labels"] = list(d["labels"]) if d["labels"] else None
    d["skip"] = list(d["skip"])
    return d
