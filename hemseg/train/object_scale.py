"""How wide the training lesions are at the network's input size, and whether the model's output grid can draw them.

FCN-ResNet50 (torchvision: a dilated ResNet-50) predicts its logits on a grid 8 times coarser than its input and
upsamples them bilinearly; U-Net and Attention U-Net predict at full resolution. The mask a stride-8 model can draw
is a level set of a bilinear surface on an 8-px grid, which cannot follow an object only a few pixels wide. Fitting
the best such logit grid to ellipses of width ``w`` px (``benchmarks/model_scale/stride_ceiling.py``; no network,
no data, so a ceiling no training can pass) gives mean Dice 0.44 at ``w = 4``, 0.61 at 6, 0.89 at 8, 0.94 at 10 and
0.97 or more from 12 px up, i.e. from 1.5 times the stride.

So the trainer measures the lesions of the training masks *at the training size* and warns when most of them are
narrower than 1.5 x the model's output stride, with the remedy: a larger ``--image-size`` (the lesions get wider in
pixels) with ``--patch`` at the old size (a step costs what it cost before; evaluation runs on the whole slice), or
a full-resolution model. Real example: the spinal cord of the spine-generic volumes is about 5 px wide at 96 px, where
the same fit scores 0.80 at the native size; at 192 px it is 10 px wide and the fit scores 0.93.

Width of a lesion: about the diameter of the largest disc inside it, ``2 * max(distance to background)``, per
8-connected component (a disc of diameter ``d`` measures ``d`` within 1.5 px, depending on where it lies on the
pixel grid; a one-pixel line measures 2).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterable

import cv2
import numpy as np

log = logging.getLogger(__name__)

#: how many input pixels one output logit covers, per model (torchvision FCN: stride 8; the U-Nets: 1)
OUTPUT_STRIDE = {"fcn_resnet50": 8, "unet": 1, "attention_unet": 1}
#: narrower than this many strides, a lesion cannot be drawn well on the model's output grid (see the docstring)
MIN_WIDTH_STRIDES = 1.5


def object_widths(masks: Iterable[np.ndarray]) -> np.ndarray:
    """The width in pixels (see the module docstring) of every 8-connected foreground component of every 2D mask."""
    widths: list[np.ndarray] = []
    for mask in masks:
        fg = (np.asarray(mask) != 0).astype(np.uint8)
        if not fg.any():
            continue
        n, labels = cv2.connectedComponents(fg, connectivity=8)
        # pad so that a lesion touching the border is measured as if the background went on outside the slice
        dist = cv2.distanceTransform(np.pad(fg, 1), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
        peak = np.zeros(n, dtype=np.float64)
        np.maximum.at(peak, labels.ravel(), dist.ravel().astype(np.float64))
        widths.append(2.0 * peak[1:])
    return np.concatenate(widths) if widths else np.zeros(0)


def object_scale(masks: Iterable[np.ndarray], model: str, image_size: int) -> dict[str, Any]:
    """Lesion widths at the training size against the model's output stride, as written to ``metrics.json``."""
    w = object_widths(masks)
    stride = OUTPUT_STRIDE.get(model, 1)
    out: dict[str, Any] = {"image_size": int(image_size), "output_stride": stride, "n_lesions": int(w.size),
                           "min_width_px": MIN_WIDTH_STRIDES * stride}
    if w.size:
        out.update(median_width_px=float(np.median(w)), p10_width_px=float(np.percentile(w, 10)),
                   share_below_min=float(np.mean(w < MIN_WIDTH_STRIDES * stride)))
    return out


def scale_advice(scale: dict[str, Any], model: str, patch: int | str | None = None) -> str | None:
    """A warning when most lesions are too narrow for the model's output grid, else None. ``patch``: the run's
    ``--patch``, if any (the window that keeps the cost per step at a larger size), or ``"auto"``."""
    stride, size = scale["output_stride"], scale["image_size"]
    median = scale.get("median_width_px")
    if stride <= 1 or median is None or median >= scale["min_width_px"]:
        return None
    target = int(math.ceil(size * scale["min_width_px"] / median / 16.0) * 16)  # widths are >= 2 px
    if patch == "auto":  # the budget chooses the patch, at the larger size too
        remedy = (f"--image-size {target} (--patch auto then fits the patch to a --minutes budget; --patch {size} "
                  f"costs what a whole {size} px slice costs)")
    else:
        remedy = f"--image-size {target} --patch {patch or size} (the same cost per step)"
    return (f"the median lesion is {median:.1f} px wide at --image-size {size}, narrower than {model}'s output grid "
            f"can draw (stride {stride}: {scale['min_width_px']:g} px or more for a Dice ceiling near 0.97; "
            f"{100 * scale['share_below_min']:.0f} % of the lesions are narrower); train at {remedy} or with "
            "--model unet")


def best_grid_logits(target: np.ndarray, stride: int, iters: int = 300) -> np.ndarray:
    """The ceiling of a stride-``stride`` model on one square ``{0, 1}`` mask: the logit grid ``stride`` times coarser,
    fitted directly to ``target`` (Adam, lr 0.3, BCE, ``iters`` steps; no network), upsampled as FCN's head does
    (bilinear, ``align_corners=False``) to the mask's size. Threshold at 0 for the best mask such a model can draw.
    Needs torch (imported here, so this module stays importable without it)."""
    import torch
    import torch.nn.functional as F

    size = target.shape[0]
    t = torch.from_numpy(np.asarray(target, dtype=np.float32))[None, None]
    logits = torch.zeros(1, 1, size // stride, size // stride, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.3)
    for _ in range(iters):
        up = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
        loss = F.binary_cross_entropy_with_logits(up, t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def check_object_scale(masks: Iterable[np.ndarray], model: str, image_size: int,
                       patch: int | str | None = None) -> dict[str, Any]:
    """:func:`object_scale`, logged (a warning with :func:`scale_advice`'s remedy when it applies)."""
    scale = object_scale(masks, model, image_size)
    if scale["n_lesions"]:
        log.info("lesions at %d px: median width %.1f px (10th percentile %.1f) for %s's output stride %d",
                 image_size, scale["median_width_px"], scale["p10_width_px"], model, scale["output_stride"])
    advice = scale_advice(scale, model, patch)
    if advice:
        log.warning(advice)
    return scale
