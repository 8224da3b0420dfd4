"""From network output to a clean binary mask (numpy + OpenCV; no torch).

The steps of :func:`postprocess`, in this order:

0. with ``out_size`` (the original image size) different from the map's: :func:`resample_scores`, the network's
   scores (logits or probabilities) resampled to that size, bilinear (area averaging when shrinking), and steps 1-5
   run there with the clean-up's pixel sizes scaled by the same factor (:meth:`PostprocessConfig.scaled`). The
   network's output is a smooth map; thresholding it on its own grid and enlarging the *mask* with nearest
   neighbours (what hemseg did before) turns every boundary into steps of the grid's size, which costs a structure a
   few pixels wide a large share of its Dice: on real cord MRI (cord 7-8 px wide at 131 x 141, network at 96 or
   192 px) the same models scored 0.73-0.82 Dice on their training volumes with the enlarged mask and 0.81-0.93 with
   resampled scores. It is what the FCN itself does from its stride-8 grid (bilinear logits) and what nnU-Net does
   (resample the probabilities to the original spacing, then decide);
1. ``threshold``: foreground where ``probability > threshold`` (strictly greater). Logits are thresholded in the
   logit domain, ``logit > log(t / (1 - t))`` (:func:`threshold_logits`, the one rule every inference path uses:
   the runtime, the bench, the export's parity gates and ``hemseg eval``), which is the same decision without a
   sigmoid's rounding.
2. ``closing`` with an elliptical kernel of ``closing_radius`` px (size ``2r+1``), if ``closing_radius > 0``.
3. ``opening`` with an elliptical kernel of ``opening_radius`` px, if ``opening_radius > 0``.
4. removal of 8-connected components smaller than ``min_area`` px (kept when ``area >= min_area``).
5. ``fill_holes``: background regions (4-connected, the dual of 8-connected foreground) that do not touch the image
   border become foreground.

Sizes are in pixels at the network's resolution (scaled when step 0 runs). The stock clean-ups (``hemseg eval --postprocess``, the K-Means
baseline, ``hemseg predict``) are written for the paper's 256 px and go through :meth:`PostprocessConfig.scaled` for
another network size: radii scale with ``size / 256``, ``min_area`` with its square. Scaling keeps the exact
(fractional) sizes, so a config scaled to a 64 px network and again to a 256 px output is the 256 px config; they
are rounded once, where the mask is cleaned: radii down (so a structure a few pixels wide is not erased by an
opening meant for a larger image), ``min_area`` to the nearest whole pixel. (Rounded at each scaling, a 64 px
model's 0.5 px ``min_area`` became 1, and 16 px at a 256 px output instead of 8.)

Masks are uint8 in ``{0, 1}``. Pixels outside the image never take part in a closing/opening (OpenCV's default
border), so objects touching the edge are not eroded or grown by the border.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from hemseg.errors import UsageError
from hemseg.runtime.io.limits import MAX_SIDE
from hemseg.runtime.metrics import dice_score
from hemseg.runtime.preprocess import resize_mask

#: The network size (px) at which the pixel sizes of the stock clean-ups are chosen (see :meth:`PostprocessConfig.scaled`).
REFERENCE_SIZE = 256
#: Default threshold candidates of :func:`tune_threshold`: 21 probabilities evenly spaced in logit from 0.01 to 0.99
#: (0.01, 0.016, 0.024, ..., 0.5, ..., 0.976, 0.984, 0.99). Even in logit, not in probability, because networks
#: trained with a Dice term squash their probabilities towards 0 and 1: a U-Net of the CPU quickstart scored
#: held-out pooled Dice 0.599 at 0.90 (the top of a 0.10-0.90 grid, where tuning had stopped) and 0.621 / 0.646 at
#: 0.95 / 0.99.
DEFAULT_CANDIDATES = tuple(float(round(1.0 / (1.0 + np.exp(-z)), 4))
                           for z in np.linspace(-np.log(99.0), np.log(99.0), 21))


#: the largest radius (px) and area (px^2) a config may hold: an image side's limit (MAX_SIDE) and its square
SIZE_LIMITS = {"closing_radius": 16384, "opening_radius": 16384, "min_area": 16384 ** 2}


def _size_param(name: str, value: Any) -> int | float:
    """A size in px: a non-negative number (whole, or a fraction after :meth:`PostprocessConfig.scaled`), at most
    :data:`SIZE_LIMITS` (a kernel that size is beyond any image, and OpenCV cannot build one much larger)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)) or value < 0:
        raise UsageError(f"post-processing {name} must be a non-negative number, got {value!r}")
    if value > SIZE_LIMITS[name]:
        raise UsageError(f"post-processing {name} must be at most {SIZE_LIMITS[name]}, got {value!r}")
    return int(value) if float(value).is_integer() else float(value)


def radius_px(radius: float) -> int:
    """A (scaled) radius as the whole pixels of a kernel: rounded down."""
    return int(np.floor(float(radius) + 1e-9))


def area_px(area: float) -> int:
    """A (scaled) minimum area as whole pixels: rounded to the nearest."""
    return int(np.floor(float(area) + 0.5))


@dataclass(frozen=True)
class PostprocessConfig:
    """Parameters of :func:`postprocess`. The defaults do nothing but threshold at 0.5."""

    threshold: float = 0.5
    closing_radius: int = 0
    opening_radius: int = 0
    min_area: int = 0
    fill_holes: bool = False

    def __post_init__(self) -> None:
        try:
            t = float(self.threshold)
        except (TypeError, ValueError):
            raise UsageError(f"post-processing threshold must be a number, got {self.threshold!r}") from None
        if not 0.0 <= t <= 1.0:
            raise UsageError(f"post-processing threshold must be in [0, 1], got {self.threshold!r}")
        object.__setattr__(self, "threshold", t)
        for name in ("closing_radius", "opening_radius", "min_area"):
            object.__setattr__(self, name, _size_param(name, getattr(self, name)))
        if not isinstance(self.fill_holes, (bool, np.bool_)):
            raise UsageError(f"post-processing fill_holes must be true or false, got {self.fill_holes!r}")
        object.__setattr__(self, "fill_holes", bool(self.fill_holes))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PostprocessConfig":
        if not isinstance(d, dict):
            raise UsageError(f"post-processing config must be a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UsageError(f"unknown post-processing keys: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> "PostprocessConfig":
        return dataclasses.replace(self, **changes)

    def scaled(self, size: int, reference: int = REFERENCE_SIZE) -> "PostprocessConfig":
        """This config, whose pixel sizes were chosen at ``reference`` px, for a network of ``size`` px.

        Radii become ``r * size / reference``, ``min_area`` becomes ``a * (size / reference) ** 2``, exactly (rounded
        once, when a mask is cleaned: :func:`radius_px`, :func:`area_px`); threshold and hole filling are unchanged.
        ``size == reference`` returns an equal config.
        """
        for name, value in (("size", size), ("reference size", reference)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise UsageError(f"post-processing {name} must be a positive integer, got {value!r}")
        return self.scaled_by(int(size) / int(reference))

    def scaled_by(self, f: float) -> "PostprocessConfig":
        """This config with its pixel sizes scaled by the linear factor ``f`` (radii by ``f``, areas by ``f ** 2``),
        exactly: :meth:`scaled` and the resampling of step 0 (whose factor, the geometric mean of the two sides'
        ratios, need not be a ratio of whole pixel counts)."""
        return self.replace(closing_radius=self.closing_radius * f, opening_radius=self.opening_radius * f,
                            min_area=self.min_area * f * f)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function (no overflow for large ``|x|``). Float32 in -> float32 out."""
    x = np.asarray(logits)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


def logit_threshold(threshold: float) -> float:
    """The logit of a probability threshold, ``log(t / (1 - t))``: ``-inf`` at 0, ``+inf`` at 1."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise UsageError(f"threshold must be a number in [0, 1], got {threshold!r}") from None
    if not 0.0 <= t <= 1.0:
        raise UsageError(f"threshold must be in [0, 1], got {threshold!r}")
    if t <= 0.0:
        return -math.inf
    if t >= 1.0:
        return math.inf
    return math.log(t / (1.0 - t))


def threshold_logits(logits: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean foreground of logits for a probability ``threshold``: ``logits > logit(threshold)``, any shape.

    Equivalent to ``sigmoid(logits) > threshold``; this is the form every hemseg inference path uses.
    """
    return np.asarray(logits) > logit_threshold(threshold)


def _ellipse(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _as_mask(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise UsageError(f"expected a 2D mask, got shape {m.shape}")
    if m.size == 0:  # OpenCV's connected components crash the process on an empty image (opencv 5.0)
        raise UsageError(f"expected a non-empty 2D mask, got shape {m.shape}")
    return (m != 0).astype(np.uint8)


def _whole_px(what: str, value: Any, limit: int | None = None) -> int:
    """A size the OpenCV steps take as it is: a whole number of pixels >= 0, at most ``limit`` (:func:`radius_px`
    and :func:`area_px` round a config's fractional sizes first)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise UsageError(f"{what} must be a whole number of pixels >= 0, got {value!r}")
    if limit is not None and value > limit:
        raise UsageError(f"{what} must be at most {limit} px, got {value!r}")
    return int(value)


def _radius(radius: Any) -> int:
    return _whole_px("a kernel radius", radius, SIZE_LIMITS["closing_radius"])


def closing(mask: np.ndarray, radius: int) -> np.ndarray:
    """Morphological closing with an elliptical kernel of ``radius`` px (``radius == 0``: unchanged)."""
    m, radius = _as_mask(mask), _radius(radius)
    return cv2.morphologyEx(m, cv2.MORPH_CLOSE, _ellipse(radius)) if radius > 0 else m


def opening(mask: np.ndarray, radius: int) -> np.ndarray:
    """Morphological opening with an elliptical kernel of ``radius`` px (``radius == 0``: unchanged)."""
    m, radius = _as_mask(mask), _radius(radius)
    return cv2.morphologyEx(m, cv2.MORPH_OPEN, _ellipse(radius)) if radius > 0 else m


def remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop 8-connected foreground components with fewer than ``min_area`` pixels."""
    m, min_area = _as_mask(mask), _whole_px("min_area", min_area)  # a NaN min_area wiped the mask
    if min_area <= 1:
        return m
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False
    return keep[labels].astype(np.uint8)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions (4-connected) that do not touch the image border."""
    m = _as_mask(mask)
    background = (m == 0).astype(np.uint8)
    n, labels = cv2.connectedComponents(background, connectivity=4)
    if n <= 1:
        return m
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    hole = np.ones(n, bool)
    hole[0] = False
    hole[border] = False
    return (m.astype(bool) | hole[labels]).astype(np.uint8)


def resize_back(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a mask to ``(height, width)`` (the original image size). For a mask that is all
    there is (the K-Means baseline's); a network's output goes through :func:`postprocess` with ``out_size``, which
    resamples the scores instead."""
    h, w = _check_size(size, "resize_back")
    m = _as_mask(mask)
    return m if m.shape == (h, w) else resize_mask(m, (h, w))


def components(mask: np.ndarray) -> tuple[int, np.ndarray]:
    """Number of 8-connected foreground components and their areas in px (int64, largest first)."""
    m = _as_mask(mask)
    n, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    areas = np.sort(stats[1:, cv2.CC_STAT_AREA].astype(np.int64))[::-1]
    return int(n - 1), areas


def clean_mask(mask: np.ndarray, config: PostprocessConfig) -> np.ndarray:
    """Steps 2-5 (closing, opening, small-component removal, hole filling) on a binary mask."""
    m = closing(mask, radius_px(config.closing_radius))
    m = opening(m, radius_px(config.opening_radius))
    m = remove_small_components(m, area_px(config.min_area))
    return fill_holes(m) if config.fill_holes else m


def _scores_2d(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores)
    while s.ndim > 2 and s.shape[0] == 1:
        s = s[0]
    if s.ndim != 2:
        raise UsageError(f"postprocess expects one (H, W) map (leading size-1 axes allowed), got shape {np.shape(scores)}")
    if s.size == 0:
        raise UsageError(f"postprocess expects a non-empty (H, W) map, got shape {np.shape(scores)}")
    if s.dtype.kind not in "biuf":
        raise UsageError(f"postprocess expects a map of numbers, got dtype {s.dtype}")
    return s


def postprocess(scores: np.ndarray, config: PostprocessConfig | None = None, *, logits: bool = False,
                out_size: tuple[int, int] | None = None) -> np.ndarray:
    """Probability map (or logits with ``logits=True``) -> uint8 ``{0, 1}`` mask, steps 1-6 of the module docstring.

    ``scores`` is ``(H, W)``; leading size-1 axes (``(1, 1, H, W)``) are dropped. ``out_size=(h, w)``: the mask at
    the original image size, decided there on the resampled scores (step 0).
    """
    config = config or PostprocessConfig()
    s = _scores_2d(scores)
    if out_size is not None:
        s, config = at_size(s, config, out_size)
    fg = threshold_logits(s, config.threshold) if logits else s > config.threshold
    return clean_mask(fg.astype(np.uint8), config)


def at_size(scores: np.ndarray, config: PostprocessConfig,
            size: tuple[int, int]) -> tuple[np.ndarray, PostprocessConfig]:
    """Step 0: ``(scores resampled to size, config with its pixel sizes scaled by the same factor)``; unchanged when
    the map already has that size. ``postprocess(s, c)`` of the result equals ``postprocess(scores, config,
    out_size=size)``, for a caller that also needs the resampled map (the probability map of ``return_prob``)."""
    h, w = _check_size(size, "postprocess out_size")
    s = _scores_2d(scores)
    if s.shape == (h, w):
        return s, config
    scaled = config.scaled_by(math.sqrt((h * w) / (s.shape[0] * s.shape[1])))
    return resample_scores(s, (h, w)), scaled


def resample_scores(scores: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A network's score map (logits or probabilities, ``(H, W)``) at ``size = (height, width)``: bilinear, or area
    averaging when both sides shrink; float32. The same size returns the map as float32."""
    h, w = _check_size(size, "resample_scores size")
    s = np.asarray(_scores_2d(scores), dtype=np.float32)
    if s.shape == (h, w):
        return s
    shrink = h < s.shape[0] and w < s.shape[1]
    return cv2.resize(s, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _check_size(size: Any, what: str) -> tuple[int, int]:
    try:
        values = tuple(size)
        if len(values) != 2 or any(isinstance(v, (bool, np.bool_)) or int(v) != v for v in values):
            raise ValueError
        h, w = (int(v) for v in values)
    except (TypeError, ValueError, OverflowError):  # (4.9, 4.9) was cut to 4 x 4, (True, True) taken as 1 x 1
        raise UsageError(f"{what} needs (height, width) in whole pixels, got {size!r}") from None
    if h < 1 or w < 1:
        raise UsageError(f"{what} needs a positive size, got {size!r}")
    if max(h, w) > MAX_SIDE:
        raise UsageError(f"{what} must be at most {MAX_SIDE} px a side, got {size!r}")
    return h, w


def tune_threshold(probs_list: Sequence[np.ndarray], gts_list: Sequence[np.ndarray],
                   candidates: Iterable[float] = DEFAULT_CANDIDATES,
                   config: PostprocessConfig | None = None, metric: str = "mean") -> tuple[float, float]:
    """The threshold with the best validation Dice: ``(best_threshold, best_dice)``.

    ``metric="mean"``: the mean of the per-image Dice (both empty counts 1); ``"pooled"``: the Dice of all pixels of
    all images together, which predicting nothing cannot win. Each probability map is post-processed with ``config``
    (default: threshold only) at every candidate threshold and compared with its ground truth, which must have the
    same shape. Ties go to the candidate closest to 0.5, then to the lower one.
    """
    if metric not in ("mean", "pooled"):
        raise UsageError(f"tune_threshold: metric must be 'mean' or 'pooled', got {metric!r}")
    try:
        probs_list, gts_list = list(probs_list), list(gts_list)
        cands = [float(c) for c in candidates]
    except (TypeError, ValueError):
        raise UsageError("tune_threshold takes sequences of maps and masks and an iterable of numbers as candidates, "
                         f"got {type(probs_list).__name__}, {type(gts_list).__name__}, {candidates!r:.60}") from None
    if config is not None and not isinstance(config, PostprocessConfig):
        raise UsageError(f"tune_threshold: config must be a PostprocessConfig, got a {type(config).__name__}")
    if not probs_list:
        raise UsageError("tune_threshold needs at least one probability map")
    if len(probs_list) != len(gts_list):
        raise UsageError(f"tune_threshold got {len(probs_list)} probability maps but {len(gts_list)} masks")
    if not cands:
        raise UsageError("tune_threshold needs at least one candidate threshold")
    config = config or PostprocessConfig()
    probs = [_scores_2d(p) for p in probs_list]
    gts = [_scores_2d(g) for g in gts_list]
    for i, (p, g) in enumerate(zip(probs, gts)):
        if p.shape != g.shape:
            raise UsageError(f"tune_threshold: probability map {i} has shape {p.shape} but its mask {g.shape}")
    scored = []
    for t in cands:
        cfg = config.replace(threshold=t)
        masks = [postprocess(p, cfg) for p in probs]
        if metric == "mean":
            score = float(np.mean([dice_score(m, g) for m, g in zip(masks, gts)]))
        else:
            inter = sum(int(np.count_nonzero(m & (g > 0))) for m, g in zip(masks, gts))
            total = sum(int(np.count_nonzero(m)) + int(np.count_nonzero(g)) for m, g in zip(masks, gts))
            score = 2.0 * inter / total if total else 1.0
        scored.append((score, t))
    mean, t = min(scored, key=lambda st: (-st[0], abs(st[1] - 0.5), st[1]))
    return t, mean
