"""The acquisition: limited resolution (partial volume), receive-coil bias field, Rician noise, 8-bit windowing."""

from __future__ import annotations

import cv2
import numpy as np

from hemseg.phantom.canvas import Canvas
from hemseg.phantom.texture import smooth_noise


def partial_volume(img: np.ndarray, rng: np.random.Generator, mm_per_px: float) -> np.ndarray:
    """Acquire at the scanner's resolution (0.55-1.3 mm per sample, each axis), interpolate back to the display
    matrix (bicubic, with its slight overshoot at edges), then blur a little."""
    h, w = img.shape
    fy = max(1.0, rng.uniform(0.55, 1.3) / mm_per_px)
    fx = max(1.0, rng.uniform(0.55, 1.3) / mm_per_px)
    lh, lw = max(8, int(round(h / fy))), max(8, int(round(w / fx)))
    if (lh, lw) != (h, w):
        img = cv2.resize(cv2.resize(img, (lw, lh), interpolation=cv2.INTER_AREA), (w, h),
                         interpolation=cv2.INTER_CUBIC)
    return cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 0.7))


def bias_field(canvas: Canvas, rng: np.random.Generator, posterior: tuple[float, float] | None) -> np.ndarray:
    """Smooth multiplicative field: fall-off away from a posterior (spine) coil plus a random low-order part.

    ``posterior`` is the world direction towards the coil (None: no coil fall-off, e.g. coronal).
    """
    h, w = canvas.height, canvas.width
    gh, gw = 24, 24
    ys, xs = np.mgrid[0:gh, 0:gw].astype(np.float64)
    px = np.stack([xs.ravel() * (w - 1) / (gw - 1), ys.ravel() * (h - 1) / (gh - 1)], 1)
    mm = canvas.to_mm(px)
    field = np.zeros(gh * gw)
    if posterior is not None:
        d = mm @ np.asarray(posterior, np.float64)
        dist = d.max() - d
        length = rng.uniform(90.0, 260.0)
        floor = rng.uniform(0.25, 0.6)
        field += np.log(floor + (1 - floor) * np.exp(-dist / length))
    low = smooth_noise(rng, gh, gw, rng.uniform(8, 16)).ravel()
    field += rng.uniform(0.05, 0.2) * low
    f = np.exp(field - field.mean()).reshape(gh, gw).astype(np.float32)
    return cv2.resize(f, (w, h), interpolation=cv2.INTER_CUBIC)


def rician(img: np.ndarray, rng: np.random.Generator, rel_sigma: float) -> np.ndarray:
    """Magnitude of the complex signal plus Gaussian noise on both channels (Rician in the background)."""
    ref = float(np.percentile(img[::4, ::4], 99.0)) or 1.0
    sigma = rel_sigma * ref
    n = rng.standard_normal((2,) + img.shape, dtype=np.float32)
    n *= sigma
    re = img + n[0]
    return np.sqrt(re * re + n[1] * n[1])


def to_uint8(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Window the image into 8 bits as a scanner/PACS export would (top percentile near white, a few clip)."""
    top = float(np.percentile(img[::3, ::3], rng.uniform(99.0, 99.9))) * rng.uniform(0.95, 1.2)
    out = img * (255.0 / max(top, 1e-6))
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def acquire(signal: np.ndarray, canvas: Canvas, rng: np.random.Generator,
            posterior: tuple[float, float] | None) -> np.ndarray:
    """Full acquisition chain: partial volume, bias field, Rician noise, 8-bit."""
    img = partial_volume(signal, rng, canvas.mm_per_px)
    img = img * bias_field(canvas, rng, posterior)
    img = rician(np.clip(img, 0, None), rng, rng.uniform(0.012, 0.045))
    return to_uint8(img, rng)
