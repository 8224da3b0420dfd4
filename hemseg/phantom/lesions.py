"""Vertebral hemangiomas: irregular lesions clipped to a vertebral body, with their trabecular texture.

The texture is the classic one: thickened vertical trabeculae seen as dark "corduroy" striations on sagittal and
coronal slices (they run along the spinal axis) and as dark "polka dots" on axial slices. The mask is the exact
lesion support after clipping to the body (pixels painted with the LESION code); the renderer darkens the lesion
signal by ``pattern`` (0..1) towards the trabecular signal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from hemseg.phantom import contrast as T
from hemseg.phantom.canvas import Body, Canvas
from hemseg.phantom.texture import smooth_noise

MIN_LESION_PX = 6


@dataclass
class LesionLayer:
    mask: np.ndarray        # bool (H, W): lesion support
    pattern: np.ndarray     # float32 (H, W): 0 = lesion matrix, towards 1 = trabecula (0 outside lesions)
    count: int              # lesions placed (they may touch or merge)


def body_areas(canvas: Canvas) -> np.ndarray:
    """Pixel count of every body index (index 0 = not a body)."""
    return np.bincount(canvas.body.ravel(), minlength=256)


def body_pixels(canvas: Canvas) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """(rows, cols) of the pixels of every body index present in the body map."""
    flat = canvas.body.ravel()
    idx = np.flatnonzero(flat)
    ids = flat[idx]
    order = np.argsort(ids, kind="stable")
    idx, ids = idx[order], ids[order]
    out = {}
    bounds = np.flatnonzero(np.diff(ids)) + 1
    for part in np.split(np.arange(len(ids)), bounds):
        if len(part):
            sel = idx[part]
            out[int(ids[part[0]])] = (sel // canvas.width, sel % canvas.width)
    return out


def place_lesions(canvas: Canvas, rng: np.random.Generator, n: int, plane: str) -> LesionLayer:
    """Paint up to ``n`` hemangiomas into visible vertebral bodies; returns their mask and texture."""
    h, w = canvas.height, canvas.width
    mask = np.zeros((h, w), bool)
    pattern = np.zeros((h, w), np.float32)
    if n <= 0:
        return LesionLayer(mask, pattern, 0)
    areas = body_areas(canvas)
    pix = body_pixels(canvas)
    by_index = {b.index: b for b in canvas.bodies}
    min_body = max(4 * MIN_LESION_PX, int(0.15 * math.pi * (canvas.px(6.0)) ** 2))
    candidates = [i for i in by_index if areas[i] >= min_body]
    placed = 0
    attempts = 0
    while placed < n and candidates and attempts < 4 * n:
        attempts += 1
        weights = np.sqrt(np.array([areas[i] for i in candidates], np.float64))
        k = candidates[int(rng.choice(len(candidates), p=weights / weights.sum()))]
        one = _one_lesion(canvas, rng, by_index[k], pix[k], plane)
        if one is None:
            continue
        m, pat, (y0, y1, x0, x1) = one
        sub = mask[y0:y1, x0:x1]
        psub = pattern[y0:y1, x0:x1]
        psub[m] = np.maximum(psub[m] * sub[m], pat[m])
        sub |= m
        placed += 1
    canvas.labels[mask] = T.LESION
    return LesionLayer(mask, pattern, placed)


def _one_lesion(canvas: Canvas, rng: np.random.Generator, body: Body, pix: tuple[np.ndarray, np.ndarray],
                plane: str):
    ys, xs = pix
    if len(ys) < MIN_LESION_PX:
        return None
    j = int(rng.integers(len(ys)))
    cy, cx = float(ys[j]), float(xs[j])
    small = min(body.half_width, body.half_height)
    if rng.random() < 0.15:
        r_mm = rng.uniform(1.0, 1.4) * max(body.half_width, body.half_height)    # (near) whole-body lesion
        cy = cy * 0.4 + float(ys.mean()) * 0.6
        cx = cx * 0.4 + float(xs.mean()) * 0.6
    else:
        r_mm = max(2.5, small * rng.uniform(0.3, 0.85))
    r = canvas.px(r_mm)
    rx, ry = r * rng.uniform(0.75, 1.25), r * rng.uniform(0.75, 1.25)
    rot = rng.uniform(0, np.pi)
    ext = int(math.ceil(max(rx, ry) * 1.6)) + 2
    y0, y1 = max(0, int(cy) - ext), min(canvas.height, int(cy) + ext + 1)
    x0, x1 = max(0, int(cx) - ext), min(canvas.width, int(cx) + ext + 1)
    if y1 - y0 < 2 or x1 - x0 < 2:
        return None
    gy, gx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = gx - cx, gy - cy
    c, s = math.cos(rot), math.sin(rot)
    u = (dx * c + dy * s) / rx
    v = (-dx * s + dy * c) / ry
    rho = np.sqrt(u * u + v * v)
    phi = np.arctan2(v, u)
    edge = np.ones_like(rho)
    irr = rng.uniform(0.08, 0.25)
    for k in range(2, 8):
        edge += irr / k ** 0.7 * rng.normal() * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    bh, bw = y1 - y0, x1 - x0
    edge += rng.uniform(0.04, 0.12) * smooth_noise(rng, bh, bw, max(1.5, canvas.px(2.0)))
    m = (rho < edge) & (canvas.body[y0:y1, x0:x1] == body.index)
    if int(m.sum()) < MIN_LESION_PX:
        return None
    if plane == "axial":
        pat = _polka_dots(canvas, rng, bh, bw)
    else:
        pat = _corduroy(canvas, rng, body, gx, gy)
    pat *= rng.uniform(0.35, 0.8)
    return m, pat.astype(np.float32), (y0, y1, x0, x1)


def _corduroy(canvas: Canvas, rng: np.random.Generator, body: Body, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Dark striations running along the body's craniocaudal axis."""
    ang = canvas.angle + body.angle          # image angle of the body's local x (AP / lateral) axis
    q = (gx * math.cos(ang) + gy * math.sin(ang)) * canvas.mm_per_px
    period = rng.uniform(2.0, 3.8)
    h, w = gx.shape
    warp = 1.2 * smooth_noise(rng, h, w, max(2.0, canvas.px(6.0)))
    stripes = 0.5 + 0.5 * np.cos(2 * np.pi * q / period + warp + rng.uniform(0, 2 * np.pi))
    thr = rng.uniform(0.45, 0.7)
    lines = np.clip((stripes - thr) / (1 - thr), 0, 1)
    breaks = np.clip(0.7 + 0.6 * smooth_noise(rng, h, w, max(2.0, canvas.px(4.0))), 0, 1)
    return lines * breaks


def _polka_dots(canvas: Canvas, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Dark dots (trabeculae cut across) on a jittered grid."""
    spacing = canvas.px(rng.uniform(2.3, 3.8))
    radius = canvas.px(rng.uniform(0.5, 1.0))
    img = np.zeros((h, w), np.float32)
    if spacing < 1.0:
        return img
    gy, gx = np.meshgrid(np.arange(rng.uniform(0, spacing), h, spacing), np.arange(rng.uniform(0, spacing), w, spacing),
                         indexing="ij")
    n = gy.size
    keep = rng.random(n) >= 0.15
    py = gy.ravel() + rng.normal(0, spacing * 0.22, n)
    px_ = gx.ravel() + rng.normal(0, spacing * 0.22, n)
    rr = np.maximum(0.5, radius * rng.uniform(0.7, 1.3, n))
    pts = np.rint(np.stack([px_, py, rr], 1) * 8).astype(np.int64)[keep]
    for x, y, r in pts.tolist():
        cv2.circle(img, (x, y), r, 1.0, -1, cv2.LINE_AA, 3)
    return np.minimum(img, 1.0)
