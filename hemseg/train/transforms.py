"""Paired image/mask augmentation for training (torchvision.transforms.v2 with ``tv_tensors``).

Conventions:

- Input and output are an ``Image`` uint8 ``(1, S, S)`` (the *filtered* slice, i.e. after
  :func:`hemseg.runtime.preprocess.filter_uint8`) and a ``Mask`` uint8 ``(1, S, S)`` in ``{0, 1}``. The image comes
  back as uint8 so that :func:`hemseg.runtime.preprocess.normalize` (the one normalization of hemseg) runs after it,
  exactly as at inference.
- Geometric transforms (flips, an affine: rotation, scale, translation, shear; the foreground crop) move image and
  mask together; the mask is resampled with nearest neighbour and filled with 0 (background) outside the image.
  Intensity transforms (brightness/contrast, gamma, the optional random intensity curve and contrast inversion)
  touch the image only, and so does the optional lower resolution (``lowres``: :class:`RandomLowResolution`).
  The optional smaller field of view (``fov``) blacks out image and mask outside a random rectangle.
  The optional GIN appearance (``gin``) works on the normalized float slice, so :class:`~hemseg.train.data.SliceDataset`
  applies it after normalization (:mod:`hemseg.train.appearance`); :func:`train_transform` ignores that field.
  There is no intensity noise: the slices are augmented after the filter chain, and noise added after non-local
  means is something inference never sees.
- Randomness comes from torch's global RNG, so ``torch.manual_seed`` makes a run repeatable (with ``num_workers=0``;
  DataLoader workers get seeds derived from the loader's generator).
- Only the training split is augmented; validation and evaluation use no transform at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


@dataclass(frozen=True)
class AugmentSpec:
    """Strength of each augmentation (``0`` switches one off). The defaults are the paper recipe's mild set; the
    ``hemseg`` recipe's stronger one is in :mod:`hemseg.train.recipes`."""

    hflip: float = 0.5          #: probability of a left-right flip
    vflip: float = 0.0          #: probability of an up-down flip (off: cranio-caudal order is anatomical)
    degrees: float = 10.0       #: rotation range +/- degrees
    translate: float = 0.05     #: shift range, fraction of the image size
    scale: float = 0.1          #: zoom range [1 - scale, 1 + scale]
    shear: float = 0.0          #: shear range +/- degrees (x and y)
    brightness: float = 0.1     #: ColorJitter brightness
    contrast: float = 0.1       #: ColorJitter contrast
    gamma: float = 0.2          #: gamma drawn from [1 - gamma, 1 + gamma] ...
    log_gamma: float = 0.0      #: ... or, when > 0, gamma = exp(U(-log_gamma, log_gamma)) (symmetric in log space)
    remap: float = 0.0          #: probability of a random smooth intensity curve (:class:`RandomIntensityCurve`)
    fov: float = 0.0            #: probability of a smaller field of view (:class:`RandomFieldOfView`)
    fov_shape: str = "band"     #: its shape: ``band`` (one side shrinks, the other stays whole) or ``box`` (both)
    gin: float = 0.0            #: probability of GIN, a random convolutional appearance (:mod:`hemseg.train.appearance`)
    invert: float = 0.0         #: probability of a contrast inversion of the body (:class:`RandomInversion`)
    lowres: float = 0.0         #: probability of a lower acquisition resolution (:class:`RandomLowResolution`)

    #: what a run saved before a field existed ran with, where that is not the field's default (fields missing from
    #: this map were "off" before they existed): ``--fov-shape`` came after ``--fov``, whose fields of view were boxes
    BEFORE_FIELD: ClassVar[dict[str, Any]] = {"fov_shape": "box"}

    def to_dict(self) -> dict[str, float]:
        from dataclasses import asdict

        return asdict(self)


class RandomGamma(v2.Transform):
    """Gamma correction with gamma drawn uniformly from ``[lo, hi]`` (or log-uniformly with ``log_space``); images
    only (masks pass through)."""

    def __init__(self, lo: float, hi: float, log_space: bool = False) -> None:
        super().__init__()
        if not 0 < lo <= hi:
            raise ValueError(f"gamma range must satisfy 0 < lo <= hi, got ({lo}, {hi})")
        self.lo, self.hi, self.log_space = float(lo), float(hi), bool(log_space)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        u = float(torch.rand(()))
        if self.log_space:
            return {"gamma": math.exp(math.log(self.lo) + (math.log(self.hi) - math.log(self.lo)) * u)}
        return {"gamma": self.lo + (self.hi - self.lo) * u}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.adjust_gamma, inpt, gamma=params["gamma"])


class _WithProbability(v2.Transform):
    """A transform applied with probability ``p`` (checked to lie in [0, 1])."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"probability must be in [0, 1], got {p}")
        self.p = float(p)

    def _per_slice(self, inpt: Any, fn: Any) -> Any:
        """``fn`` (a uint8 ``(H, W)`` -> uint8 ``(H, W)`` mapping) on every 2D slice of the uint8 image ``inpt``."""
        if inpt.dtype != torch.uint8:
            raise TypeError(f"{type(self).__name__} maps uint8 images, got {inpt.dtype}")
        t = inpt.as_subclass(torch.Tensor)
        out = torch.stack([torch.from_numpy(fn(c.numpy())) for c in t.reshape(-1, *t.shape[-2:])])
        return tv_tensors.wrap(out.reshape(t.shape), like=inpt)


class RandomIntensityCurve(_WithProbability):
    """With probability ``p``, map the grey levels through a random smooth curve: the cubic Bernstein polynomial
    ``f(t) = sum_i C(3, i) t^i (1 - t)^(3 - i) y_i`` with ``y_0 = 0`` and ``y_1, y_2, y_3 ~ U(0, 1)``, stretched so
    that its maximum is 255.

    The curve may rise, fall or bend, so bright and dark tissues can swap order (cerebrospinal fluid is bright on T2
    and dark on T1, the cord the other way round): the network cannot rely on one sequence's intensity order and has
    to use shape and context, and an MRI sequence it has not seen is, to first order, the same anatomy under another
    such curve. ``f(0) = 0`` because air gives no signal in any sequence (and the affine's fill stays black). This is
    the random intensity mapping of single-source domain generalization (the Bezier "non-linear transformation" of
    Models Genesis, Zhou et al. 2019; the random intensity remapping of Ouyang et al. 2022) in its simplest form.
    uint8 images through a 256-entry lookup table; masks pass through."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if float(torch.rand(())) >= self.p:
            return {"lut": None}
        y = torch.cat([torch.zeros(1, dtype=torch.float64), torch.rand(3, dtype=torch.float64)])
        t = torch.arange(256, dtype=torch.float64) / 255.0
        curve = ((1 - t) ** 3 * y[0] + 3 * t * (1 - t) ** 2 * y[1] + 3 * t ** 2 * (1 - t) * y[2] + t ** 3 * y[3])
        hi = float(curve.max())
        if hi < 1e-6:  # all draws zero: no curve to stretch
            return {"lut": None}
        lut = torch.round(curve / hi * 255.0).to(torch.uint8)
        return {"lut": lut}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        lut = params["lut"]
        if lut is None or not isinstance(inpt, tv_tensors.Image):
            return inpt
        if inpt.dtype != torch.uint8:
            raise TypeError(f"RandomIntensityCurve maps uint8 images, got {inpt.dtype}")
        return tv_tensors.wrap(lut[inpt.as_subclass(torch.Tensor).long()], like=inpt)


class RandomInversion(_WithProbability):
    """With probability ``p``, invert the contrast of the body and leave the air dark: inside the body a grey level
    ``x`` becomes ``255 - x`` (the brightest tissue becomes the darkest, and the reverse); outside it nothing changes.
    The body is what Otsu's threshold separates from the air (the usual first step of MRI body masking), its holes
    filled (airways, dark bone and fluid inside stay part of it), per slice (:func:`invert_body`).

    Why: T1 and T2 weighting order fluid and tissue oppositely (cerebrospinal fluid and oedema are bright on T2 and
    STIR, dark on T1), while air gives no signal in any of them. A model trained on one weighting sees the other as an
    inverted image it has never met: on real cord MRI, models trained on two contrasts scored 0.00-0.05 Dice on
    inverted slices of series they segment at 0.82-0.86. The random curve of :class:`RandomIntensityCurve` reaches
    such orders only now and then; this is the one change of order that separates the two weightings, drawn as often
    as ``p`` says. Off by default: on real cord MRI (trained on T2w + T2star, tested on T1w) it made the T1w result
    worse, not better (benchmarks/MEASUREMENTS.md). uint8 images only; masks pass through."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"invert": float(torch.rand(())) < self.p}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not params["invert"] or not isinstance(inpt, tv_tensors.Image):
            return inpt
        return self._per_slice(inpt, invert_body)


def invert_body(image: np.ndarray) -> np.ndarray:
    """:class:`RandomInversion`'s mapping of one uint8 ``(H, W)`` slice: ``255 - x`` inside the body (the pixels above
    the slice's Otsu threshold, holes filled), ``x`` outside. A slice without body (all one level) is returned as is."""
    arr = np.ascontiguousarray(image, dtype=np.uint8)
    if arr.size == 0 or arr.min() == arr.max():
        return arr.copy()
    _, fg = cv2.threshold(arr, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    contours, _ = cv2.findContours(fg, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    body = np.zeros_like(fg)
    cv2.drawContours(body, contours, -1, 255, thickness=cv2.FILLED)
    return np.where(body > 0, 255 - arr, arr).astype(np.uint8)


class RandomLowResolution(_WithProbability):
    """With probability ``p``, the slice as a coarser acquisition would give it: shrunk by a factor ``z ~ U(lo, 1)``
    with area averaging (a larger voxel averages the signal it covers), then enlarged back with cubic interpolation
    (what a viewer or a resampler does with a coarse series), clipped to 0-255. nnU-Net's "simulate low resolution"
    augmentation (zoom 0.5-1), in 2D.

    Why: clinical series of one contrast differ in matrix and slice thickness, and a model fed only the training
    series' sharpness may rely on texture at that one scale; enlarged coarse series reach inference at the network's
    size looking like this. The mask is not changed (the anatomy did not move). The slices are augmented after the
    filter chain, and a filtered coarse slice is smooth as well, so this is something inference can meet (unlike
    noise after non-local means). uint8 images only; masks pass through."""

    def __init__(self, p: float, lo: float = 0.5) -> None:
        super().__init__(p)
        if not 0 < lo <= 1:
            raise ValueError(f"the smallest zoom must be in (0, 1], got {lo}")
        self.lo = float(lo)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if float(torch.rand(())) >= self.p:
            return {"zoom": None}
        return {"zoom": self.lo + (1 - self.lo) * float(torch.rand(()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["zoom"] is None or not isinstance(inpt, tv_tensors.Image):
            return inpt
        return self._per_slice(inpt, lambda c: coarsen(c, params["zoom"]))


def coarsen(image: np.ndarray, zoom: float) -> np.ndarray:
    """:class:`RandomLowResolution`'s mapping of one uint8 ``(H, W)`` slice: area-shrunk to ``zoom`` of its size (at
    least 1 px a side), cubic back to ``(H, W)``, rounded and clipped to uint8."""
    arr = np.ascontiguousarray(image, dtype=np.uint8)
    h, w = arr.shape
    small = cv2.resize(arr.astype(np.float32), (max(1, round(w * zoom)), max(1, round(h * zoom))),
                       interpolation=cv2.INTER_AREA)
    back = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(np.rint(back), 0, 255).astype(np.uint8)


#: the shapes of :class:`RandomFieldOfView` (``--fov-shape``)
FOV_SHAPES = ("band", "box")


class RandomFieldOfView(v2.Transform):
    """With probability ``p``, a smaller field of view: everything outside a random axis-aligned rectangle becomes
    black (image) and background (mask), as if the slice had been acquired with a smaller FOV or reconstructed
    into a zero-padded grid. Each side of the rectangle is ``U(min_side, 1)`` of the slice's; when the mask has
    foreground the rectangle contains a random foreground pixel (an acquisition is planned around the anatomy of
    interest), otherwise it is placed uniformly.

    Why: series of one patient differ in field of view (a cervical T2 may cover a 5 cm band where the T1 covers the
    neck; registered or reformatted series carry black borders). A network trained on one FOV may rely on the outline
    of the whole body: on real cord MRI a model that scored Dice 0.85 on a T1w volume scored 0.16 on the same volume
    with everything outside the T2w series' band blacked out. Masks are resampled by nobody here: pixels outside the
    rectangle are set to 0, pixels inside keep their values.

    ``shape="band"`` shrinks one side only (rows or columns, drawn with equal odds) and keeps the other whole: the
    rectangular field of view of an acquisition with fewer phase-encoding lines, or the band a thinner stack covers
    once resampled into another series' grid. It removes less context than a box of the same side range."""

    def __init__(self, p: float, min_side: float = 0.3, shape: str = "band") -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"probability must be in [0, 1], got {p}")
        if not 0 < min_side <= 1:
            raise ValueError(f"min_side must be in (0, 1], got {min_side}")
        if shape not in FOV_SHAPES:
            raise ValueError(f"shape must be one of {', '.join(FOV_SHAPES)}, got {shape!r}")
        self.p, self.min_side, self.shape = float(p), float(min_side), shape

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if float(torch.rand(())) >= self.p:
            return {"box": None}
        h, w = next(x.shape[-2:] for x in flat_inputs if isinstance(x, (tv_tensors.Image, tv_tensors.Mask)))
        bh = max(1, int(round(h * (self.min_side + (1 - self.min_side) * float(torch.rand(()))))))
        bw = max(1, int(round(w * (self.min_side + (1 - self.min_side) * float(torch.rand(()))))))
        if self.shape == "band":
            bh, bw = (bh, w) if float(torch.rand(())) < 0.5 else (h, bw)
        masks = [x for x in flat_inputs if isinstance(x, tv_tensors.Mask)]
        fg = torch.nonzero(masks[0].as_subclass(torch.Tensor).reshape(h, w)) if masks else None
        top, left = _window_position(fg, h, w, bh, bw)
        return {"box": (top, left, bh, bw)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        box = params["box"]
        if box is None or not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return inpt
        top, left, bh, bw = box
        out = torch.zeros_like(inpt.as_subclass(torch.Tensor))
        out[..., top:top + bh, left:left + bw] = inpt.as_subclass(torch.Tensor)[..., top:top + bh, left:left + bw]
        return tv_tensors.wrap(out, like=inpt)


def train_transform(spec: AugmentSpec | None = None) -> v2.Compose:
    """The training augmentation pipeline (see the module docstring)."""
    s = spec or AugmentSpec()
    steps: list[v2.Transform] = []
    if s.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=s.hflip))
    if s.vflip > 0:
        steps.append(v2.RandomVerticalFlip(p=s.vflip))
    if s.degrees > 0 or s.translate > 0 or s.scale > 0 or s.shear > 0:
        steps.append(v2.RandomAffine(degrees=s.degrees, translate=(s.translate, s.translate) if s.translate > 0 else None,
                                     scale=(1 - s.scale, 1 + s.scale) if s.scale > 0 else None,
                                     shear=(-s.shear, s.shear, -s.shear, s.shear) if s.shear > 0 else None,
                                     interpolation=v2.InterpolationMode.BILINEAR, fill=0))
    if s.fov > 0:
        steps.append(RandomFieldOfView(s.fov, shape=s.fov_shape))
    if s.lowres > 0:
        steps.append(RandomLowResolution(s.lowres))
    if s.brightness > 0 or s.contrast > 0:
        steps.append(v2.ColorJitter(brightness=s.brightness or None, contrast=s.contrast or None))
    if s.log_gamma > 0:
        steps.append(RandomGamma(math.exp(-s.log_gamma), math.exp(s.log_gamma), log_space=True))
    elif s.gamma > 0:
        steps.append(RandomGamma(1 - s.gamma, 1 + s.gamma))
    if s.remap > 0:
        steps.append(RandomIntensityCurve(s.remap))
    if s.invert > 0:
        steps.append(RandomInversion(s.invert))
    return v2.Compose(steps)


def foreground_crop(image_u8: torch.Tensor, mask_u8: torch.Tensor, p: float, lo: float = 0.5,
                    hi: float = 0.85) -> tuple[torch.Tensor, torch.Tensor]:
    """With probability ``p``, and only when the mask has foreground: a square window of side ``U(lo, hi)`` times the
    slice size, placed so that it contains a random foreground pixel (uniformly placed around it, clipped to the
    slice), resized back to the slice size (bilinear image, nearest mask). A zoom onto a lesion: small lesions get
    more pixels. ``(S, S)`` uint8 tensors in and out; torch's global RNG decides."""
    if p <= 0 or float(torch.rand(())) >= p:
        return image_u8, mask_u8
    fg = torch.nonzero(mask_u8)
    if fg.numel() == 0:
        return image_u8, mask_u8
    h, w = image_u8.shape[-2:]
    side = int(round(min(h, w) * (lo + (hi - lo) * float(torch.rand(())))))
    side = max(2, min(side, h, w))
    cy, cx = (int(v) for v in fg[int(torch.randint(len(fg), ()))])
    # the window's top-left corner: anywhere that keeps the chosen pixel inside, then clipped to the slice
    top = min(max(cy - int(torch.randint(side, ())), 0), h - side)
    left = min(max(cx - int(torch.randint(side, ())), 0), w - side)
    img = F.resized_crop(image_u8.reshape(1, h, w), top, left, side, side, [h, w],
                         interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
    msk = F.resized_crop(mask_u8.reshape(1, h, w), top, left, side, side, [h, w],
                         interpolation=v2.InterpolationMode.NEAREST)
    return img[0], msk[0]


def random_patch(image_u8: torch.Tensor, mask_u8: torch.Tensor, size: int,
                 on_lesion: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``size`` x ``size`` window of a ``(S, S)`` slice and its mask, no resampling (nnU-Net's patch training: the
    lesions keep the scale they have at inference, the step costs what a ``size`` px slice costs). With ``on_lesion``
    and a mask with foreground, the window contains a random foreground pixel (placed uniformly among the windows
    that do); otherwise it is placed uniformly. ``size >= S`` returns the slice unchanged. torch's global RNG
    decides."""
    h, w = image_u8.shape[-2:]
    if size >= h and size >= w:
        return image_u8, mask_u8
    ph, pw = min(size, h), min(size, w)
    fg = torch.nonzero(mask_u8.reshape(h, w)) if on_lesion else None  # only a forced pick needs the lesion pixels
    top, left = _window_position(fg, h, w, ph, pw)
    return (image_u8.reshape(h, w)[top:top + ph, left:left + pw].contiguous(),
            mask_u8.reshape(h, w)[top:top + ph, left:left + pw].contiguous())


def _window_position(fg: torch.Tensor | None, h: int, w: int, bh: int, bw: int) -> tuple[int, int]:
    """Top-left corner of a ``bh`` x ``bw`` window in an ``h`` x ``w`` slice: when ``fg`` (foreground pixel
    coordinates, ``(K, 2)``) has pixels, uniformly among the windows that contain one of them drawn at random;
    otherwise uniformly. torch's global RNG decides."""
    if fg is not None and fg.numel():
        cy, cx = (int(v) for v in fg[int(torch.randint(len(fg), ()))])
        top = int(torch.randint(max(0, cy - bh + 1), min(cy, h - bh) + 1, ()))
        left = int(torch.randint(max(0, cx - bw + 1), min(cx, w - bw) + 1, ()))
        return top, left
    return int(torch.randint(h - bh + 1, ())), int(torch.randint(w - bw + 1, ()))


def apply_pair(transform: v2.Transform | None, image_u8: torch.Tensor,
               mask_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a paired transform on uint8 ``(S, S)`` or ``(1, S, S)`` image and mask tensors.

    Returns plain uint8 tensors ``(S, S)``: the image (0..255) and the mask (``{0, 1}``).
    """
    img = tv_tensors.Image(image_u8.reshape(1, *image_u8.shape[-2:]))
    msk = tv_tensors.Mask(mask_u8.reshape(1, *mask_u8.shape[-2:]))
    if transform is not None:
        img, msk = transform(img, msk)
    if img.dtype != torch.uint8:  # every step above keeps uint8; guard against a custom float pipeline
        img = F.to_dtype(img, torch.uint8, scale=True)
    return img.as_subclass(torch.Tensor)[0], (msk.as_subclass(torch.Tensor)[0] != 0).to(torch.uint8)
