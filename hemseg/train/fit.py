"""Train one model on one train/validation split: step-based, with a recipe, checkpoints, history, resume and
threshold tuning.

The run is counted in optimizer steps (:class:`FitSettings` ``total_steps``, or planned from a wall-clock budget,
see below). Batches come from the recipe's sampler (:mod:`hemseg.train.sampling`), the learning rate follows its
schedule (:mod:`hemseg.train.schedule`), and the model is validated every ``val_every`` steps and after the last one.

Files written into ``run_dir`` (each atomically):

- ``best.pt``: the hemseg checkpoint (:mod:`hemseg.train.checkpoint`) of the validation with the best score: the
  pooled validation Dice for the ``hemseg`` recipe, the mean per-slice Dice for ``paper`` (both at threshold 0.5; the
  first validation always counts as an improvement). With ``--ema`` the averaged weights are validated and saved.
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
- ``metrics.json``: the best validation's metrics (at threshold 0.5: the numbers the model was selected on), the
  tuned ``threshold`` and ``val_dice_tuned`` (optimistic: tuned on the same data), ``steps`` (optimizer steps
  trained), ``minutes_budget`` (None without ``--minutes``), ``seconds`` (wall time of training, validations and
  tuning, over all sessions of a resumed run), ``recipe``, ``amp`` (the compute precision: fp32, bf16, fp16; the
  key ``precision`` is the metric), timings, ``init``, ``device``. Its presence
  marks the split as finished.

Wall-clock budget (``minutes``): before the first update the run times a few forward/backward passes on one
augmented batch (then restores the weights and RNG states, so the probe changes nothing; with ``workers`` the batches
come through a DataLoader with those worker processes, which prepare batches while the model computes, so the probe
times the overlap the loop gets) and one validation batch,
and fixes ``total_steps`` so that training, the validations and the threshold tuning end by the deadline; when
validations are slow, fewer of them are planned (they may take at most a fifth of the budget, at least 2). At each
validation it re-plans the remaining steps from the measured speed (the machine may be busier or idler than during the
probe); the schedule decays over the planned total. The decision is logged.

``--patch auto`` (the default; :func:`_auto_patch`): under a budget, with the ``hemseg`` recipe, whole slices are
kept when they buy :data:`hemseg.train.schedule.ENOUGH_STEPS` steps, else the run trains on the largest patch side
of :func:`hemseg.train.schedule.patch_candidates` that does (or, when none does, the one that buys the most). The
choice is logged, kept in ``last.pt``'s ``train_state`` (a resumed run keeps it) and written to ``metrics.json``
(``patch``, ``patch_plan``). With a fixed run length (``--steps``, ``--epochs``) there is no budget to fit: whole
slices.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader

from hemseg.runtime.io.writers import atomic_write_bytes
from hemseg.runtime.postprocess import DEFAULT_CANDIDATES, tune_threshold
from hemseg.runtime.preprocess import PreprocessSpec
from hemseg.train.checkpoint import read_checkpoint, save_checkpoint
from hemseg.train.data import SliceDataset, SliceItem
from hemseg.train.deep_supervision import DeepSupervised, supports, training_loss
from hemseg.train.device import Precision, describe
from hemseg.train.ema import WeightEMA
from hemseg.train.eval_report import write_json
from hemseg.train.loop import VAL_KEYS, SegmentationLoss, evaluate, to_device, train_step
from hemseg.train.models import build_model, set_prior_bias, zero_init_residual
from hemseg.train.precise_bn import PRECISE_BN_SLICES, recompute_bn_stats
from hemseg.train.recipes import Recipe
from hemseg.train.sampling import EpochBatches, ForegroundBatches, batches_per_epoch
from hemseg.train.schedule import (
    AUTO_PATCH,
    ENOUGH_STEPS,
    FEW_STEPS,
    budget_steps,
    choose_patch,
    lr_factor,
    patch_candidates,
    steps_for_budget,
    validations_for_budget,
    warmup_steps,
)
from hemseg.train.transforms import train_transform
from hemseg.train.weights import initialize
from hemseg.train.workers import warn_if_crash_prone

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ("step", "epoch", "train_loss", "val_loss", "val_dice", "val_dice_global", "val_iou",
                   "val_pred_fraction", "lr", "seconds", "precision")
#: consecutive validations without a single predicted lesion pixel on validation data that has lesions before
#: :func:`fit` warns that the model has collapsed to background
COLLAPSE_EPOCHS = 3
#: forward/backward passes timed by the budget probe (after one untimed pass)
PROBE_STEPS = 3
#: batches each DataLoader worker prepares ahead (PyTorch's default, named because the probe relies on it)
PREFETCH_FACTOR = 2


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
    patch: int | str | None = None  #: a side, None (whole slices) or "auto" (the budget chooses, see _auto_patch)
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


def _collate_batch(train_ds: SliceDataset, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(train_ds[i] for i in indices))
    return torch.stack(xs), torch.stack(ys)


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


def _probe_batch(s: FitSettings, model: torch.nn.Module, criterion, x: torch.Tensor, y: torch.Tensor) -> None:
    """One forward/backward pass as a training step makes it, without the optimizer's update."""
    model.train()
    x, y = to_device(x, y, s.device, s.precision.channels_last)
    with s.precision.autocast_context(s.device):
        outputs = model(x)
    training_loss(model, outputs, y, criterion)[0].backward()
    model.zero_grad(set_to_none=True)
    if s.device.type == "cuda":
        torch.cuda.synchronize(s.device)


def _probe_pipelined(s: FitSettings, model: torch.nn.Module, criterion, train_ds: SliceDataset,
                     idx: list[int]) -> float:
    """Seconds per step with ``s.workers`` DataLoader worker processes, timed through a DataLoader like the
    training loop's: the workers prepare batches while the model computes, so a step costs about the slower of
    the two (on a GPU), or what the processes sharing the CPU's cores leave (on a CPU); timing the parts one after
    the other in this process would add them.

    The first ``prefetch_factor * workers + 1`` batches are not timed: worker start-up, and the batches the workers
    prepared ahead while the first (slow) steps ran, which would arrive at once. Then the clock runs from the arrival
    of one batch to the arrival of the batch ``n`` later, ``n`` a multiple of the number of workers (each worker has
    then delivered the same number of batches, whatever their phase), over the ``n`` steps in between."""
    warm = PREFETCH_FACTOR * s.workers + 1
    timed = s.workers * math.ceil(PROBE_STEPS / s.workers)
    loader = DataLoader(train_ds, batch_sampler=[idx] * (warm + timed + 1), num_workers=s.workers,
                        pin_memory=s.device.type == "cuda", prefetch_factor=PREFETCH_FACTOR,
                        generator=torch.Generator().manual_seed(s.seed))  # seeds the workers only
    batches = iter(loader)
    for _ in range(warm):
        _probe_batch(s, model, criterion, *next(batches))
    x, y = next(batches)
    t0 = time.perf_counter()
    for _ in range(timed):
        _probe_batch(s, model, criterion, x, y)
        x, y = next(batches)
    seconds = (time.perf_counter() - t0) / timed
    del batches  # ends the workers
    return seconds


def _probe_seconds(s: FitSettings, model: torch.nn.Module, criterion, train_ds: SliceDataset,
                   val_loader: DataLoader | None = None,
                   bn_batches: Sequence[torch.Tensor] = ()) -> tuple[float, float]:
    """Seconds per training step (data, augmentation, forward, backward; the optimizer's own update is small and
    not included) and per validation pass (0 without ``val_loader``), measured without changing the weights or any
    RNG state. Without workers: the median of ``PROBE_STEPS`` steps after one untimed one, each preparing its batch
    in this process as the loop does; with workers: :func:`_probe_pipelined`."""
    saved_weights = copy.deepcopy(model.state_dict())
    saved_rng = torch.get_rng_state()
    idx = list(range(min(s.recipe.batch_size, len(train_ds))))
    idx = (idx * math.ceil(s.recipe.batch_size / max(len(idx), 1)))[:s.recipe.batch_size]
    times = []
    try:
        if s.workers > 0:
            step_s = _probe_pipelined(s, model, criterion, train_ds, idx)
        else:
            for _ in range(PROBE_STEPS + 1):
                t0 = time.perf_counter()
                _probe_batch(s, model, criterion, *_collate_batch(train_ds, idx))
                times.append(time.perf_counter() - t0)
            step_s = sorted(times[1:])[len(times[1:]) // 2]
        if val_loader is None:
            return step_s * 1.03, 0.0
        x, y = next(iter(val_loader))
        evaluate(model, [(x, y)], criterion, s.device, precision=s.precision, progress=False)  # warm-up, untimed
        t0 = time.perf_counter()
        evaluate(model, [(x, y)], criterion, s.device, precision=s.precision, progress=False)
        val_s = (time.perf_counter() - t0) * len(val_loader)
        if bn_batches:  # the BatchNorm re-estimation before each validation: about one forward pass per batch
            t0 = time.perf_counter()
            recompute_bn_stats(model, bn_batches[:1], s.device, s.precision)
            val_s += (time.perf_counter() - t0) * len(bn_batches)
    finally:
        model.load_state_dict(saved_weights)
        torch.set_rng_state(saved_rng)
    return step_s * 1.03, val_s  # the optimizer update adds a few percent


def fit(s: FitSettings, train_items: Sequence[SliceItem], val_items: Sequence[SliceItem]) -> dict[str, Any]:
    """Train (or resume) on one split and return its metrics (also written to ``run_dir/metrics.json``)."""
    run_dir = Path(s.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    best_path, last_path, metrics_path = run_dir / "best.pt", run_dir / "last.pt", run_dir / "metrics.json"
    device, precision, recipe = s.device, s.precision, s.recipe
    session_start = time.monotonic()

    torch.manual_seed(s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    model = build_model(s.model, **s.model_kwargs)
    aux = _deep_supervision(s, model)
    trained = aux if aux is not None else model  # what the optimizer steps; validation and saving use `model`
    resume_payload = read_checkpoint(last_path) if s.resume and last_path.is_file() else None
    if resume_payload is None:
        init = initialize(model, s.model, s.weights, s.model_kwargs)
        if recipe.zero_init_residual and init == "random":
            log.info("%s%d residual blocks start as the identity (last BatchNorm scale 0)", s.label,
                     zero_init_residual(model))
        if recipe.prior_bias and not init.startswith("file:"):
            fg = sum(int(it.mask.sum()) for it in train_items) / max(sum(it.mask.size for it in train_items), 1)
            bias = set_prior_bias(model, fg)
            if aux is not None:
                aux.set_prior_bias(bias)
            log.info("%soutput bias set to the lesion prior: %.2f %% of the training pixels -> %.2f", s.label,
                     100 * fg, bias)
        state: dict[str, Any] = {"step": 0, "total_steps": s.total_steps, "history": [], "best_score": -math.inf,
                                 "best_step": 0, "best_metrics": {}, "train_seconds": 0.0, "train_images": 0,
                                 "wall_s": 0.0, "init": init}
    else:
        model.load_state_dict(resume_payload["state_dict"])
        if aux is not None:
            aux.head.load_state_dict(resume_payload["aux_state"])
        state = dict(resume_payload["train_state"])
        init = state["init"]
        if s.total_steps is not None:
            state["total_steps"] = s.total_steps
        log.info("%sresuming %s after step %d of %d (best validation score %.4f at step %d)", s.label, run_dir,
                 state["step"], state["total_steps"], state["best_score"], state["best_step"])
    trained.to(device)
    if precision.channels_last:
        trained.to(memory_format=torch.channels_last)
    optimizer = _optimizer(trained, recipe)
    scaler = torch.amp.GradScaler("cuda") if precision.scaler and device.type == "cuda" else None
    ema = WeightEMA(model, s.ema_decay) if s.ema_decay else None
    if resume_payload is not None:
        optimizer.load_state_dict(resume_payload["optimizer_state"])
        if scaler is not None and resume_payload.get("scaler_state"):
            scaler.load_state_dict(resume_payload["scaler_state"])
        if ema is not None and resume_payload.get("ema_state"):
            ema.load_state_dict(resume_payload["ema_state"])
        _set_rng_state(state["rng"], gen)
        del resume_payload

    criterion = SegmentationLoss(s.pos_weight, recipe.dice).to(device)

    def make_train_ds(patch: int | None) -> SliceDataset:
        return SliceDataset(train_items, s.spec, train_transform(recipe.augment) if s.augment else None,
                            crop=s.crop if s.augment else 0.0, patch=patch,
                            gin=recipe.augment.gin if s.augment else 0.0)

    # the patch of a resumed run is the one it was planned with; --patch auto is decided by a budget (below) for the
    # hemseg recipe, and is whole slices with a fixed run length or the paper recipe (as the paper trained)
    patch = state["patch"] if "patch" in state else (None if s.patch == AUTO_PATCH else s.patch)
    auto = s.patch == AUTO_PATCH and "patch" not in state
    if auto and state["total_steps"] is not None:
        log.info("%s--patch auto with a fixed run length: whole slices (patches are chosen only to fit a --minutes "
                 "budget)", s.label)
    options = ([None, *patch_candidates(s.spec.size)]
               if auto and state["total_steps"] is None and recipe.sampling == "foreground" else [patch])
    train_ds = make_train_ds(options[-1])  # the smallest option is probed first (see _auto_patch)
    pin = device.type == "cuda"
    warn_if_crash_prone(s.workers)
    val_loader = DataLoader(SliceDataset(val_items, s.spec, None), batch_size=recipe.batch_size, shuffle=False,
                            num_workers=s.workers, pin_memory=pin, persistent_workers=s.workers > 0)
    bpe = batches_per_epoch(len(train_items), recipe.batch_size)
    bn_batches = _bn_batches(s, train_items) if recipe.precise_bn else []

    if state["total_steps"] is None:  # plan the run from the budget
        step_s, val_s = _probe_seconds(s, trained, criterion, train_ds, val_loader, bn_batches)
        left = s.deadline - time.monotonic()
        validations = recipe.validations if recipe.sampling == "foreground" else 10
        if recipe.sampling == "foreground" and s.val_every is None:
            # validations and the threshold tuning take at most a fifth of the budget: fewer of them when slow
            affordable = validations_for_budget(left, val_s, validations)
            if affordable < validations:
                log.info("%s%.1f s per validation: %d validations instead of %d fit a fifth of the budget", s.label,
                         val_s, affordable, validations)
                validations = affordable
            state["validations"] = validations
        if len(options) > 1:
            patch, step_s, state["patch_plan"] = _auto_patch(
                s, options, step_s, val_s, validations,
                lambda p: _probe_seconds(s, trained, criterion, make_train_ds(p))[0])
            if patch != options[-1]:
                train_ds = make_train_ds(patch)
            left = s.deadline - time.monotonic()
        total = steps_for_budget(left, step_s, val_s, validations, s.minutes_budget or left / 60)
        if recipe.sampling == "epochs":  # whole epochs, one validation each
            total = max(bpe, total - total % bpe)
        state["total_steps"] = total
        log.info("%sbudget %.1f min: %.2f s per step, %.1f s per validation measured -> %d steps (%.1f passes over "
                 "the %d training slices)", s.label, left / 60, step_s, val_s, total, total / bpe, len(train_items))
        if total < FEW_STEPS and init == "random":
            log.warning("%sthe budget buys only %d optimizer steps (%.1f s each); from random weights fewer than %d "
                        "steps rarely learn anything. Give more --minutes, or make steps cheaper: --patch (e.g. "
                        "half of --image-size), a smaller --batch-size or --image-size, or a lighter --model",
                        s.label, total, step_s, FEW_STEPS)
    state["patch"] = patch
    total = int(state["total_steps"])
    if state["step"] >= total and metrics_path.is_file():
        log.info("%s%s already has %d step(s) (asked for %d): nothing to train", s.label, run_dir, state["step"],
                 total)
        return json.loads(metrics_path.read_text())
    metrics_path.unlink(missing_ok=True)  # more steps to come: the split is no longer finished

    validations = state.get("validations") or recipe.validations
    val_every = s.val_every or (bpe if recipe.sampling == "epochs" else max(1, total // max(validations, 1)))
    warmup = warmup_steps(recipe.warmup_steps, total)
    run_kw = dict(precision=precision, progress=False)
    step = int(state["step"])
    loss_sum, loss_n, seg_t0 = 0.0, 0, time.perf_counter()

    def set_lr(k: int) -> float:
        lr = recipe.lr * lr_factor(k, total, warmup, recipe.schedule, recipe.poly_power)
        for g in optimizer.param_groups:
            g["lr"] = lr
        return lr

    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=step, desc=f"{s.label}train", unit="step", leave=False, disable=not s.progress)
    while step < total:
        # the loader's own generator only seeds worker processes; a separate one keeps the global RNG (augmentation)
        # and the sampler's generator untouched when a loader is created, so a resumed run draws what a straight
        # run draws
        loader = DataLoader(train_ds, batch_sampler=_sampler(s, train_ds, total - step, gen), num_workers=s.workers,
                            pin_memory=pin, prefetch_factor=PREFETCH_FACTOR if s.workers else None,
                            generator=torch.Generator().manual_seed(s.seed + step))
        replanned = False
        for x, y in loader:
            lr = set_lr(step)
            loss, _ = train_step(trained, x, y, criterion, optimizer, device, precision, scaler)
            if ema is not None:
                ema.update(model)
            step += 1
            loss_sum, loss_n = loss_sum + loss * x.shape[0], loss_n + x.shape[0]
            bar.update(1)
            if s.progress:
                bar.set_postfix(loss=f"{loss_sum / loss_n:.4f}", lr=f"{lr:.2e}")
            if step % val_every and step != total:
                continue
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_s = time.perf_counter() - seg_t0
            t0 = time.perf_counter()
            eval_model = ema.model if ema is not None else model
            if bn_batches:
                recompute_bn_stats(eval_model, bn_batches, device, precision)
            va = evaluate(eval_model, val_loader, criterion, device, **run_kw)
            val_s = time.perf_counter() - t0
            row = {"step": step, "epoch": step / bpe, "train_loss": loss_sum / max(loss_n, 1),
                   "val_loss": va["loss"], "val_dice": va["dice"], "val_dice_global": va["dice_global"],
                   "val_iou": va["iou"], "val_pred_fraction": va["pred_fraction"],
                   "val_true_fraction": va["true_fraction"], "lr": lr, "seconds": train_s + val_s,
                   "precision": precision.name}
            state["history"] = list(state["history"]) + [row]
            state["step"] = step
            state["train_seconds"] += train_s
            state["train_images"] += loss_n
            state["wall_s"] += train_s + val_s
            score = va["dice_global"] if recipe.selection == "pooled" else va["dice"]
            val_metrics = {**{k: va[k] for k in VAL_KEYS}, "dice_global": va["dice_global"], "val_loss": va["loss"]}
            improved = score > state["best_score"]
            if improved:
                state["best_score"], state["best_step"] = score, step
                state["best_metrics"] = val_metrics
                save_checkpoint(best_path, eval_model, _config(s, init, step, step / bpe, val_metrics))
            state["rng"] = _rng_state(gen)
            extra = {"optimizer_state": optimizer.state_dict(), "train_state": state}
            if scaler is not None:
                extra["scaler_state"] = scaler.state_dict()
            if ema is not None:
                extra["ema_state"] = ema.state_dict()
            if aux is not None:
                extra["aux_state"] = aux.head.state_dict()
            save_checkpoint(last_path, model, _config(s, init, step, step / bpe, val_metrics), extra=extra)
            write_history(run_dir / "history.csv", state["history"])
            val_with_writes_s = time.perf_counter() - t0  # what the plan must reserve per validation
            log.info("%sstep %d/%d (epoch %.1f): train loss %.4f, val loss %.4f, val Dice %.4f (pooled %.4f), lr "
                     "%.2e (%.1f s)%s", s.label, step, total, step / bpe, row["train_loss"], va["loss"], va["dice"],
                     va["dice_global"], lr, row["seconds"], "  [best]" if improved else "")
            if collapsed_to_background(state["history"]) and not collapsed_to_background(state["history"][:-1]):
                first = "--recipe hemseg" if s.recipe.name == "paper" else "a longer run (--steps, --minutes)"
                log.warning("%sthe model has predicted no lesion pixel on any validation image for %d validations "
                            "(%.2f %% of the validation pixels are lesion): it has collapsed to background. Try %s, "
                            "a lesion weight (--pos-weight, e.g. 20), pretrained weights (--weights) or more training "
                            "data", s.label, COLLAPSE_EPOCHS, 100 * va["true_fraction"], first)
            loss_sum, loss_n = 0.0, 0
            if s.deadline is not None and step < total:
                new_total = _replan(s, step, total, train_s / max(row_steps(state["history"]), 1),
                                    val_with_writes_s, val_every)
                if new_total != total:
                    log.info("%sre-planned to %d steps (was %d) to end within the budget", s.label, new_total, total)
                    total = state["total_steps"] = new_total
                    bar.total = total
                    bar.refresh()
                    replanned = True
            seg_t0 = time.perf_counter()
            if replanned:
                break  # a new sampler for the new length
    bar.close()

    # threshold tuning on the validation predictions of the best model
    t0 = time.perf_counter()
    best = read_checkpoint(best_path)
    tune_model = ema.model if ema is not None else model
    tune_model.load_state_dict(best["state_dict"])  # with the BatchNorm statistics it was validated with
    va = evaluate(tune_model, val_loader, None, device, collect=True, **run_kw)
    metric = "pooled" if recipe.selection == "pooled" else "mean"
    threshold, tuned_dice = tune_threshold(va.pop("probs"), va.pop("masks"), metric=metric)
    config = dict(best["config"])
    config["threshold"] = float(threshold)
    config["threshold_tuning"] = {"candidates": list(DEFAULT_CANDIDATES), "metric": metric,
                                  "val_dice": float(tuned_dice), "val_dice_at_0.5": float(
                                      va["dice_global"] if metric == "pooled" else va["dice"]),
                                  "n_val_slices": len(val_items)}
    save_checkpoint(best_path, tune_model, config)
    state["wall_s"] += time.perf_counter() - t0
    log.info("%stuned threshold %.4g: val Dice (%s) %.4f (%.4f at 0.5)", s.label, threshold, metric, tuned_dice,
             config["threshold_tuning"]["val_dice_at_0.5"])
    if threshold in (DEFAULT_CANDIDATES[0], DEFAULT_CANDIDATES[-1]):
        log.info("%sthe tuned threshold %.4g is the last candidate: the model's probabilities are nearly all 0 or 1 "
                 "(common with a Dice loss), or too few validation lesions to judge", s.label, threshold)

    history = state["history"]
    best_row = next((r for r in history if r["step"] == state["best_step"]), {})
    metrics: dict[str, Any] = {**state["best_metrics"], "step": state["best_step"],
                               "epoch": round(state["best_step"] / bpe, 4), "threshold": float(threshold),
                               "val_dice_tuned": float(tuned_dice), "selection": metric, "steps": state["step"],
                               "epochs_trained": round(state["step"] / bpe, 4), "minutes_budget": s.minutes_budget,
                               "seconds": state["wall_s"], "wall_time_s": state["wall_s"],
                               "session_seconds": time.monotonic() - session_start,
                               "images_per_s": state["train_images"] / max(state["train_seconds"], 1e-9),
                               "seconds_per_step": state["train_seconds"] / max(state["step"], 1),
                               "recipe": recipe.name, "amp": precision.name, "ema": s.ema_decay,
                               "aux_loss": aux.weight if aux is not None else 0.0,
                               "batch_size": recipe.batch_size, "patch": state["patch"],
                               "patch_plan": state.get("patch_plan"), "lr": recipe.lr, "best_val_loss":
                                   best_row.get("val_loss"),
                               "init": init, "device": describe(device),
                               "n_train_slices": len(train_items), "n_val_slices": len(val_items),
                               "checkpoint": str(best_path)}
    metrics.update(s.extra_metrics)
    write_json(metrics_path, metrics)
    return metrics


def _auto_patch(s: FitSettings, options: Sequence[int | None], smallest_s: float, val_s: float, validations: int,
                probe) -> tuple[int | None, float, dict[str, Any]]:
    """``--patch auto`` under a budget: ``options`` are whole slices (None) and the candidate patch sides, largest
    first; ``smallest_s`` is the measured step time of the last (smallest) one, ``probe(p)`` measures another's.

    A larger option is probed only when its step, estimated from the smallest one's in proportion to the pixels,
    could still buy :data:`ENOUGH_STEPS` (whole 256 px slices of FCN-ResNet50 on a 2-core CPU cost ~19 s a step, so
    probing them would eat a minute of a 12-minute budget to learn what the estimate already says). Returns the
    chosen patch (None: whole slices), its seconds per step and the plan for ``metrics.json``."""
    size = s.spec.size
    smallest = options[-1]

    def name(p: int | None) -> str:
        return "whole" if p is None else str(p)

    def steps_at(t: float) -> int:
        return budget_steps(s.deadline - time.monotonic(), t, val_s, validations)

    seconds = {smallest: smallest_s}
    estimated: set[int | None] = set()
    for p in options[:-1]:
        estimate = smallest_s * ((size if p is None else p) / smallest) ** 2  # in proportion to the pixels
        if steps_at(estimate) < ENOUGH_STEPS:
            seconds[p] = estimate
            estimated.add(p)
            continue
        seconds[p] = probe(p)
        if steps_at(seconds[p]) >= ENOUGH_STEPS:
            break
    steps = {p: steps_at(t) for p, t in seconds.items()}
    chosen = choose_patch({p: n for p, n in steps.items() if p not in estimated}, ENOUGH_STEPS)
    what = "whole slices" if chosen is None else f"{chosen} px patches"
    said = [(f"whole {size} px slices" if p is None else f"{p} px patches")
            + (f" buy ~{n} steps ({seconds[p]:.2f} s each, estimated)" if p in estimated
               else f" buy {n} steps ({seconds[p]:.2f} s each)") for p, n in steps.items()]
    log.info("%s--patch auto: %s; training on %s (patches keep the lesions' scale, validation and inference use "
             "whole slices; --patch 0 keeps whole slices)", s.label, ", ".join(said), what)
    if chosen is not None and steps[chosen] < ENOUGH_STEPS:
        log.info("%s--patch auto: even %s buy fewer than %d steps", s.label, what, ENOUGH_STEPS)
    plan = {"chosen": chosen, "enough_steps": ENOUGH_STEPS,
            "options": {name(p): {"seconds_per_step": round(seconds[p], 4), "steps": steps[p],
                                  "estimated": p in estimated} for p in options if p in seconds}}
    return chosen, seconds[chosen], plan


def row_steps(history: Sequence[dict]) -> int:
    """Steps between the last two validations."""
    if len(history) >= 2:
        return int(history[-1]["step"]) - int(history[-2]["step"])
    return int(history[-1]["step"]) if history else 0


def _replan(s: FitSettings, step: int, total: int, step_s: float, val_s: float, val_every: int) -> int:
    """The total steps that end by the deadline at the speed measured since the last validation (never fewer than
    one more step). A longer plan within 5 % of the current one is not taken, so that the schedule does not jitter;
    a shorter one always is (keeping the old plan would overrun the budget).

    ``val_s`` is what a validation costs with its checkpoint writes. The ``more`` steps to come bring their own
    validations (at every multiple of ``val_every`` and at the last step) and then the threshold tuning, one more
    pass over the validation slices; the largest ``more`` whose cost fits what is left is found by bisection (the
    cost grows with ``more``). Counting the validations of the old plan instead would charge a longer new plan too
    few of them, and a shorter one too many: after a slow start (a busy machine) the plan grew twenty-fold, the next
    re-plan charged it a validation every ``val_every`` steps of the grown plan and cut the run to one more step,
    2.7 minutes into an 11-minute budget. Charging the last validation and the tuning together as one, as until
    2026-12-04, let the issue's 12-minute command end 9 s late."""
    left = s.deadline - time.monotonic()
    step_s = max(step_s, 1e-9)

    def cost(more: int) -> float:
        end = step + more
        validations = end // val_every - step // val_every + (1 if end % val_every else 0)
        return more * step_s + (validations + 1) * val_s

    lo, hi = 1, max(1, int(left / step_s) + 1)  # cost(hi) > left unless hi is 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(mid) <= left:
            lo = mid
        else:
            hi = mid - 1
    new_total = step + lo
    return total if total <= new_total <= 1.05 * total else new_total
