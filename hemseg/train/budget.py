"""How long a run trains when it has a wall-clock budget (``--minutes``) instead of a step count.

Before the first update the run times a few forward/backward passes on one augmented batch (then restores the weights
and RNG states, so the probe changes nothing; with ``workers`` the batches come through a DataLoader with those worker
processes, which prepare batches while the model computes, so the probe times the overlap the loop gets) and one
validation batch, and fixes ``total_steps`` so that training, the validations and the threshold tuning end by the
deadline; when validations are slow, fewer of them are planned (they may take at most a fifth of the budget, at least
2). At each validation :func:`replan` re-plans the remaining steps from the measured speed (the machine may be busier
or idler than during the probe); the schedule decays over the planned total. The decision is logged.

``--patch auto`` (the default; :func:`auto_patch`): under a budget, with the ``hemseg`` recipe, whole slices are
kept when they buy :data:`hemseg.train.schedule.ENOUGH_STEPS` steps, else the run trains on the largest patch side
of :func:`hemseg.train.schedule.patch_candidates` that does (or, when none does, the one that buys the most). The
choice is logged, kept in ``last.pt``'s ``train_state`` (a resumed run keeps it) and written to ``metrics.json``
(``patch``, ``patch_plan``). With a fixed run length (``--steps``, ``--epochs``) there is no budget to fit: whole
slices.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader

from hemseg.train.data import SliceDataset
from hemseg.train.deep_supervision import training_loss
from hemseg.train.loop import evaluate, to_device
from hemseg.train.precise_bn import recompute_bn_stats
from hemseg.train.schedule import (
    ENOUGH_STEPS,
    FEW_STEPS,
    budget_steps,
    choose_patch,
    steps_for_budget,
    validations_for_budget,
)
from hemseg.train.workers import ignore_sigterm

if TYPE_CHECKING:
    from hemseg.train.fit import FitSettings

log = logging.getLogger(__name__)

#: forward/backward passes timed by the budget probe (after one untimed pass)
PROBE_STEPS = 3
#: batches each DataLoader worker prepares ahead (PyTorch's default, named because the probe relies on it)
PREFETCH_FACTOR = 2


def _collate_batch(train_ds: SliceDataset, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(train_ds[i] for i in indices))
    return torch.stack(xs), torch.stack(ys)


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
                        generator=torch.Generator().manual_seed(s.seed),  # seeds the workers only
                        worker_init_fn=ignore_sigterm if s.workers else None)
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


def probe_seconds(s: FitSettings, model: torch.nn.Module, criterion, train_ds: SliceDataset,
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


def fewer_validations_note(val_s: float, affordable: int, wanted: int, left: float) -> str:
    """What the plan says when slow validations make it plan fewer: that they fit a fifth of the budget, or, for the
    fewest a run makes (2), what they take when even those do not (it said they fit: a QA finding of stop 52)."""
    cost = (affordable + 1) * val_s  # (the threshold tuning is one more pass)
    if cost <= 0.2 * left:
        return f"{val_s:.1f} s per validation: {affordable} validations instead of {wanted} fit a fifth of the budget"
    return (f"{val_s:.1f} s per validation: {affordable} validations instead of {wanted}, the fewest a run makes; "
            f"with the threshold tuning they take {cost:.0f} s of the {left:.0f} s left, more than a fifth")


def plan_budget(s: FitSettings, state: dict[str, Any], model: torch.nn.Module, criterion,
                make_train_ds: Callable[[int | None], SliceDataset], options: Sequence[int | None],
                val_loader: DataLoader, bn_batches: Sequence[torch.Tensor], n_train: int, bpe: int,
                init: str) -> tuple[int | None, SliceDataset]:
    """Fix ``state["total_steps"]`` (and ``validations``, ``patch_plan``) from the time left until ``s.deadline``;
    ``options`` are the patch sides to choose from (one: no choice). Returns the patch and the training dataset."""
    recipe = s.recipe
    train_ds = make_train_ds(options[-1])  # the smallest option is probed first (see auto_patch)
    patch = options[-1]
    step_s, val_s = probe_seconds(s, model, criterion, train_ds, val_loader, bn_batches)
    left = s.deadline - time.monotonic()
    validations = recipe.validations if recipe.sampling == "foreground" else 10
    if recipe.sampling == "foreground" and s.val_every is None:
        # validations and the threshold tuning take at most a fifth of the budget: fewer of them when slow
        affordable = validations_for_budget(left, val_s, validations)
        if affordable < validations:
            log.info("%s%s", s.label, fewer_validations_note(val_s, affordable, validations, left))
            validations = affordable
        state["validations"] = validations
        steps_for_budget(left, step_s, val_s, validations, s.minutes_budget or left / 60)  # too short: said now
    if len(options) > 1:
        patch, step_s, state["patch_plan"] = auto_patch(
            s, options, step_s, val_s, validations,
            lambda p: probe_seconds(s, model, criterion, make_train_ds(p))[0])
        if patch != options[-1]:
            train_ds = make_train_ds(patch)
        left = s.deadline - time.monotonic()
    total = steps_for_budget(left, step_s, val_s, validations, s.minutes_budget or left / 60)
    if recipe.sampling == "epochs":  # whole epochs, one validation each
        total = max(bpe, total - total % bpe)
    state["total_steps"] = total
    log.info("%sbudget %.3g min: %.2f s per step, %.1f s per validation measured -> %d steps (%.1f passes over "
             "the %d training slices)", s.label, left / 60, step_s, val_s, total, total / bpe, n_train)
    if total < FEW_STEPS and init == "random":
        log.warning("%sthe budget buys only %d optimizer steps (%.2g s each); from random weights fewer than %d "
                    "steps rarely learn anything. Give more --minutes, or make steps cheaper: --patch (e.g. "
                    "half of --image-size), a smaller --batch-size or --image-size, or a lighter --model",
                    s.label, total, step_s, FEW_STEPS)
    return patch, train_ds


def auto_patch(s: FitSettings, options: Sequence[int | None], smallest_s: float, val_s: float, validations: int,
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


def replan(s: FitSettings, step: int, total: int, step_s: float, val_s: float, val_every: int) -> int:
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
