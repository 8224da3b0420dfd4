"""``hemseg report``: the paper's tables from one command, every number measured by that run.

Layout of the report folder ``DIR`` (every table of ``DIR/REPORT.md`` is read back from the JSON files listed here):

- ``splits/trainval/`` and ``splits/test/``: the held-out test split, made first (seeded, stratified by category,
  :func:`hemseg.train.split.stratified_split` with ``test_fraction``), in the input's dataset layout (flat, category
  folders, or flat + ``categories.csv``) as symlinks to the input files (copies where symlinks fail);
  ``splits/split.json`` lists the samples of each side (stems, or ``<category>/<stem>`` where category folders
  share file names). No model is trained, selected or threshold-tuned on ``test``.
- ``runs/<name>/``: trainer run folders (:func:`hemseg.train.trainer.run_training` on ``splits/trainval``, which makes
  its own seeded validation split): ``fcn_resnet50`` (the main model: FCN-ResNet50, full preprocessing, trained with
  ``recipe``, by default the paper's), ``fcn_resnet50_nopre`` (the ablation: ``--no-preprocess``), ``unet``,
  ``attention_unet`` (those of ``models``), and ``fcn_resnet50_<other recipe>`` (the recipe comparison: the main model
  trained with the other recipe, for the same number of epochs, hence the same number of optimizer steps).
- ``cv/<cv_model>/``: the k-fold cross-validation (``folds >= 2`` only) of ``cv_model`` (default: the main model,
  FCN-ResNet50, full preprocessing) on ``splits/trainval``.
- ``evals/<name>/``: ``hemseg eval`` reports (:func:`hemseg.train.evaluate.evaluate_checkpoint`) of each run's
  ``best.pt`` on ``splits/test``; ``evals/fcn_resnet50_postprocess/`` is the main model with ``--postprocess``.
- ``kmeans/``: the K-Means baseline (:func:`hemseg.train.kmeans.evaluate_kmeans`, k=4, full preprocessing at
  ``image_size``) on ``splits/test``: ``raw/``, ``cleaned/``, ``summary.json``.
- ``steps.json``: one entry per finished step: its settings (``key``), wall time and finish date.
- ``curves.png`` (training curves), ``metrics.png`` (test metrics bar chart), ``report.json``, ``REPORT.md``.

Resuming: a step whose entry in ``steps.json`` has the same settings and whose outputs exist is reused, not rerun
(its recorded wall time is reported, marked as reused). A step with an entry made with *other* settings is an error
(:class:`UsageError`; hemseg never overwrites results: choose another ``--out``). A training step that was
interrupted (a run folder without a ``steps.json`` entry) continues from its ``last.pt`` through the trainer's own
``resume``, which itself refuses a run made with other settings. Evaluations are cheap and are redone when missing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from hemseg.errors import DatasetError, HemsegError, UsageError
from hemseg.runtime.io.regular import read_regular_text
from hemseg.train.eval_report import json_safe, write_json

log = logging.getLogger(__name__)

MAIN_MODEL = "fcn_resnet50"
ALL_MODELS = ("fcn_resnet50", "unet", "attention_unet")
#: Test metrics shown in the tables (means per test image/slice; hd95 in pixels).
TABLE_KEYS = ("dice", "iou", "precision", "recall", "accuracy", "hd95")
#: Validation metrics of a cross-validation fold (from the trainer's metrics.json).
CV_KEYS = ("dice_global", "dice", "iou", "precision", "recall", "accuracy")
KMEANS_K = 4


RECIPES = ("paper", "hemseg")


@functools.lru_cache(maxsize=4)
def _weights_target(path: str, size: int, mtime_ns: int) -> str:
    """The model the --weights file ``path`` is for, loaded once per file version (every run's options ask, and an
    FCN-ResNet50 file is 130 MB)."""
    from hemseg.train.weights import weights_model

    return weights_model(path)[0]


@dataclass(frozen=True)
class ReportSettings:
    """The options of ``hemseg report`` (same names and defaults)."""

    epochs: int = 20
    recipe: str = "paper"
    folds: int | None = None
    image_size: int = 256
    batch_size: int = 8
    device: str = "auto"
    seed: int = 0
    test_fraction: float = 0.2
    models: tuple[str, ...] = ALL_MODELS
    unet_base: int = 64
    labels: tuple[int, ...] | None = None
    weights: str = "auto"
    val_fraction: float = 0.2
    cv_model: str = MAIN_MODEL
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < float(self.test_fraction) < 1.0:
            raise UsageError(f"--test-fraction must be between 0 and 1 (exclusive), got {self.test_fraction}")
        if self.folds is not None and int(self.folds) < 0:
            raise UsageError(f"--folds must be >= 0, got {self.folds}")
        if self.folds is not None and int(self.folds) == 1:
            raise UsageError("--folds 1: a cross-validation needs K >= 2 folds (0: none)")
        bad = [m for m in self.models if m not in ALL_MODELS]
        if bad:
            raise UsageError(f"--models: unknown model {bad[0]!r}; choose from {', '.join(ALL_MODELS)}")
        if not self.models:
            raise UsageError("--models: name at least one model")
        if self.cv_model not in ALL_MODELS:
            raise UsageError(f"--cv-model: unknown model {self.cv_model!r}; choose from {', '.join(ALL_MODELS)}")
        if self.recipe not in RECIPES:
            raise UsageError(f"--recipe: unknown recipe {self.recipe!r}; choose from {', '.join(RECIPES)}")
        if len(set(self.models)) != len(self.models):
            raise UsageError(f"--models: a model is named twice in {','.join(self.models)}")
        if self.weights not in ("none", "auto") and not Path(str(self.weights)).expanduser().is_file():
            # the trainer's own refusal, made before the report folder exists (it came after its first steps)
            raise UsageError(f"--weights must be none, auto or an existing file; {self.weights!r} is none of these")

    def weights_for(self, model: str) -> str:
        """The --weights of one model's runs: a file goes to the model it is for (a report trains several; a file
        fits one), the others start as ``auto`` starts them (cached torchvision weights for FCN-ResNet50, random
        otherwise); none and auto are every model's."""
        if self.weights in ("none", "auto"):
            return self.weights
        stat = Path(self.weights).expanduser().stat()
        return self.weights if _weights_target(self.weights, stat.st_size, stat.st_mtime_ns) == model else "auto"

    def check_weights(self) -> None:
        """UsageError, before the report folder exists, when a --weights file fits no model of the report (it was
        ignored, every run random) or is a checkpoint of another width than --unet-base (it failed after the
        FCN-ResNet50 runs); ModelError when it does not load."""
        if self.weights in ("none", "auto"):
            return
        from hemseg.train.weights import weights_model

        target, kwargs = weights_model(self.weights)
        trained = {_run_model(name, self)[0] for name in run_names(self)} | ({self.cv_model} if self.cv_folds else set())
        if target not in trained:
            raise UsageError(f"--weights {self.weights} is for {target}, which --models ({','.join(self.models)}) "
                             "does not train")
        wanted = {} if target == "fcn_resnet50" else {"base": int(self.unet_base)}
        if kwargs is not None and kwargs != wanted:
            raise UsageError(f"--weights {self.weights} is a {target} {kwargs}, the report trains {target} {wanted} "
                             "(--unet-base)")
        from hemseg.train.weights import check_weights

        check_weights(target, self.weights, wanted)  # tensors that do not fit: now

    @property
    def cv_folds(self) -> int | None:
        """``folds`` when it asks for a cross-validation (K >= 2), else None."""
        return int(self.folds) if self.folds is not None and int(self.folds) >= 2 else None

    def comparison_models(self) -> list[str]:
        """The models of the comparison table: the main model first, then the others of ``models``."""
        return [MAIN_MODEL] + [m for m in self.models if m != MAIN_MODEL]

    @property
    def other_recipe(self) -> str:
        """The recipe of the comparison run (the one the main model is not trained with)."""
        return next(r for r in RECIPES if r != self.recipe)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["models"] = list(self.models)
        d["labels"] = list(self.labels) if self.labels else None
        return d


def parse_models(text: str) -> tuple[str, ...]:
    """``"fcn_resnet50,unet"`` -> ``("fcn_resnet50", "unet")`` (validated by :class:`ReportSettings`)."""
    return tuple(m.strip() for m in str(text).split(",") if m.strip())


# -- the run registry (steps.json) ---------------------------------------------------------------------------------
class Steps:
    """``DIR/steps.json``: which steps finished with which settings, and how long each took."""

    def __init__(self, out: Path, total: int | None = None) -> None:
        self.path = out / "steps.json"
        self.total = total
        self.count = 0
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                self.entries = json.loads(read_regular_text(self.path))
            except (OSError, json.JSONDecodeError) as exc:
                raise UsageError(f"{self.path}: unreadable ({exc}); remove it or choose another --out") from None
            bad = (not isinstance(self.entries, dict) or
                   any(not isinstance(e, dict) or not isinstance(e.get("key", {}), dict) for e in self.entries.values()))
            if bad:  # valid JSON, but not what a report writes ('[]' crashed with an AttributeError)
                raise UsageError(f"{self.path}: not a hemseg report's step list (a JSON object of steps); remove it or "
                                 "choose another --out")
        self.timings: dict[str, dict[str, Any]] = {}

    def check(self, name: str, key: dict[str, Any]) -> dict[str, Any] | None:
        """UsageError when step ``name`` finished before with another ``key``; its earlier entry, else None. Settings
        an earlier version kept in the key and this one leaves out (:data:`NOT_IN_KEY`, FCN-ResNet50's U-Net
        width) are not compared."""
        key = json_safe(key)
        old = self.entries.get(name)
        old_key = {k: v for k, v in (old or {}).get("key", {}).items() if k in key or k not in _DROPPED_FROM_KEYS}
        if old is not None and old_key != key:
            diffs = sorted(k for k in set(key) | set(old_key) if key.get(k) != old_key.get(k))
            raise UsageError(f"{self.path.parent} holds a report whose step {name!r} was made with other settings "
                             f"({', '.join(diffs)} {'differs' if len(diffs) == 1 else 'differ'}); choose another --out (hemseg never overwrites results)")
        return old

    def run(self, name: str, key: dict[str, Any], outputs: Sequence[Path], work: Callable[[], Any]) -> None:
        """Run ``work()`` unless step ``name`` finished before with the same ``key`` and its ``outputs`` exist."""
        key = json_safe(key)
        self.count += 1
        tag = f"[{self.count}/{self.total}] " if self.total else ""
        old = self.check(name, key)
        if old is not None and all(Path(p).exists() for p in outputs):
            log.info("%sstep %s: reused (finished %s with the same settings)", tag, name, old.get("finished"))
            self.timings[name] = {"wall_s": old.get("wall_s"), "reused": True}
            return
        log.info("%sstep %s: running", tag, name)
        t0 = time.perf_counter()
        work()
        wall = time.perf_counter() - t0
        self.entries[name] = {"key": key, "wall_s": wall,
                              "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        write_json(self.path, self.entries)
        self.timings[name] = {"wall_s": wall, "reused": False}
        log.info("%sstep %s: done in %.1f s", tag, name, wall)


#: settings that step keys of earlier versions held and this one does not compare
_DROPPED_FROM_KEYS = ("device", "progress", "unet_base")


# -- the held-out test split ---------------------------------------------------------------------------------------
def _place(src: Path, dst: Path) -> str:
    """Symlink ``dst`` -> ``src`` (absolute); a copy when the file system refuses symlinks. Returns how."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        if dst.is_symlink() and Path(os.readlink(dst)) == src:
            return "symlink"
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)
        else:
            dst.unlink()
    try:
        os.symlink(src, dst, target_is_directory=src.is_dir())
        return "symlink"
    except OSError as exc:
        log.debug("symlink %s -> %s failed (%s): copying", dst, src, exc)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
        return "copy"


def _sample_dest(index: Any, sample: Any, root: Path) -> tuple[Path, Path]:
    """Where a sample's image and mask go under ``root`` in the input's own layout (nnU-Net's too: its image names
    carry ``_0000`` and its mask names do not, so only its own folders pair them)."""
    if index.layout == "nnunet":
        return root / "imagesTr" / sample.image.name, root / "labelsTr" / sample.mask.name
    if index.layout == "category-folders":
        base = root / sample.category
    else:
        base = root
    return base / "images" / sample.image.name, base / "masks" / sample.mask.name


def plan_test_split(data: Path, test_fraction: float, seed: int):
    """The test split :func:`make_test_split` writes, without writing it: ``(index, samples, case groups or None,
    trainval indices, test indices)``; DatasetError when the data cannot be split for a report."""
    from hemseg.runtime.dataset import case_groups, usable_index
    from hemseg.train.split import stratified_split

    index = usable_index(data, "report on")
    samples = list(index.samples)
    if len(samples) < 3:
        raise DatasetError(f"{data}: {len(samples)} image/mask pair(s); a report needs at least 3 (test, training "
                           "and validation each need one)")
    groups = case_groups(samples)
    trainval_idx, test_idx = stratified_split([s.category for s in samples], test_fraction, seed, groups=groups)
    if len(trainval_idx) < 2:
        raise DatasetError(f"{data}: after holding out {len(test_idx)} test sample(s), {len(trainval_idx)} remain; "
                           "training needs at least 2 (training and validation)")
    return index, samples, groups, trainval_idx, test_idx


def check_cv_folds(data: Path, folds: int | None, groups, trainval_idx, test_idx) -> None:
    """K-fold cross-validation splits the training split: it must hold at least K samples (or cases)."""
    if not folds:
        return
    unit = "case" if groups is not None else "sample"
    n = len({groups[i] for i in trainval_idx}) if groups is not None else len(trainval_idx)
    if n < folds:
        raise DatasetError(f"--folds {folds}: the training split of {data} holds {n} {unit}(s) ({len(test_idx)} "
                           f"sample(s) are held out for the test split); a {folds}-fold cross-validation of it "
                           f"needs at least {folds}")


def _check_split_links(splits: Path, data: Path) -> None:
    """UsageError when an earlier report's split links into a dataset folder that is gone (the dataset moved, the
    same content given from its new place): the fingerprint matched, the split was reused, and the first step that
    read it failed naming one of the report's own links (a QA finding of stop 55)."""
    if not (splits / "split.json").is_file():
        return
    try:
        old = str(_read_json(splits / "split.json").get("data") or "")
    except (UsageError, AttributeError):  # not this report's to judge here: the split step names it
        return
    if not old or old == str(Path(data).resolve()):
        return
    broken = next((p for sub in ("trainval", "test") if (splits / sub).is_dir()
                   for p in sorted((splits / sub).rglob("*")) if p.is_symlink() and not p.exists()), None)
    if broken is not None:
        raise UsageError(f"{splits}: the earlier report's split links into {old}, which no longer holds it (e.g. "
                         f"{broken} points to {os.readlink(broken)}): the dataset moved? give it from {old}, or "
                         "choose another --out")


def make_test_split(data: Path, splits_dir: Path, test_fraction: float, seed: int) -> dict[str, Any]:
    """Write ``splits_dir/{trainval,test}`` (see the module docstring) and ``split.json``; return that JSON."""
    from hemseg.runtime.dataset import CASES_CSV, CATEGORIES_CSV, dataset_fingerprint, sample_ids, stem_table_text

    index, samples, groups, trainval_idx, test_idx = plan_test_split(data, test_fraction, seed)
    ids = sample_ids(samples)  # <category>/<stem> where category folders share file names
    for sub in ("trainval", "test"):
        if (splits_dir / sub).exists():
            shutil.rmtree(splits_dir / sub)
    how: set[str] = set()
    for sub, idx in (("trainval", trainval_idx), ("test", test_idx)):
        root = splits_dir / sub
        root.mkdir(parents=True, exist_ok=True)
        for i in idx:
            image_dst, mask_dst = _sample_dest(index, samples[i], root)
            how.add(_place(samples[i].image.resolve(), image_dst))
            how.add(_place(samples[i].mask.resolve(), mask_dst))
        if index.layout == "categories-csv":
            (root / CATEGORIES_CSV).write_text(stem_table_text("category", [(samples[i].stem, samples[i].category)
                                                                            for i in idx]))
        if groups is not None:  # the training inside the report splits trainval by case too
            (root / CASES_CSV).write_text(stem_table_text("case", [(samples[i].stem, groups[i]) for i in idx]))
    info = {
        "data": str(Path(data).resolve()), "data_fingerprint": dataset_fingerprint(index), "layout": index.layout,
        "test_fraction": test_fraction, "seed": seed, "n_samples": len(samples),
        "trainval": [ids[i] for i in trainval_idx], "test": [ids[i] for i in test_idx],
        "test_categories": {c: sum(1 for i in test_idx if samples[i].category == c)
                            for c in sorted({samples[i].category for i in test_idx})},
        "trainval_categories": {c: sum(1 for i in trainval_idx if samples[i].category == c)
                                for c in sorted({samples[i].category for i in trainval_idx})},
        "files": "symlinks" if how == {"symlink"} else ("copies" if how == {"copy"} else "symlinks and copies"),
        "split_unit": "sample" if groups is None else "case",
    }
    if groups is not None:
        info["cases_from"] = index.cases_from
        info["n_cases_test"] = len({groups[i] for i in test_idx})
        info["n_cases_trainval"] = len({groups[i] for i in trainval_idx})
    write_json(splits_dir / "split.json", info)
    log.info("test split: %d of %d sample(s) held out (%s)", len(test_idx), len(samples), info["files"])
    return info


# -- steps ---------------------------------------------------------------------------------------------------------
def _train_options(s: ReportSettings, model: str, no_preprocess: bool, recipe: str | None = None) -> dict[str, Any]:
    return dict(model=model, recipe=recipe or s.recipe, epochs=s.epochs, batch_size=s.batch_size, image_size=s.image_size,
                val_fraction=s.val_fraction, labels=s.labels, no_preprocess=no_preprocess, weights=s.weights_for(model),
                device=s.device, seed=s.seed, unet_base=s.unet_base, progress=s.progress)


#: training options that do not change what a step makes, left out of its key: the device (a run resumes on
#: another, as ``hemseg train --resume`` does; ``auto`` and what it resolves to are one) and the progress bars
NOT_IN_KEY = ("device", "progress")


def _step_key(options: dict[str, Any], data_fingerprint: str | None) -> dict[str, Any]:
    """A training step's settings key: its options without :data:`NOT_IN_KEY`, and the U-Net width only for the
    models that have one (a new --unet-base refused the finished FCN-ResNet50 steps)."""
    key = {k: v for k, v in options.items() if k not in NOT_IN_KEY}
    if key["model"] == MAIN_MODEL:
        key.pop("unet_base")
    return {**key, "data_fingerprint": data_fingerprint}


def _training_keys(s: ReportSettings, data_fingerprint: str | None) -> dict[str, dict[str, Any]]:
    """The settings key of every training step (``train:<run>``, ``cv:<model>``), by step name."""
    keys = {}
    for name in run_names(s):
        model, nopre, recipe = _run_model(name, s)
        keys[f"train:{name}"] = _step_key(_train_options(s, model, nopre, recipe), data_fingerprint)
    if s.cv_folds:
        keys[f"cv:{s.cv_model}"] = _step_key({**_train_options(s, s.cv_model, False), "folds": s.cv_folds},
                                             data_fingerprint)
    return keys


def _train(data: Path, run_dir: Path, options: dict[str, Any]) -> None:
    from hemseg.train.fit import RESUME_ADVICE
    from hemseg.train.trainer import run_training

    resume = (run_dir / "config.json").is_file()
    if resume:
        log.info("%s holds an interrupted or finished run: resuming it (the trainer checks its settings)", run_dir)
    token = RESUME_ADVICE.set("rerunning the same `hemseg report` command")
    try:
        run_training(data, run_dir, resume=resume, **options)
    finally:
        RESUME_ADVICE.reset(token)


def _drop_resume_state(run_dir: Path) -> None:
    """Remove a finished training step's last.pt (and its folds'): only ``--resume`` reads it, and a report reuses a
    finished step from steps.json without it; it held the optimizer's state beside the weights, 396 MB for each
    FCN-ResNet50 run even at 64 px (a small report took 1.6 GB: a QA finding of stop 52). Called after the step's
    steps.json entry is written, so an interrupted step keeps what resumes it."""
    freed = 0
    for last in [run_dir / "last.pt", *sorted(run_dir.glob("fold_*/last.pt"))]:
        try:
            size = last.stat().st_size
            last.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("%s: not removed (%s); only --resume needs it", last, exc.strerror or exc)
            continue
        freed += size
    if freed:
        log.info("%s: removed the finished run's last.pt (resume state, %.0f MB)", run_dir, freed / 1e6)


def _evaluate(run_dir: Path, test: Path, eval_dir: Path, s: ReportSettings, postprocess: bool) -> None:
    from hemseg.train.evaluate import evaluate_checkpoint

    evaluate_checkpoint(run_dir / "best.pt", test, eval_dir, labels=list(s.labels) if s.labels else None,
                        postprocess=postprocess, device=s.device, batch_size=s.batch_size, progress=s.progress)


def _checkpoint_key(path: Path) -> str | None:
    from hemseg.train.checkpoint import file_sha256

    return file_sha256(path) if path.is_file() else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(read_regular_text(path))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the step's result ({exc})") from None


# -- the whole report ------------------------------------------------------------------------------------------------
def run_names(s: ReportSettings) -> list[str]:
    """Run folder names under ``runs/`` in training order: main, ablation, the other models, the other recipe."""
    return [MAIN_MODEL, f"{MAIN_MODEL}_nopre"] + [m for m in s.comparison_models() if m != MAIN_MODEL] + \
        [f"{MAIN_MODEL}_{s.other_recipe}"]


def n_steps(s: ReportSettings) -> int:
    """How many steps :func:`run_report` runs (or reuses): split, train + eval per run, the post-processed eval,
    K-Means, and the cross-validation when asked for."""
    return 1 + 2 * len(run_names(s)) + 1 + 1 + (1 if s.cv_folds else 0)


def _run_model(name: str, s: ReportSettings) -> tuple[str, bool, str]:
    """``(model, no_preprocess, recipe)`` of the run folder ``name``."""
    if name == f"{MAIN_MODEL}_nopre":
        return MAIN_MODEL, True, s.recipe
    if name == f"{MAIN_MODEL}_{s.other_recipe}":
        return MAIN_MODEL, False, s.other_recipe
    return name, False, s.recipe


def machine_info(device: str) -> dict[str, Any]:
    """CPU model and count, the resolved torch device (GPU name when CUDA), OS, torch threads."""
    import torch

    from hemseg.train.device import describe, resolve_device

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": describe(resolve_device(device)), "cuda_available": bool(torch.cuda.is_available()),
            "platform": platform.platform(), "hostname": platform.node()}


def _check_data(data: Path, labels):
    """Refuse data that ``hemseg data check`` finds unusable (an unreadable file, a size or geometry mismatch, a
    layout problem), naming the first problems: found later, it would stop the report after its first model."""
    from hemseg.errors import DatasetError
    from hemseg.runtime.dataset import check_dataset

    if not data.is_dir():
        return  # the split step names it
    report = check_dataset(data, list(labels) if labels else None)
    if not report.usable:
        errors = report.error_lines()
        raise DatasetError(f"{data}: {len(errors)} problem(s), e.g. {errors[0]} (see hemseg data check {data})")
    if not report.totals().foreground_slices:
        which = f"equal to --label {list(labels)}" if labels else "nonzero"
        raise DatasetError(f"{data}: no mask has a lesion pixel ({which}); a report trains models on it (check "
                           "--label and the masks)")
    return report


def _lesion_at_size(samples, settings: ReportSettings) -> list[bool]:
    """Whether each sample shows a lesion pixel at the training size, as the trainings see it (masks resized by
    nearest neighbour: a lesion smaller than a pixel there vanishes)."""
    from hemseg.runtime.dataset import load_pair
    from hemseg.runtime.preprocess import resize_mask

    labels = list(settings.labels) if settings.labels else None
    out = []
    for sample in samples:
        _, mask = load_pair(sample, labels=labels)
        out.append(any(resize_mask(m, settings.image_size).any() for m in mask))
    return out


def planned_training_splits(plan, settings: ReportSettings) -> list[tuple[list[int], list[int]]]:
    """The (train, val) splits the report's trainings will draw inside its training split, as indices into the
    plan's samples: the one split of every model, then the cross-validation's folds. The same functions, seed and
    sample order (the split folder is the data's own subset, sorted alike) as ``hemseg train`` in the report."""
    from hemseg.train.split import stratified_kfold, stratified_split

    _, samples, groups, trainval_idx, _ = plan
    tv = sorted(trainval_idx)
    cats = [samples[i].category for i in tv]
    sub_groups = [groups[i] for i in tv] if groups is not None else None
    splits = [stratified_split(cats, settings.val_fraction, settings.seed, groups=sub_groups)]
    if settings.cv_folds:
        splits += stratified_kfold(cats, settings.cv_folds, settings.seed, groups=sub_groups)
    return [([tv[i] for i in train], [tv[i] for i in val]) for train, val in splits]


def check_training_lesions(data: Path, plan, lesion: list[bool], settings: ReportSettings) -> None:
    """Every training the report runs must see a lesion: the test split, the validation part or a fold can take
    all the samples that have one (found by the training itself, after --out and the earlier models)."""
    from hemseg.runtime.dataset import sample_ids

    _, samples, _, trainval_idx, test_idx = plan
    ids = sample_ids(samples)
    if not any(lesion):
        raise DatasetError(f"{data}: no mask shows a lesion pixel at the training size (--image-size "
                           f"{settings.image_size}): the lesions are smaller than a pixel there; give a larger "
                           "--image-size")
    if not any(lesion[i] for i in trainval_idx):
        raise DatasetError(f"{data}: the test split holds every sample with a lesion at the training size "
                           f"(--image-size {settings.image_size}: {sum(lesion)}; smaller lesions vanish there); the "
                           "models would train on none. Give more images with lesions, another --seed or "
                           "--test-fraction, or a larger --image-size")
    for k, (train, val) in enumerate(planned_training_splits(plan, settings)):
        if not any(lesion[i] for i in train):
            what = "each model's training" if k == 0 else f"fold {k} of the cross-validation"
            held = [ids[i] for i in val if lesion[i]]
            raise DatasetError(f"{data}: {what} would see no lesion: its validation part holds every training-split "
                               f"sample with one at --image-size {settings.image_size} ({', '.join(held[:3])}"
                               f"{', ...' if len(held) > 3 else ''}). Give more images with lesions, another --seed, "
                               "or a larger --image-size")


def check_out_folder(out: Path) -> None:
    """UsageError unless ``out`` is new, a folder holding nothing but hidden entries (a file browser's .DS_Store,
    which a report never writes), or an earlier report's (its steps.json): a report replaces splits/, REPORT.md,
    report.json and its figures (it deleted a user's DIR/splits/test/* and replaced their REPORT.md, exit 0)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and not (out / "steps.json").is_file() and any(not p.name.startswith(".") for p in out.iterdir()):
        what = "steps.json is not a file" if (out / "steps.json").exists() else "no steps.json"
        raise UsageError(f"--out {out}: holds other files and no hemseg report ({what}); a report replaces "
                         "splits/, REPORT.md, report.json and its figures there: choose a new or empty folder")


def run_report(data: str | Path, out: str | Path, settings: ReportSettings, command: str | None = None) -> dict:
    """Run every step of the report into ``out``, write ``report.json`` and ``REPORT.md``; return the report dict."""
    from hemseg.train.eval_report import refuse_inside
    from hemseg.train.plots import plot_metric_bars, plot_training_curves
    from hemseg.train.report_md import write_report_md

    data, out = Path(data), Path(out)
    refuse_inside(out, dataset=data)  # its splits (copies of the data), runs and evals went into the dataset
    check_out_folder(out)
    from hemseg.train.device import resolve_device

    resolve_device(settings.device)  # --device cuda without a GPU fails now, not after the split step wrote --out
    settings.check_weights()  # a --weights file that does not load or fit fails now, naming it (no empty --out)
    checked = _check_data(data, settings.labels)  # every pair readable before hours of training (no empty --out)
    if checked is not None:  # a split or a fold count the data cannot give fails now, not after the models trained
        plan = plan_test_split(data, settings.test_fraction, settings.seed)
        _, samples, groups, trainval_idx, test_idx = plan
        check_cv_folds(data, settings.cv_folds, groups, trainval_idx, test_idx)
        check_training_lesions(data, plan, _lesion_at_size(samples, settings), settings)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "steps.json").is_file():  # the folder is a report's from now on (a rerun after a stop is let in)
        write_json(out / "steps.json", {})
    started = dt.datetime.now(dt.timezone.utc)
    t_start = time.perf_counter()
    s = settings
    steps = Steps(out, total=n_steps(s))
    splits = out / "splits"
    trainval, test = splits / "trainval", splits / "test"

    from hemseg.runtime.dataset import dataset_fingerprint, discover

    source_fp = dataset_fingerprint(discover(data)) if data.is_dir() else None
    split_key = {"data_fingerprint": source_fp, "test_fraction": s.test_fraction, "seed": s.seed}
    # a rerun into the same --out with other settings is refused before any step runs (not after hours of the
    # steps that are new)
    steps.check("split", split_key)
    for name, key in _training_keys(s, source_fp).items():
        steps.check(name, key)
    _check_split_links(splits, data)
    steps.run("split", split_key, [splits / "split.json", trainval, test],
              lambda: make_test_split(data, splits, s.test_fraction, s.seed))
    split = _read_json(splits / "split.json")
    train_keys = _training_keys(s, split["data_fingerprint"])

    for name in run_names(s):
        model, nopre, recipe = _run_model(name, s)
        options = _train_options(s, model, nopre, recipe)
        run_dir = out / "runs" / name
        steps.run(f"train:{name}", train_keys[f"train:{name}"], [run_dir / "metrics.json", run_dir / "best.pt"],
                  lambda r=run_dir, o=options: _train(trainval, r, o))
        _drop_resume_state(run_dir)
        evals = [(name, False)] + ([(f"{name}_postprocess", True)] if name == MAIN_MODEL else [])
        for eval_name, post in evals:
            eval_dir = out / "evals" / eval_name
            steps.run(f"eval:{eval_name}", {"checkpoint_sha256": _checkpoint_key(run_dir / "best.pt"),
                                            "postprocess": post, "labels": s.labels, "test": split["test"]},
                      [eval_dir / "summary.json"],
                      lambda r=run_dir, e=eval_dir, p=post: _evaluate(r, test, e, s, p))

    from hemseg.runtime.preprocess import PreprocessSpec
    from hemseg.train.kmeans import evaluate_kmeans

    km_spec = PreprocessSpec(size=s.image_size)
    steps.run("kmeans", {"k": KMEANS_K, "seed": s.seed, "preprocess": km_spec.to_dict(), "labels": s.labels,
                         "test": split["test"]}, [out / "kmeans" / "summary.json"],
              lambda: evaluate_kmeans(test, out / "kmeans", spec=km_spec, k=KMEANS_K,
                                      labels=list(s.labels) if s.labels else None, seed=s.seed))

    if s.cv_folds:
        cv_dir = out / "cv" / s.cv_model
        options = {**_train_options(s, s.cv_model, False), "folds": s.cv_folds}
        steps.run(f"cv:{s.cv_model}", train_keys[f"cv:{s.cv_model}"], [cv_dir / "metrics.json"],
                  lambda: _train(trainval, cv_dir, options))
        _drop_resume_state(cv_dir)

    report = collect(out, s, split, steps.timings)
    report["not_in_this_report"] = _not_in_report(out, s)
    if report["not_in_this_report"]:
        log.warning("%s: %s are of an earlier report with other --models / --folds, not part of this one (REPORT.md "
                    "says so; remove them when done with them)", out, ", ".join(report["not_in_this_report"]))
    t0 = time.perf_counter()
    curves = [(n, out / "runs" / n / "history.csv") for n in run_names(s)]
    report["figures"] = {
        "curves": plot_training_curves(curves, out / "curves.png"),
        "metrics": plot_metric_bars(report["bar_chart"], out / "metrics.png"),
    }
    report["timings"]["figures"] = {"wall_s": time.perf_counter() - t0, "reused": False}
    report.update(command=command, started=started.isoformat(timespec="seconds"),
                  finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  total_wall_s=time.perf_counter() - t_start, machine=machine_info(s.device))
    from hemseg.train.device import versions

    report["versions"] = versions()
    report = json_safe(report)
    write_json(out / "report.json", report)
    write_report_md(out / "REPORT.md", report)
    log.info("report written: %s", out / "REPORT.md")
    return report


def _not_in_report(out: Path, s: ReportSettings) -> list[str]:
    """The run, evaluation and cross-validation folders in ``out`` that this report's settings do not make: left by
    an earlier report into the same folder with other ``--models`` or ``--cv-model`` (never deleted: they hold
    trained models), named in REPORT.md so they are not read as this report's."""
    names = run_names(s)
    ours = {"runs": set(names), "evals": set(names) | {f"{MAIN_MODEL}_postprocess"},
            "cv": {s.cv_model} if s.cv_folds else set()}
    return [f"{group}/{d.name}" for group, keep in ours.items() if (out / group).is_dir()
            for d in sorted((out / group).iterdir()) if d.is_dir() and d.name not in keep]


# -- reading the numbers back ----------------------------------------------------------------------------------------
def _kmeans_warnings(folder: Path) -> list[str]:
    """The warnings of one K-Means report (its summary.json, beside the top summary the tables read)."""
    summary = folder / "summary.json"
    return list(_read_json(summary).get("warnings") or []) if summary.is_file() else []


def _metrics_block(summary: dict[str, Any]) -> dict[str, Any]:
    block = {k: summary.get(k) for k in TABLE_KEYS}
    block.update({f"{k}_std": summary.get(f"{k}_std") for k in TABLE_KEYS})
    block["n_images"] = summary.get("n_images")
    block["dice_global"] = summary.get("dice_global")
    block["n_hd95_undefined"] = (summary.get("n_nan") or {}).get("hd95")
    return block


def paired_vs(base_eval: Path, other_eval: Path) -> dict[str, Any]:
    """The other run's Dice minus the base run's on the same test images with 95 % paired-bootstrap intervals
    (:func:`hemseg.train.eval_report.compare_reports`); ``{}`` (logged) when they cannot be paired."""
    from hemseg.train.eval_report import compare_reports

    try:
        return compare_reports(base_eval, other_eval)
    except HemsegError as exc:
        log.warning("no paired comparison of %s with %s: %s", other_eval, base_eval, exc)
        return {}


def collect(out: Path, s: ReportSettings, split: dict[str, Any], timings: dict[str, Any]) -> dict[str, Any]:
    """The report dict: every number read from the JSON files under ``out`` (see the module docstring)."""
    from hemseg.train.models import build_model, count_parameters

    params: dict[str, int] = {}

    def n_params(model: str, kwargs: dict[str, Any]) -> int:
        key = json.dumps([model, kwargs], sort_keys=True)
        if key not in params:
            params[key] = count_parameters(build_model(model, **kwargs))
        return params[key]

    runs: dict[str, dict[str, Any]] = {}
    for name in run_names(s):
        model, nopre, recipe = _run_model(name, s)
        metrics = _read_json(out / "runs" / name / "metrics.json")
        config = _read_json(out / "runs" / name / "config.json")
        test = _read_json(out / "evals" / name / "summary.json")
        kwargs = config.get("model_kwargs") or {}
        runs[name] = {
            "model": model, "recipe": recipe, "steps": metrics.get("steps"), "model_kwargs": kwargs,
            "preprocess": not nopre, "preprocess_spec": config["preprocess"],
            "params": n_params(model, kwargs), "init": metrics.get("init"),
            "epochs_trained": metrics.get("epochs_trained"), "best_epoch": metrics.get("epoch"),
            "val_dice": metrics.get("dice"), "val_dice_tuned": metrics.get("val_dice_tuned"),
            "selection": metrics.get("selection"),
            "val_dice_selected": {"pooled": metrics.get("dice_global"), "mean": metrics.get("dice")}.get(
                metrics.get("selection")),
            "threshold": metrics.get("threshold"), "n_train_samples": metrics.get("n_train_samples"),
            "n_val_samples": metrics.get("n_val_samples"), "train_wall_s": metrics.get("wall_time_s"),
            "train_images_per_s": metrics.get("images_per_s"), "device": metrics.get("device"),
            "test": _metrics_block(test), "test_warnings": list(test.get("warnings") or []),
            "test_slices_per_s": test.get("slices_per_s"),
            "test_same_data_as_training": test.get("same_data_as_training"),
            "test_images_seen_in_training": test.get("training_images_in_data"),
            "files": {"metrics": f"runs/{name}/metrics.json", "history": f"runs/{name}/history.csv",
                      "eval": f"evals/{name}/summary.json"},
        }
    for name in run_names(s):
        if name != MAIN_MODEL:
            runs[name]["vs_main"] = paired_vs(out / "evals" / MAIN_MODEL, out / "evals" / name)
    main_eval = _read_json(out / "evals" / MAIN_MODEL / "summary.json")
    post_eval = _read_json(out / "evals" / f"{MAIN_MODEL}_postprocess" / "summary.json")
    km = _read_json(out / "kmeans" / "summary.json")
    classical = {
        "kmeans_raw": {**{k: km["raw"].get(k) for k in TABLE_KEYS}, "n_images": km["raw"].get("n_images"),
                       "dice_global": km["raw"].get("dice_global")},
        "kmeans_cleaned": {**{k: km["cleaned"].get(k) for k in TABLE_KEYS}, "n_images": km["cleaned"].get("n_images"),
                           "dice_global": km["cleaned"].get("dice_global")},
        "fcn": runs[MAIN_MODEL]["test"],
        "fcn_postprocess": _metrics_block(post_eval),
        "kmeans_config": km.get("config"), "postprocess": post_eval.get("postprocess"),
        # rows of the baseline table: their evaluations' warnings go to REPORT.md's as the runs' do (QA, stop 55)
        "warnings": {"K-Means (raw)": _kmeans_warnings(out / "kmeans" / "raw"),
                     "K-Means + cleaning": _kmeans_warnings(out / "kmeans" / "cleaned"),
                     "FCN-ResNet50 + post-processing": list(post_eval.get("warnings") or [])},
    }
    cv = None
    if s.cv_folds:
        cvm = _read_json(out / "cv" / s.cv_model / "metrics.json")
        cv = {"model": s.cv_model, "title": MODEL_TITLES[s.cv_model], "k": cvm.get("n_folds"),
              "folds": [{"fold": f.get("fold", i), "n_train_samples": f.get("n_train_samples"),
                         "n_val_samples": f.get("n_val_samples"), "best_epoch": f.get("epoch"),
                         **{k: f.get(k) for k in CV_KEYS}} for i, f in enumerate(cvm["folds"], 1)],
              "mean": {k: cvm["mean"].get(k) for k in CV_KEYS}, "std": {k: cvm["std"].get(k) for k in CV_KEYS},
              "n_scored": cvm.get("n_scored", cvm.get("n_folds")),
              "wall_s": cvm.get("wall_time_s"), "file": f"cv/{s.cv_model}/metrics.json"}
    comparison = s.comparison_models()
    bars = {"FCN-ResNet50": runs[MAIN_MODEL]["test"], "FCN-ResNet50 (no preprocessing)":
            runs[f"{MAIN_MODEL}_nopre"]["test"], "FCN-ResNet50 + post-processing": classical["fcn_postprocess"]}
    bars.update({MODEL_TITLES[m]: runs[m]["test"] for m in comparison if m != MAIN_MODEL})
    bars[f"FCN-ResNet50 ({s.other_recipe} recipe)"] = runs[f"{MAIN_MODEL}_{s.other_recipe}"]["test"]
    bars.update({"K-Means (raw)": classical["kmeans_raw"], "K-Means + cleaning": classical["kmeans_cleaned"]})
    return {
        "settings": s.to_dict(), "data": split["data"],
        "split": {k: split[k] for k in ("data_fingerprint", "layout", "test_fraction", "seed", "n_samples",
                                        "test_categories", "trainval_categories", "files")}
        | {"n_test": len(split["test"]), "n_trainval": len(split["trainval"]), "test_stems": split["test"]}
        | {k: split.get(k) for k in ("split_unit", "cases_from", "n_cases_test", "n_cases_trainval")},
        "runs": runs,
        "ablation": {"with_preprocessing": runs[MAIN_MODEL]["test"],
                     "without_preprocessing": runs[f"{MAIN_MODEL}_nopre"]["test"]},
        "per_category": main_eval.get("per_category", {}),
        "comparison": [{"run": m, "title": MODEL_TITLES[m]} for m in comparison],
        "recipes": [{"run": MAIN_MODEL, "recipe": s.recipe},
                    {"run": f"{MAIN_MODEL}_{s.other_recipe}", "recipe": s.other_recipe}],
        "classical": classical, "cv": cv, "bar_chart": bars,
        "timings": dict(timings),
    }


MODEL_TITLES = {"fcn_resnet50": "FCN-ResNet50", "unet": "U-Net", "attention_unet": "Attention U-Net"}
