"""The two training recipes of ``hemseg train --recipe``: ``paper`` (the publication, for reproduction) and
``hemseg`` (the default: a from-scratch recipe for a few dozen slices).

``paper`` is exactly the paper's method: Adam at a constant learning rate of 1e-4, BCEWithLogitsLoss alone,
``--epochs`` shuffled passes over the training split (default 20), mild augmentation, the best checkpoint by the
mean per-slice validation Dice, validated once per epoch.

``hemseg`` exists because the paper's recipe, started from random weights on little data, learns next to nothing in
a CPU budget (on 13 real slices it reached held-out Dice 0.13; the quickstart's model predicted no lesion at all). Its
parts, each for a stated reason:

- **AdamW, lr 1e-3, weight decay 1e-4, a linear warm-up then poly(0.9) decay to zero over the run's total steps**:
  random-init networks need a larger step than fine-tuning does; the warm-up keeps the first updates of BatchNorm
  statistics and Adam's moment estimates from throwing the model off; decaying to zero lets the last steps settle
  (nnU-Net and torchvision's segmentation references both use poly decay).
- **BCE + soft Dice over the whole batch**: BCE alone is dominated by the background (a lesion is often < 1 % of the
  slice); a per-slice soft Dice rewards predicting nothing on lesion-free slices and collapsed a 96 px run to
  background; the batch Dice pools the pixels of all slices, so it cannot be won by empty predictions.
- **Foreground-aware sampling** (nnU-Net style): batches are drawn with replacement and at least a third of each
  batch comes from slices that show a lesion, so rare lesions are seen every step.
- **Run length in optimizer steps** (``--steps``, ``--minutes`` or ``--epochs`` converted to steps): a few dozen
  slices make an epoch a handful of steps; what matters is the number of updates, and the schedule decays over them.
- **Stronger augmentation** (rotation +/-20 deg, scale 0.75-1.25, translation 10 %, shear 5 deg, horizontal flip,
  brightness/contrast 0.2, gamma exp(U(-0.3, 0.3))), since a few dozen slices cover little of the variation of
  patient pose and scanner settings; optional foreground-centred crops (``--crop P``) that zoom onto lesions. No
  intensity noise: the slices are augmented after the filter chain (CLAHE, non-local means, bilateral), and noise
  added after denoising is something inference never sees.
- **A smaller field of view on half the training slices** (``fov=0.5``, ``fov_shape="band"``,
  :class:`hemseg.train.transforms.RandomFieldOfView`): image and mask black outside a band around a lesion pixel
  that spans the slice one way and 30-100 % of it the other way. Series of one patient differ in field of view (a
  rectangular FOV, a thinner stack resampled into another series' grid), and a network trained on whole-neck slices
  learns the body's outline: on real cord MRI such models scored 0.85 on a T1w volume and 0.16 on the same volume
  blacked out outside the T2w series' band. A band rather than a box keeps the context along one axis; a box of the
  same side range cost more on an unseen contrast (T1w 0.50 / 0.35 / 0.30 vs 0.61 / 0.44 / 0.69, three seeds).
  ``--fov 0`` switches it off, ``--fov-shape box`` cuts both sides.
- Optional **patch training** (``--patch P``, either recipe): P x P windows of the slices, not resampled, so a step
  costs what a P px slice costs while lesions keep their inference scale; the forced lesion picks get a window on a
  lesion, the others a random one (nnU-Net). Validation and inference use whole slices.
- **Model selection by pooled validation Dice** (over all validation pixels), which an empty prediction cannot win,
  and the threshold tuned on the same pooled Dice.
- **The output bias starts at the lesion prior** (the log-odds of the training masks' lesion fraction; Lin et al.'s
  prior-probability initialization): an untrained network predicts p = 0.5 everywhere, and Adam, which moves each
  weight by about the learning rate per step, needs hundreds of steps just to push the background logits down; with
  the prior the first steps are spent on finding lesions. Not applied to weights loaded from a file.
- **BatchNorm statistics recomputed before each validation** (:mod:`hemseg.train.precise_bn`): at a high learning
  rate the weights move faster than BatchNorm's running estimates follow, so validations (and the saved model)
  would use statistics of weights long gone; validation Dice then jumps between good and near zero and the best
  checkpoint is chosen on noise.
- Optional **EMA of the weights** (``--ema``), which smooths the last steps of a short, noisy run.
- Optional appearance augmentation for MRI sequences the training data does not show: a random intensity curve
  (``--intensity-remap P``, :class:`hemseg.train.transforms.RandomIntensityCurve`) or GIN, a random shallow
  convolutional network that changes contrast and texture but not shapes (``--gin P``, :mod:`hemseg.train.appearance`).
- Optional **auxiliary head on FCN-ResNet50's layer3** (``--aux-loss W``, :mod:`hemseg.train.deep_supervision`):
  torchvision's own FCN training uses it (weight 0.5); the loss then reaches the lower stages of the 50-layer
  backbone directly. Training only: ``best.pt`` and the exports hold the one-output model.
- Optional **residual blocks that start as the identity** (``--zero-init-residual``, FCN-ResNet50 from random
  weights): faster first steps on data like the training data; off because on real MRI it cost an unseen,
  inverted contrast everything and did not change longer runs (``benchmarks/MEASUREMENTS.md``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from hemseg.errors import UsageError
from hemseg.train.transforms import AugmentSpec


@dataclass(frozen=True)
class Recipe:
    """Everything ``--recipe`` decides. Options given on the command line override ``lr`` and ``batch_size``."""

    name: str
    optimizer: str              #: adam | adamw
    lr: float
    weight_decay: float
    schedule: str               #: constant | poly (after the warm-up)
    warmup_steps: int           #: linear warm-up length (at most a tenth of the run)
    batch_size: int
    dice: str                   #: none | batch: the soft Dice term added to BCE
    sampling: str               #: epochs (shuffled passes) | foreground (with replacement, fg share per batch)
    foreground_share: float     #: with sampling=foreground: at least this share of each batch shows a lesion
    selection: str              #: mean (per-slice Dice, the paper's) | pooled (Dice over all validation pixels)
    validations: int            #: validations per run when --val-every is not given (sampling=foreground)
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    poly_power: float = 0.9
    prior_bias: bool = False    #: start the output bias at the training set's lesion log-odds
    precise_bn: bool = False    #: recompute BatchNorm statistics for the current weights before each validation
    aux_weight: float = 0.0     #: weight of the training-only auxiliary head's loss (FCN-ResNet50's layer3; 0: none)
    zero_init_residual: bool = False  #: residual blocks start as the identity (random initialization only)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["augment"] = self.augment.to_dict()
        return d


PAPER = Recipe(name="paper", optimizer="adam", lr=1e-4, weight_decay=0.0, schedule="constant", warmup_steps=0,
               batch_size=8, dice="none", sampling="epochs", foreground_share=0.0, selection="mean", validations=0,
               augment=AugmentSpec())

HEMSEG = Recipe(name="hemseg", optimizer="adamw", lr=1e-3, weight_decay=1e-4, schedule="poly", warmup_steps=30,
                batch_size=8, dice="batch", sampling="foreground", foreground_share=1 / 3, selection="pooled",
                validations=10, prior_bias=True, precise_bn=True,
                augment=AugmentSpec(hflip=0.5, degrees=20.0, translate=0.10, scale=0.25, shear=5.0, brightness=0.2,
                                contrast=0.2, gamma=0.0, log_gamma=0.3, fov=0.5, fov_shape="band"))

RECIPES = {r.name: r for r in (HEMSEG, PAPER)}
AUGMENT_FIELDS = frozenset(f.name for f in fields(AugmentSpec))


def get_recipe(name: str, **overrides: Any) -> Recipe:
    """The recipe ``name`` with ``overrides`` (None values ignored) applied; an override named after an
    :class:`AugmentSpec` field (``remap``: ``--intensity-remap``) changes the recipe's augmentation."""
    try:
        recipe = RECIPES[name]
    except KeyError:
        raise UsageError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}") from None
    given = {k: v for k, v in overrides.items() if v is not None}
    augment = {k: given.pop(k) for k in list(given) if k in AUGMENT_FIELDS}
    return replace(recipe, **given, **({"augment": replace(recipe.augment, **augment)} if augment else {}))
