"""Train one model on one train/validation split: step-based, with a recipe, checkpoints, history, resume and
threshold tuning.

The run is counted in optimizer steps (:class:`FitSettings` ``total_steps``, or planned from a wall-clock budget,
see below). Batches come from the recipe's sampler (:mod:`hemseg.train.sampling`), the learning rate follows its
schedule (:mod:`hemseg.train.schedule`), and the model is validated every ``val_every`` steps and after the last one.

Files written into ``run_dir`` (each atomically):

- ``best.pt``: the hemseg checkpoint (:mod:`hemseg.train.checkpoint`) of the validation with the best score: the
  pooled validation Dice for the ``hemseg`` recipe, the mean per-slice Dice for ``paper`` (both at threshold 0.5; the
  first validation always counts as an improvement). Validation scores each slice at its image's own size, as
  ``hemseg eval`` and deployment do (:func:`hemseg.train.loop.evaluate` ``native_masks``); the loss stays at the
  network's size. With ``--ema`` the averaged weights are validated and saved.
  After the last step its ``config["threshold"]`` is replaced by the threshold tuned on the validation predictions of
  that model (:func:`hemseg.runtime.postprocess.tune_threshold`, candidates 0.01 ... 0.99 even in logit, on the same
  kind of Dice) and ``config["threshold_tuning"]`` records the candidates and the Dice at the tuned threshold.
- ``last.pt``: the checkpoint at the latest validation plus what ``--resume`` needs: ``optimizer_state``,
  ``scaler_state`` (fp16 only), ``ema_state`` (``--ema``), ``aux_state`` (the auxiliary head of ``--aux-loss``) and
  ``train_state`` (step, total steps, history, best so far, RNG states of torch and of the sampler's generator,
  accumulated timings, the original ``init``). All of it loads with ``torch.load(weights_only=True)``.
- ``history.csv``: one row per validation, columns :data:`HISTORY_COLUMNS` (``epoch`` is the number of passes over the
  training split so far, fractional; ``val_pred_fraction`` is the share of validation pixels predicted as lesion, 0
  when the model has collapsed to background, which :func:`fit` warns about after :data:`COLLAPSE_EPOCHS` such
  validations; ``precision`` is fp32, bf16 or fp16).
- ``metrics.json``: the best validation's metrics (at threshold 0.5, which ``metrics_threshold`` says: the numbers
  the model was selected on), the tuned ``threshold`` and ``val_dice_tuned`` (optimistic: tuned on the same data), ``steps`` (optimizer steps
  trained), ``minutes_budget`` (None without ``--minutes``), ``seconds`` (wall time of training, validations and
  tuning, over all sessions of a resumed run), ``recipe``, ``amp`` (the compute precision: fp32, bf16, fp16; the
  key ``precision`` is the metric), timings, ``init``, ``device``. Its presence
  marks the split as finished.

Run length from a wall-clock budget (``minutes``) and ``--patch auto``: :mod:`hemseg.train.budget`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import logging
import math
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader

from hemseg.errors import UsageError
from hemseg.progress import shown
from hemseg.runtime.io.regular import read_regular_text
from hemseg.runtime.io.writers import atomic_write_bytes
from hemseg.runtime.postprocess import DEFAULT_CANDIDATES, tune_threshold
from hemseg.runtime.preprocess import PreprocessSpec
from hemseg.train.budget import PREFETCH_FACTOR, plan_budget, replan, row_steps
from hemseg.train.checkpoint import read_checkpoint, save_checkpoint
from hemseg.train.data import SliceDataset, SliceItem
from hemseg.train.deep_supervision import DeepSupervised, supports
from hemseg.train.device import Precision, describe
from hemseg.train.ema import WeightEMA
from hemseg.train.eval_report import write_json
from hemseg.train.loop import VAL_KEYS, VALIDATION_THRESHOLD, SegmentationLoss, evaluate, train_step
from hemseg.train.models import build_model, set_prior_bias, zero_init_residual
from hemseg.train.precise_bn import PRECISE_BN_SLICES, recompute_bn_stats
from hemseg.train.recipes import Recipe
from hemseg.train.sampling import EpochBatches, ForegroundBatches, batches_per_epoch
from hemseg.train.schedule import AUTO_PATCH, lr_factor, patch_candidates, warmup_steps
from hemseg.train.transforms import train_transform
from hemseg.train.weights import initialize
from hemseg.train.workers import ignore_sigterm, warn_if_crash_prone

log = logging.getLogger(__name__)

#: what finishes an interrupted run, named in the interrupt's warning: a training step of ``hemseg report`` sets
#: "rerunning the same `hemseg report` command" (its users never typed a `hemseg train` command)
RESUME_ADVICE: ContextVar[str] = ContextVar("RESUME_ADVICE", default="`hemseg train ... --resume` with the same options")

HISTORY_COLUMNS = ("step", "epoch", "train_loss", "val_loss", "val_dice", "val_dice_global", "val_iou",
                   "val_pred_fraction", "lr", "seconds", "precision")
#: consecutive validations without a single predicted lesion pixel on validation data that has lesions before
#: :func:`fit` warns that the model has collapsed to background
COLLAPSE_EPOCHS = 3


def collapsed_to_background(history: Sequence[dict], epochs: int = COLLAPSE_EPOCHS) -> bool:
    """Whether the last ``epochs`` rows of ``history`` all predicted no foreground pixel on validation data that has
    some (``val_pred_fraction == 0 < val_true_fraction``). Rows without these keys (older runs) never count."""
    tail = list(history)[-epochs:]
    return len(tail) == epochs and all(
        r.get("val_pred_fraction") == 0 and (r.get("val_true_fraction") or 0) > 0 for r in tail)


@dataclass
class FitSettings:
    """Everything fixed for one split. ``base_config`` (JSON-able) goes into every checkpoint's config.

    Run length: ``total_steps``, or ``deadline`` (a ``time.monotonic()`` value) to plan the steps from a budget of
    ``minutes_budget`` minutes; exactly one of them."""

    run_dir: Path
    model: str
    model_kwargs: dict[str, Any]
    spec: PreprocessSpec
    base_config: dict[str, Any]
    device: torch.device
    recipe: Recipe
    precision: Precision
    total_steps: int | None = None
    deadline: float | None = None
    minutes_budget: float | None = None
    val_every: int | None = None
    crop: float = 0.0
    #: a side, None (whole slices) or "auto" (the budget chooses, see :mod:`hemseg.train.budget`)
    patch: int | str | None = None
    ema_decay: float | None = None
    weights: str = "auto"
    pos_weight: float | None = None
    workers: int = 0
    seed: int = 0
    resume: bool = False
    progress: bool = True
    augment: bool = True
    label: str = ""  #: shown in progress bars and logs, e.g. "fold 2/5 "
    extra_metrics: dict[str, Any] = field(default_factory=dict)


def check_resumable(run_dir: Path) -> None:
    """Refuse to resume a started run (``metrics.json`` or ``history.csv`` there) without its ``last.pt``: from
    scratch it would overwrite them. A run (or fold) not yet begun has none of them; one stopped during its first
    validation, between writing ``best.pt`` and ``last.pt`` (``history.csv`` follows them), has ``best.pt`` alone and
    starts afresh (it reaches the same ``best.pt`` again: the run is seeded)."""
    held = [n for n in ("best.pt", "metrics.json", "history.csv") if (run_dir / n).exists()]
    if held == ["best.pt"] and not (run_dir / "last.pt").is_file():
        log.info("%s: stopped during its first validation (best.pt without last.pt and history.csv): starting it "
                 "afresh", run_dir)
        return
    if held and not (run_dir / "last.pt").is_file():
        raise UsageError(f"--resume: {run_dir / 'last.pt'} is missing, so the run in {run_dir} ({', '.join(held)}) "
                         "cannot be continued; train into a new --out (starting it afresh would overwrite its "
                         "best.pt)")


def _history_csv(rows: Sequence[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HISTORY_COLUMNS)
    for r in rows:
        w.writerow([r["step"]] + [f"{float(r.get(c, math.nan)):.6g}" for c in HISTORY_COLUMNS[1:-1]]
                   + [r.get("precision", "")])
    return buf.getvalue().encode()


def write_history(path: Path, rows: Sequence[dict]) -> None:
    atomic_write_bytes(path, _history_csv(rows))


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "loader": gen.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _config(s: FitSettings, init: str, step: int, epoch: float, metrics: dict,
            threshold: float = 0.5) -> dict[str, Any]:
    cfg = dict(s.base_config)
    cfg.update(model=s.model, model_kwargs=dict(s.model_kwargs), preprocess=s.spec.to_dict(), image_size=s.spec.size,
               threshold=float(threshold), init=init, epoch=round(float(epoch), 4), step=int(step),
               metrics=dict(metrics), recipe=s.recipe.name, precision=s.precision.name)
    return cfg


def _deep_supervision(s: FitSettings, model: torch.nn.Module) -> DeepSupervised | None:
    """The auxiliary head of the recipe's ``aux_weight``, for the models that have a ``layer3`` (FCN-ResNet50)."""
    if not s.recipe.aux_weight:
        return None
    if not supports(model):
        log.info("%sthe auxiliary loss needs FCN-ResNet50's layer3; %s trains without it", s.label, s.model)
        return None
    return DeepSupervised(model, s.recipe.aux_weight)


def _optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def _sampler(s: FitSettings, train_ds: SliceDataset, steps: int, gen: torch.Generator):
    if s.recipe.sampling == "epochs":
        return EpochBatches(len(train_ds), s.recipe.batch_size, steps, gen)
    return ForegroundBatches(train_ds.has_foreground, s.recipe.batch_size, s.recipe.foreground_share, steps, gen,
                             mark=bool(train_ds.patch))


def _stop_workers(batches) -> None:
    """End the worker processes of a loader left before its end, here in the training loop's own flow. Left to the
    iterator's ``__del__``, a SIGTERM (Ctrl-C) arriving while they are joined raised inside ``__del__``, where Python
    ignores exceptions ('Exception ignored in ...'): the run went on. ``_shutdown_workers`` is the method torch's
    ``__del__`` itself calls; a loader without workers has none."""
    stop = getattr(batches, "_shutdown_workers", None)
    if stop is not None:
        stop()


def _after_batches(s: FitSettings, train_ds: SliceDataset, steps: int, start_state: torch.Tensor,
                   consumed: int) -> torch.Generator:
    """The sampler's generator as it stands after the first ``consumed`` batches of a sampler of ``steps`` steps
    started from ``start_state``: DataLoader workers draw batches ahead of the steps, so the loader's generator is
    ahead of the step a checkpoint records. Drawing indices again costs microseconds."""
    gen = torch.Generator()
    gen.set_state(start_state)
    for _ in itertools.islice(iter(_sampler(s, train_ds, steps, gen)), consumed):
        pass
    return gen


def _bn_batches(s: FitSettings, train_items: Sequence[SliceItem]) -> list[torch.Tensor]:
    """The fixed input batches of the BatchNorm re-estimation: up to PRECISE_BN_SLICES training slices spread evenly
    over the split, without augmentation."""
    n = min(PRECISE_BN_SLICES, len(train_items))
    if n == 0:
        return []
    picks = [train_items[round(i * (len(train_items) - 1) / max(n - 1, 1))] for i in range(n)]
    ds = SliceDataset(picks, s.spec, None)
    xs = torch.stack([ds[i][0] for i in range(len(ds))])
    return list(torch.split(xs, s.recipe.batch_size))



class NativeMasks:
    """The validation slices' masks at their images' own sizes, in loader order, each unpacked when asked for
    (:meth:`SliceItem.native_mask`: None where the image is the network's size)."""

    def __init__(self, items: Sequence[SliceItem]) -> None:
        self.items = list(items)

    @classmethod
    def of(cls, items: Sequence[SliceItem]) -> "NativeMasks | None":
        return cls(items) if any(it.native is not None for it in items) else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index].native_mask()


@dataclass
class _Parts:
    """What :func:`fit` trains, validates and saves with, once built (or restored by ``--resume``)."""

    model: torch.nn.Module  #: validated and saved
    trained: torch.nn.Module  #: what the optimizer steps: ``model``, or ``aux`` wrapping it
    aux: DeepSupervised | None
    ema: WeightEMA | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    criterion: SegmentationLoss
    val_loader: DataLoader
    bn_batches: list[torch.Tensor]
    bpe: int  #: batches per pass over the training split
    init: str
    val_has_lesion: bool = True  #: False: Dice cannot rank checkpoints (see :func:`_warn_lesion_free_validation`)
    #: the validation masks at their images' own sizes (:class:`NativeMasks`), None when every image is the
    #: network's size
    val_native: Sequence | None = None
    #: the run length last.pt was saved with (a budget's re-plan comes after the save), None before the first save
    saved_total: int | None = None

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema.model if self.ema is not None else self.model


def _fresh_state(s: FitSettings, model: torch.nn.Module, aux: DeepSupervised | None,
                 train_items: Sequence[SliceItem]) -> dict[str, Any]:
    """Initialize the weights (``s.weights``, the recipe's zero-init and prior bias) and a new run's state."""
    init = initialize(model, s.model, s.weights, s.model_kwargs)
    if s.recipe.zero_init_residual and init == "random":
        log.info("%s%d residual blocks start as the identity (last BatchNorm scale 0)", s.label,
                 zero_init_residual(model))
    if s.recipe.prior_bias and not init.startswith("file:"):
        fg = sum(int(it.mask.sum()) for it in train_items) / max(sum(it.mask.size for it in train_items), 1)
        bias = set_prior_bias(model, fg)
        if aux is not None:
            aux.set_prior_bias(bias)
        log.info("%soutput bias set to the lesion prior: %.2f %% of the training pixels -> %.2f", s.label, 100 * fg,
                 bias)
    return {"step": 0, "total_steps": s.total_steps, "history": [], "best_score": -math.inf, "best_step": 0,
            "best_metrics": {}, "train_seconds": 0.0, "train_images": 0, "wall_s": 0.0, "init": init}


def _resumed_state(s: FitSettings, model: torch.nn.Module, aux: DeepSupervised | None,
                   payload: dict[str, Any]) -> dict[str, Any]:
    """Load the weights of ``last.pt``'s ``payload`` and return its run state (a new ``s.total_steps`` wins)."""
    model.load_state_dict(payload["state_dict"])
    if aux is not None:
        aux.head.load_state_dict(payload["aux_state"])
    state = dict(payload["train_state"])
    if s.total_steps is not None:
        if s.total_steps < state["step"]:
            raise UsageError(f"--resume: the run in {s.run_dir} has trained {state['step']} steps; its new length is "
                             f"{s.total_steps} steps: give a length of at least {state['step']} steps")
        state["total_steps"] = s.total_steps
    log.info("%sresuming %s after step %d of %d (best validation score %.4f at step %d)", s.label, s.run_dir,
             state["step"], state["total_steps"], state["best_score"], state["best_step"])
    return state


def _restore(payload: dict[str, Any], parts: _Parts, state: dict[str, Any], gen: torch.Generator) -> None:
    """The optimizer, GradScaler, EMA and RNG states of a resumed run."""
    parts.optimizer.load_state_dict(payload["optimizer_state"])
    if parts.scaler is not None and payload.get("scaler_state"):
        parts.scaler.load_state_dict(payload["scaler_state"])
    if parts.ema is not None and payload.get("ema_state"):
        parts.ema.load_state_dict(payload["ema_state"])
    _set_rng_state(state["rng"], gen)


def _validate(s: FitSettings, parts: _Parts, state: dict[str, Any], step: int, lr: float, train_s: float,
              loss_sum: float, loss_n: int, gen: torch.Generator) -> float:
    """Validate after ``step``, add the row to the history, save ``best.pt`` when the score improved and ``last.pt``
    (with what ``--resume`` needs) always, rewrite ``history.csv``, log, and warn once on a collapse to background.
    Returns the seconds this took, checkpoint writes included (what a re-plan must reserve per validation)."""
    recipe, run_dir, bpe = s.recipe, Path(s.run_dir), parts.bpe
    t0 = time.perf_counter()
    eval_model = parts.eval_model
    if parts.bn_batches:
        recompute_bn_stats(eval_model, parts.bn_batches, s.device, s.precision)
    va = evaluate(eval_model, parts.val_loader, parts.criterion, s.device, precision=s.precision, progress=False,
                  native_masks=parts.val_native)
    val_s = time.perf_counter() - t0
    # without a lesion in the validation split a Dice says nothing (a model that predicts nothing scores 1): NaN,
    # as metrics.json leaves it null (history.csv and the log showed a perfect 1.0)
    judged = parts.val_has_lesion
    row = {"step": step, "epoch": step / bpe, "train_loss": loss_sum / max(loss_n, 1), "val_loss": va["loss"],
           "val_dice": va["dice"] if judged else math.nan, "val_dice_global": va["dice_global"] if judged else math.nan,
           "val_iou": va["iou"] if judged else math.nan,
           "val_pred_fraction": va["pred_fraction"], "val_true_fraction": va["true_fraction"], "lr": lr,
           "seconds": train_s + val_s, "precision": s.precision.name}
    state["history"] = list(state["history"]) + [row]
    state["step"] = step
    state["train_seconds"] += train_s
    state["train_images"] += loss_n
    state["wall_s"] += train_s + val_s
    # on a lesion-free validation split a model that predicts nothing scores Dice 1: the latest model is kept
    score = (va["dice_global"] if recipe.selection == "pooled" else va["dice"]) if parts.val_has_lesion else step
    val_metrics = {**{k: va[k] for k in VAL_KEYS}, "dice_global": va["dice_global"], "val_loss": va["loss"]}
    config = _config(s, parts.init, step, step / bpe, val_metrics)
    improved = score > state["best_score"]
    if improved:
        state["best_score"], state["best_step"] = score, step
        state["best_metrics"] = val_metrics
        save_checkpoint(run_dir / "best.pt", eval_model, config)
    state["rng"] = _rng_state(gen)
    extra = {"optimizer_state": parts.optimizer.state_dict(), "train_state": state}
    if parts.scaler is not None:
        extra["scaler_state"] = parts.scaler.state_dict()
    if parts.ema is not None:
        extra["ema_state"] = parts.ema.state_dict()
    if parts.aux is not None:
        extra["aux_state"] = parts.aux.head.state_dict()
    save_checkpoint(run_dir / "last.pt", parts.model, config, extra=extra)
    parts.saved_total = int(state["total_steps"])  # what --resume continues to (a re-plan after it is not in last.pt)
    write_history(run_dir / "history.csv", state["history"])
    dice = f"{va['dice']:.4f} (pooled {va['dice_global']:.4f})" if judged else "n/a (no lesion in the validation split)"
    log.info("%sstep %d/%d (epoch %.1f): train loss %.4f, val loss %.4f, val Dice %s, lr %.2e (%.1f s)%s", s.label,
             step, state["total_steps"], step / bpe, row["train_loss"], va["loss"], dice, lr, row["seconds"],
             "  [best]" if improved else "")
    if collapsed_to_background(state["history"]) and not collapsed_to_background(state["history"][:-1]):
        first = "--recipe hemseg" if recipe.name == "paper" else "a longer run (--steps, --minutes)"
        log.warning("%sthe model has predicted no lesion pixel on any validation image for %d validations (%.2f %% "
                    "of the validation pixels are lesion): it has collapsed to background. Try %s, a lesion weight "
                    "(--pos-weight, e.g. 20), pretrained weights (--weights) or more training data", s.label,
                    COLLAPSE_EPOCHS, 100 * va["true_fraction"], first)
    return time.perf_counter() - t0


def _train(s: FitSettings, parts: _Parts, state: dict[str, Any], train_ds: SliceDataset,
           gen: torch.Generator) -> None:
    """The optimizer steps from ``state["step"]`` to ``state["total_steps"]``, validating every ``val_every`` steps
    and after the last one; under a budget each validation re-plans the steps left (:func:`replan`)."""
    recipe = s.recipe
    total = int(state["total_steps"])
    validations = state.get("validations") or recipe.validations
    val_every = s.val_every or (parts.bpe if recipe.sampling == "epochs" else max(1, total // max(validations, 1)))
    warmup = warmup_steps(recipe.warmup_steps, total)
    step = int(state["step"])
    loss_sum, loss_n, seg_t0 = 0.0, 0, time.perf_counter()

    def set_lr(k: int) -> float:
        lr = recipe.lr * lr_factor(k, total, warmup, recipe.schedule, recipe.poly_power)
        for g in parts.optimizer.param_groups:
            g["lr"] = lr
        return lr

    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=step, desc=f"{s.label}train", unit="step", leave=False, disable=not shown(s.progress))
    while step < total:
        # the loader's own generator only seeds worker processes; a separate one keeps the global RNG (augmentation)
        # and the sampler's generator untouched when a loader is created, so a resumed run draws what a straight
        # run draws. With workers the augmentation runs in them, seeded from seed + step when the loader starts:
        # a loader starts at each validation (where a resumed run starts one), with the sampler's generator where
        # those steps left it (the workers had drawn batches ahead), so a stopped and resumed run is the same run
        start_state, start_step, loader_steps = gen.get_state(), step, total - step
        loader = DataLoader(train_ds, batch_sampler=_sampler(s, train_ds, loader_steps, gen), num_workers=s.workers,
                            pin_memory=s.device.type == "cuda",
                            prefetch_factor=PREFETCH_FACTOR if s.workers else None,
                            generator=torch.Generator().manual_seed(s.seed + step),
                            worker_init_fn=ignore_sigterm if s.workers else None)
        replanned = False
        batches = iter(loader)
        for x, y in batches:
            lr = set_lr(step)
            loss, _ = train_step(parts.trained, x, y, parts.criterion, parts.optimizer, s.device, s.precision,
                                 parts.scaler)
            if parts.ema is not None:
                parts.ema.update(parts.model)
            step += 1
            loss_sum, loss_n = loss_sum + loss * x.shape[0], loss_n + x.shape[0]
            bar.update(1)
            if s.progress:
                bar.set_postfix(loss=f"{loss_sum / loss_n:.4f}", lr=f"{lr:.2e}")
            if step % val_every and step != total:
                continue
            if s.device.type == "cuda":
                torch.cuda.synchronize(s.device)
            train_s = time.perf_counter() - seg_t0
            if s.workers:
                gen.set_state(_after_batches(s, train_ds, loader_steps, start_state, step - start_step).get_state())
            val_with_writes_s = _validate(s, parts, state, step, lr, train_s, loss_sum, loss_n, gen)
            loss_sum, loss_n = 0.0, 0
            if s.deadline is not None and step < total:
                new_total = replan(s, step, total, train_s / max(row_steps(state["history"]), 1), val_with_writes_s,
                                   val_every)
                if new_total != total:
                    log.info("%sre-planned to %d steps (was %d) to end within the budget", s.label, new_total, total)
                    total = state["total_steps"] = new_total
                    bar.total = total
                    bar.refresh()
                    replanned = True
            seg_t0 = time.perf_counter()
            if replanned or s.workers:
                _stop_workers(batches)
                break  # a new sampler for the new length; with workers, a new loader (see above)
    bar.close()


def _warn_lesion_free_validation(s: FitSettings, n_val: int) -> None:
    log.warning("%sthe validation split (%d slice(s)) has no lesion pixel: Dice cannot rank the checkpoints there (a "
                "model that predicts nothing scores 1), so best.pt is the last validated model, its threshold stays "
                "0.5, and metrics.json leaves its Dice, IoU, precision and recall empty (null). Give validation "
                "images with lesions (--splits FILE, a larger --val-fraction, more cases with lesions)", s.label,
                n_val)


def _tune(s: FitSettings, parts: _Parts, state: dict[str, Any], n_val: int) -> dict[str, Any]:
    """Tune the threshold on the validation predictions of ``best.pt``'s model and write it into that checkpoint;
    returns its config. Without a lesion in the validation split there is nothing to tune on: 0.5 is kept."""
    t0 = time.perf_counter()
    best_path = Path(s.run_dir) / "best.pt"
    best = read_checkpoint(best_path)
    tune_model = parts.eval_model
    tune_model.load_state_dict(best["state_dict"])  # with the BatchNorm statistics it was validated with
    if not parts.val_has_lesion:
        config = {**best["config"], "threshold": 0.5,
                  "threshold_tuning": {"skipped": "the validation split has no lesion pixel", "metric": None,
                                       "val_dice": None, "n_val_slices": n_val}}
        save_checkpoint(best_path, tune_model, config)
        return config
    va = evaluate(tune_model, parts.val_loader, None, s.device, collect=True, precision=s.precision, progress=False,
                  native_masks=parts.val_native)
    metric = "pooled" if s.recipe.selection == "pooled" else "mean"
    threshold, tuned_dice = tune_threshold(va.pop("probs"), va.pop("masks"), metric=metric)
    config = dict(best["config"])
    config["threshold"] = float(threshold)
    config["threshold_tuning"] = {"candidates": list(DEFAULT_CANDIDATES), "metric": metric,
                                  "val_dice": float(tuned_dice), "val_dice_at_0.5": float(
                                      va["dice_global"] if metric == "pooled" else va["dice"]),
                                  "n_val_slices": n_val}
    save_checkpoint(best_path, tune_model, config)
    state["wall_s"] += time.perf_counter() - t0
    log.info("%stuned threshold %.4g: val Dice (%s) %.4f (%.4f at 0.5)", s.label, threshold, metric, tuned_dice,
             config["threshold_tuning"]["val_dice_at_0.5"])
    if threshold in (DEFAULT_CANDIDATES[0], DEFAULT_CANDIDATES[-1]):
        log.info("%sthe tuned threshold %.4g is the last candidate: the model's probabilities are nearly all 0 or 1 "
                 "(common with a Dice loss), or too few validation lesions to judge", s.label, threshold)
    return config


def _metrics(s: FitSettings, parts: _Parts, state: dict[str, Any], tuning: dict[str, Any], session_s: float,
             n_train: int, n_val: int) -> dict[str, Any]:
    """``metrics.json``: the best validation's metrics, the tuned threshold, the run's length and timings."""
    bpe, history = parts.bpe, state["history"]
    best_row = next((r for r in history if r["step"] == state["best_step"]), {})
    tuned = tuning["threshold_tuning"]["val_dice"]
    scored = {} if parts.val_has_lesion else dict.fromkeys(("dice", "dice_global", "iou", "precision", "recall"))
    metrics: dict[str, Any] = {
        **state["best_metrics"], **scored, "step": state["best_step"], "epoch": round(state["best_step"] / bpe, 4),
        # the metrics above are at the validation's fixed threshold, the model's own (tuned) one follows: a script
        # pairing "dice" with "threshold" read a Dice at 0.5 as the tuned threshold's
        "metrics_threshold": VALIDATION_THRESHOLD,
        "threshold": float(tuning["threshold"]), "val_dice_tuned": None if tuned is None else float(tuned),
        "selection": tuning["threshold_tuning"]["metric"] or "last", "val_has_lesion": parts.val_has_lesion,
        "steps": state["step"],
        "epochs_trained": round(state["step"] / bpe, 4), "minutes_budget": s.minutes_budget,
        "seconds": state["wall_s"], "wall_time_s": state["wall_s"], "session_seconds": session_s,
        "images_per_s": state["train_images"] / max(state["train_seconds"], 1e-9),
        "seconds_per_step": state["train_seconds"] / max(state["step"], 1), "recipe": s.recipe.name,
        "amp": _precisions(history, s.precision.name), "ema": s.ema_decay, "aux_loss": parts.aux.weight if parts.aux is not None else 0.0,
        "batch_size": s.recipe.batch_size, "patch": state["patch"], "patch_plan": state.get("patch_plan"),
        "lr": s.recipe.lr, "best_val_loss": best_row.get("val_loss"), "init": parts.init,
        "device": describe(s.device), "n_train_slices": n_train, "n_val_slices": n_val,
        "checkpoint": str((Path(s.run_dir) / "best.pt").absolute())}  # (relative to the shell's folder, it named
    # nothing once read from elsewhere: a QA finding of stop 52)
    metrics.update(s.extra_metrics)
    return metrics


def _precisions(history: Sequence[dict[str, Any]], current: str) -> str:
    """The compute precision of the run: ``bf16+fp32`` when sessions of a resumed run trained in different ones
    (history.csv says which step in which)."""
    said = [str(r.get("precision") or "") for r in history]
    return "+".join(dict.fromkeys(p for p in [*said, current] if p))


def fit(s: FitSettings, train_items: Sequence[SliceItem], val_items: Sequence[SliceItem]) -> dict[str, Any]:
    """Train (or resume) on one split and return its metrics (also written to ``run_dir/metrics.json``)."""
    run_dir = Path(s.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    last_path, metrics_path = run_dir / "last.pt", run_dir / "metrics.json"
    device, recipe = s.device, s.recipe
    session_start = time.monotonic()

    torch.manual_seed(s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    model = build_model(s.model, **s.model_kwargs)
    aux = _deep_supervision(s, model)
    trained = aux if aux is not None else model
    if s.resume:
        check_resumable(run_dir)
    payload = read_checkpoint(last_path) if s.resume and last_path.is_file() else None
    state = (_fresh_state(s, model, aux, train_items) if payload is None
             else _resumed_state(s, model, aux, payload))
    if payload is not None and s.deadline is not None:
        # a resumed split keeps the steps it planned from its budget (the schedule decays over them): no new plan
        s = dataclasses.replace(s, deadline=None)
    trained.to(device)
    if s.precision.channels_last:
        trained.to(memory_format=torch.channels_last)
    optimizer = _optimizer(trained, recipe)
    scaler = torch.amp.GradScaler("cuda") if s.precision.scaler and device.type == "cuda" else None
    ema = WeightEMA(model, s.ema_decay) if s.ema_decay else None
    criterion = SegmentationLoss(s.pos_weight, recipe.dice)

    def make_train_ds(patch: int | None) -> SliceDataset:
        return SliceDataset(train_items, s.spec, train_transform(recipe.augment) if s.augment else None,
                            crop=s.crop if s.augment else 0.0, patch=patch,
                            gin=recipe.augment.gin if s.augment else 0.0)

    # the patch of a resumed run is the one it was planned with; --patch auto is decided by a budget (see
    # hemseg.train.budget) for the hemseg recipe, and is whole slices with a fixed run length or the paper recipe (as
    # the paper trained)
    patch = state["patch"] if "patch" in state else (None if s.patch == AUTO_PATCH else s.patch)
    auto = s.patch == AUTO_PATCH and "patch" not in state
    if auto and state["total_steps"] is not None:
        log.info("%s--patch auto with a fixed run length: whole slices (patches are chosen only to fit a --minutes "
                 "budget)", s.label)
    options = ([None, *patch_candidates(s.spec.size)]
               if auto and state["total_steps"] is None and recipe.sampling == "foreground" else [patch])
    warn_if_crash_prone(s.workers)
    val_loader = DataLoader(SliceDataset(val_items, s.spec, None), batch_size=recipe.batch_size, shuffle=False,
                            num_workers=s.workers, pin_memory=device.type == "cuda",
                            persistent_workers=s.workers > 0, worker_init_fn=ignore_sigterm if s.workers else None)
    parts = _Parts(model=model, trained=trained, aux=aux, ema=ema, optimizer=optimizer, scaler=scaler,
                   criterion=criterion.to(device), val_loader=val_loader,
                   bn_batches=_bn_batches(s, train_items) if recipe.precise_bn else [],
                   bpe=batches_per_epoch(len(train_items), recipe.batch_size), init=state["init"],
                   val_has_lesion=any(it.mask.any() or (it.native is not None and it.native.any())
                                      for it in val_items),
                   val_native=NativeMasks.of(val_items))
    if not parts.val_has_lesion:
        _warn_lesion_free_validation(s, len(val_items))
    if payload is not None:
        _restore(payload, parts, state, gen)
        del payload

    if state["total_steps"] is None:  # plan the run from the budget
        patch, train_ds = plan_budget(s, state, trained, parts.criterion, make_train_ds, options, val_loader,
                                      parts.bn_batches, len(train_items), parts.bpe, parts.init)
    else:
        train_ds = make_train_ds(patch)
    state["patch"] = patch
    if state["step"] >= state["total_steps"] and metrics_path.is_file():
        log.info("%s%s already has %d step(s) (asked for %d): nothing to train", s.label, run_dir, state["step"],
                 state["total_steps"])
        return json.loads(read_regular_text(metrics_path))
    metrics_path.unlink(missing_ok=True)  # more steps to come: the split is no longer finished

    try:
        _train(s, parts, state, train_ds, gen)
        tuning = _tune(s, parts, state, len(val_items))
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM: the run folder holds an interim best.pt, said so
        if (run_dir / "best.pt").is_file():
            # the steps --resume trains to: last.pt's, which a re-plan after its save did not change (the message
            # named the new plan and --resume went to the old one: a QA finding of stop 52)
            total = parts.saved_total if parts.saved_total is not None else state["total_steps"]
            log.warning("%sstopped at step %d of %d: %s is the best model so far, its threshold not tuned (0.5), and "
                        "no metrics.json is written; %s finishes the run", s.label, state["step"], total,
                        run_dir / "best.pt", RESUME_ADVICE.get())
        else:  # (hemseg.train.trainer removes a fresh run's config.json then: nothing of it is kept)
            log.warning("%sstopped at step %d of %d, before the first validation: no model was saved", s.label,
                        state["step"], state["total_steps"])
        raise
    metrics = _metrics(s, parts, state, tuning, time.monotonic() - session_start, len(train_items), len(val_items))
    write_json(metrics_path, metrics)
    return metrics
