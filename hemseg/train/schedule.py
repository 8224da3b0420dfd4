"""Learning-rate schedule and run length of step-based training.

- :func:`lr_factor`: the multiplier of the base learning rate at optimizer step ``step`` (0-based) of ``total``: a
  linear warm-up over ``warmup`` steps (``(step + 1) / warmup``), then constant or ``(1 - progress) ** power``
  (poly decay to zero at the last step). It depends on the step alone, so a resumed run continues the same curve.
- :func:`warmup_steps`: the recipe's warm-up, at most a tenth of the run.
- :func:`steps_for_budget`: how many steps fit a wall-clock budget, given measured seconds per step and per
  validation (see :mod:`hemseg.train.budget`).
- :func:`patch_candidates`, :func:`choose_patch`: what ``--patch auto`` may train on when the budget buys whole
  slices too few steps.
"""

from __future__ import annotations

import math

from hemseg.errors import UsageError


def warmup_steps(recipe_warmup: int, total: int) -> int:
    return max(0, min(int(recipe_warmup), int(total) // 10))


def lr_factor(step: int, total: int, warmup: int, schedule: str, power: float = 0.9) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule != "poly":
        raise ValueError(f"unknown schedule {schedule!r}")
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 1.0 - progress) ** power


#: a budget that buys fewer optimizer steps than this is warned about: from random weights, FCN-ResNet50 predicted no
#: lesion on the phantom's validation slices for its first ~200 steps and the U-Net (base 16) had a pooled validation
#: Dice of 0.03 at 136 steps (benchmarks/MEASUREMENTS.md); such a run most likely yields a model that predicts nothing
FEW_STEPS = 200


def budget_steps(seconds: float, step_s: float, val_s: float, validations: int) -> int:
    """Optimizer steps that fit ``seconds`` (what is left of the budget) with ``validations`` validation passes
    (plus one for the threshold tuning) of ``val_s`` each, at ``step_s`` per step (0 when none fit)."""
    room = seconds - (validations + 1) * val_s
    return int(math.floor(room / max(step_s, 1e-9))) if room > 0 else 0


def steps_for_budget(seconds: float, step_s: float, val_s: float, validations: int, minutes: float) -> int:
    """:func:`budget_steps`, at least 10, else a UsageError saying how long a step takes."""
    steps = budget_steps(seconds, step_s, val_s, validations)
    if steps < 10:
        raise UsageError(f"--minutes {minutes:g} is too short: one training step takes {step_s:.2f} s and one "
                         f"validation {val_s:.1f} s here, which leaves room for {steps} step(s); give more minutes, "
                         "a smaller --image-size, --batch-size or --patch, or --steps")
    return steps


def validations_for_budget(seconds: float, val_s: float, wanted: int, share: float = 0.2) -> int:
    """How many validations a budget of ``seconds`` affords when validations (plus the threshold tuning, which costs
    one more) may take at most ``share`` of it: ``wanted`` when they fit, fewer when they are slow, never fewer than
    2 (the best checkpoint needs a choice)."""
    affordable = int(share * seconds / max(val_s, 1e-9)) - 1
    return max(2, min(int(wanted), affordable))


#: the ``--patch`` value that lets the budget choose (whole slices or a patch side)
AUTO_PATCH = "auto"

#: ``--patch auto`` keeps whole slices when the budget buys at least this many steps, and otherwise trains on the
#: largest patch that does: from random weights the issue-12 FCN-ResNet50 script needed 500 steps (held-out Dice 0.66
#: on real MRI), FCN-ResNet50 predicted no lesion on the phantom for its first ~200 steps, and the cord benchmarks
#: train 500 steps (benchmarks/MEASUREMENTS.md)
ENOUGH_STEPS = 500

#: the smallest patch side ``--patch auto`` chooses: FCN-ResNet50 sees it on a 12 x 12 grid, the size at which it
#: trains on the cord benchmarks; smaller windows show it little around a lesion
MIN_AUTO_PATCH = 96


def patch_candidates(image_size: int) -> list[int]:
    """The patch sides ``--patch auto`` may choose for ``image_size`` px slices, largest first: a half and a quarter
    of the side (multiples of 16), none below :data:`MIN_AUTO_PATCH`."""
    sides = (int(image_size) // 2 // 16 * 16, int(image_size) // 4 // 16 * 16)
    return [p for p in dict.fromkeys(sides) if p >= MIN_AUTO_PATCH]


def choose_patch(steps: dict[int | None, int], enough: int = ENOUGH_STEPS) -> int | None:
    """The patch for a budget: ``steps`` maps each option (None: whole slices, else a patch side) to the steps the
    budget buys with it. The largest option that buys ``enough`` steps, else the one that buys the most (whole slices
    on a tie)."""
    order = sorted(steps, key=lambda p: math.inf if p is None else p, reverse=True)
    for p in order:
        if steps[p] >= enough:
            return p
    return max(order, key=lambda p: steps[p])
