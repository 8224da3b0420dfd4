"""Hemangioma mimics and marrow heterogeneity painted into the vertebral bodies.

Fatty islands and Modic type 2 endplate changes are as bright as hemangiomas on T1 and T2 (but dark on STIR and
fat-sat); Modic type 1 oedema is bright on T2/STIR and enhances; focal red marrow is darker on T1. None of them is
part of the lesion mask: they are what makes a global threshold fail.
"""

from __future__ import annotations

import numpy as np

from hemseg.phantom import contrast as T
from hemseg.phantom.canvas import Canvas, blob, place
from hemseg.phantom.lesions import body_areas, body_pixels


def paint_mimics(canvas: Canvas, rng: np.random.Generator, plane: str) -> None:
    """Fat islands, red-marrow islands and (sagittal/coronal) Modic bands and Schmorl nodes."""
    areas = body_areas(canvas)
    visible = [b for b in canvas.bodies if areas[b.index] >= 20]
    if not visible:
        return
    p_fat = rng.uniform(0.0, 0.7)
    p_red = rng.uniform(0.0, 0.5)
    p_modic = rng.uniform(0.0, 0.35)
    pix = body_pixels(canvas)
    for b in visible:
        where = pix[b.index]
        small = min(b.half_width, b.half_height)
        for _ in range(int(rng.integers(1, 4))):
            if rng.random() < p_fat:
                c = _random_point(canvas, rng, where)
                r = rng.uniform(1.2, max(1.5, small * 0.45))
                canvas.fill_in_body(blob(rng, c[0], c[1], r, r * rng.uniform(0.6, 1.3), rng.uniform(0.1, 0.35)),
                               T.FAT_ISLAND, b.index)
            if rng.random() < p_red:
                c = _random_point(canvas, rng, where)
                r = rng.uniform(2.0, max(2.5, small * 0.5))
                canvas.fill_in_body(blob(rng, c[0], c[1], r, r * rng.uniform(0.6, 1.3), 0.3), T.RED_MARROW, b.index)
        if rng.random() < p_modic:
            code = T.MODIC2 if rng.random() < 0.7 else T.MODIC1
            if plane == "axial":
                c = _random_point(canvas, rng, where)
                r = rng.uniform(3.0, max(3.5, small * 0.8))
                canvas.fill_in_body(blob(rng, c[0], c[1], r, r * 0.8, 0.3), code, b.index)
            else:
                side = 1 if rng.random() < 0.5 else -1
                depth = rng.uniform(2.0, max(2.5, b.half_height * 0.7))
                u0, u1 = sorted(rng.uniform(-1.0, 1.0, 2) * b.half_width * 1.1)
                if u1 - u0 < b.half_width * 0.4:
                    u0, u1 = -b.half_width, b.half_width
                edge = side * (b.half_height + 1.0)
                inner = side * (b.half_height - depth)
                n = 12
                uu = np.linspace(u0, u1, n)
                wav = inner + side * rng.uniform(-0.25, 0.25, n) * depth
                poly = np.concatenate([np.stack([uu, np.full(n, edge)], 1), np.stack([uu[::-1], wav[::-1]], 1)])
                canvas.fill_in_body(place(poly, b.center[0], b.center[1], b.angle), code, b.index)
        if plane != "axial" and rng.random() < p_modic * 0.5:       # Schmorl node
            side = 1 if rng.random() < 0.5 else -1
            u = rng.uniform(-0.5, 0.5) * b.half_width
            r = rng.uniform(1.5, 4.0)
            c = place(np.array([[u, side * b.half_height]]), b.center[0], b.center[1], b.angle)[0]
            canvas.fill_in_body(blob(rng, c[0], c[1], r * 1.3, r, 0.2, angle=b.angle), T.DEGEN_DISC, b.index)


def _random_point(canvas: Canvas, rng: np.random.Generator, where: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    ys, xs = where
    j = int(rng.integers(len(ys)))
    return canvas.to_mm(np.array([[xs[j], ys[j]]], np.float64))[0]
