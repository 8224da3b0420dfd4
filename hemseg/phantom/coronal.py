"""Coronal anatomy through the vertebral bodies: stacked bodies and discs, psoas muscles, and the lungs / ribs /
aorta (chest), liver, spleen, kidneys and bowel (abdomen) or the neck muscles and vertebral arteries (neck).

World frame: x to the image right (patient left), y down (caudal), millimetres.
"""

from __future__ import annotations

import math

import numpy as np

from hemseg.phantom import contrast as T
from hemseg.phantom.canvas import Canvas, blob, clamp, ellipse, interp_anchor, place, superellipse
from hemseg.phantom.spine import BODY_WIDTH, SACRUM, SpineCurve, Vertebra, make_spine, visible_run

PSOAS_HALF = {17: 3.0, 18: 9.0, 20: 18.0, 22: 26.0, 23: 30.0}          # half width of each psoas (mm)
TRUNK_HALF = {0: 55.0, 4: 60.0, 5.5: 90.0, 6.5: 150.0, 17: 160.0, 23: 170.0}


def _outline(a: float, b: float, sh: dict, n: int = 56) -> np.ndarray:
    pts = superellipse(a, b, sh["p"], n)
    x, y = pts[:, 0], pts[:, 1]
    y = y - np.sign(y) * sh["concave"] * b * np.maximum(1 - (x / a) ** 2, 0)
    x = x - np.sign(x) * sh["waist"] * a * np.maximum(1 - (y / b) ** 2, 0)
    if sh["uncinate"] > 0:                       # cervical uncinate processes: lips at the upper lateral corners
        lip = np.exp(-((np.abs(x) - a * 0.9) / (0.12 * a)) ** 2) * (y < 0)
        y = y - lip * sh["uncinate"]
    return np.stack([x, y], 1)


def _endplate(a: float, b: float, sh: dict, side: int, n: int = 14) -> np.ndarray:
    x = np.linspace(-0.97 * a, 0.97 * a, n)
    y = side * b * np.maximum(1 - np.abs(x / a) ** sh["p"], 0) ** (1 / sh["p"])
    y = y - np.sign(y) * sh["concave"] * b * np.maximum(1 - (x / a) ** 2, 0)
    return np.stack([x, y], 1)


def _to_world(v: Vertebra, local: np.ndarray) -> np.ndarray:
    return place(local, v.center[0], v.center[1], -v.theta)


def build_coronal(rng: np.random.Generator, region: str, height: int, width: int) -> Canvas:
    """Choose a field of view and paint a coronal spine of ``region`` into a new canvas."""
    curve = make_spine(rng, region, None, BODY_WIDTH)
    verts = [v for v in curve.vertebrae if v.level <= SACRUM]
    fov_h = rng.uniform(200, 320) if region == "cervicothoracic" else rng.uniform(250, 400)
    mm_per_px = fov_h / height
    fov_w = mm_per_px * width
    half = fov_h / 2
    s_first, s_last = verts[0].s - verts[0].half_height, verts[-1].s + verts[-1].half_height
    if region == "cervicothoracic":
        lo_c, hi_c = s_first + half + 3, s_first + half + 70
    else:
        lo_c, hi_c = s_last - half - 60, s_last - half + 10
    s_c = float(rng.uniform(lo_c, max(lo_c + 1, hi_c)))
    c, _, p = curve.frame(s_c)
    center = c + p * rng.normal(0, 10)
    cv = Canvas(height, width, mm_per_px, (float(center[0]), float(center[1])), angle=float(rng.normal(0, 0.04)),
                shift_px=(float(rng.normal(0, 0.03) * width), float(rng.normal(0, 0.03) * height)))
    reach = 0.5 * math.hypot(fov_h, fov_w) + 30
    s0, s1 = s_c - reach, s_c + reach
    vis = [(k, v) for k, v in visible_run(cv, curve.vertebrae, 25.0) if v.level <= SACRUM]
    _soft_tissue(cv, curve, rng, s0, s1, vis)
    _column(cv, curve, rng, vis)
    return cv


def _soft_tissue(cv: Canvas, curve: SpineCurve, rng: np.random.Generator, s0: float, s1: float,
                 vis: list[tuple[int, Vertebra]]) -> None:
    verts = curve.vertebrae
    vs_s = np.array([v.s for v in verts])
    vs_a = np.array([v.half_depth for v in verts])

    def a(s):
        return np.interp(s, vs_s, vs_a)

    def lv(s):
        return curve.level_of(s)

    def s_of(level: float) -> float:
        return float(curve.s[np.argmin(np.abs(curve.level_of(curve.s) - level))])

    tw = rng.uniform(0.85, 1.1)
    fat = rng.uniform(4, 25)

    def skin(s):
        return interp_anchor(TRUNK_HALF, lv(s)) * tw

    # trunk: skin, subcutaneous fat, body wall muscles (both sides: offsets are symmetric)
    cv.fill(curve.band(s0, s1, lambda s: -skin(s), skin, 3.0, outer=True), T.SOFT)
    cv.fill(curve.band(s0, s1, lambda s: -skin(s) + 1.5, lambda s: skin(s) - 1.5, 3.0, outer=True), T.FAT)
    cv.fill(curve.band(s0, s1, lambda s: -skin(s) + fat, lambda s: skin(s) - fat, 3.0, outer=True), T.MUSCLE)
    wall = rng.uniform(8, 15)
    inner = lambda s: skin(s) - fat - wall  # noqa: E731
    cv.fill(curve.band(s0, s1, lambda s: -inner(s), inner, 3.0, outer=True), T.FAT)
    s_apex = s_of(6.3 + rng.normal(0, 0.3))               # lung apices
    s_dome = s_of(15.0 + rng.normal(0, 0.7))              # diaphragm domes (liver side higher)
    s_base = s_of(17.3 + rng.normal(0, 0.4))              # posterior costophrenic recesses
    para = rng.uniform(6, 14)                             # paravertebral gap between body and lung
    # lungs: lateral to the thoracic column, between the apices and the costophrenic recesses
    if s0 < s_base and s1 > s_apex:
        for side in (-1, 1):
            lo = max(s0, s_apex)
            hi = min(s1, s_base)

            def l_in(s, side=side):
                return side * (a(s) + para + 10 * clamp((s_apex + 30 - s) / 30, 0, 1))

            def l_out(s, side=side):
                taper = clamp((s - s_apex) / 40.0, 0.15, 1.0) ** 0.5
                return side * (a(s) + para + (inner(s) - a(s) - para) * taper)

            cv.fill(curve.band(lo, hi, l_in, l_out, 3.0), T.LUNG)
        # ribs: oblique bone bands from each thoracic body outwards and downwards
        for k, v in vis:
            if not 6 <= v.level <= 17:
                continue
            for side in (-1, 1):
                ln = rng.uniform(25, 55)
                ang = rng.uniform(0.25, 0.55)
                start = np.array([[side * (v.half_depth + 2), -v.half_height * 0.7]])
                d = np.array([[side * math.cos(ang), math.sin(ang)]])
                pts = _to_world(v, np.concatenate([start, start + d * ln], 0))
                cv.line(pts, T.CORTEX, rng.uniform(6, 9))
                cv.line(pts, T.MARROW, rng.uniform(2.5, 4))
        # aorta alongside the left of the thoracic and upper lumbar column
        if rng.random() < 0.75:
            dia = rng.uniform(16, 24)
            ao0, ao1 = max(s0, s_of(8.0)), min(s1, s_of(21.0))
            if ao1 > ao0:
                cv.fill(curve.band(ao0, ao1, lambda s: a(s) + 2, lambda s: a(s) + 2 + dia), T.ARTERY)
    # abdomen: liver (image left), spleen (image right), kidneys, bowel; psoas along the lumbar column
    if s1 > s_dome:
        c, _, p = curve.frame(s_dome)
        lc = c - p * rng.uniform(70, 100) + np.array([0, rng.uniform(50, 70)])
        cv.fill(blob(rng, lc[0], lc[1], rng.uniform(70, 90), rng.uniform(60, 80), 0.08, angle=0.1), T.SOFT)
        sc = c + p * rng.uniform(80, 100) + np.array([0, rng.uniform(35, 55)])
        cv.fill(blob(rng, sc[0], sc[1], rng.uniform(30, 40), rng.uniform(40, 55), 0.1, angle=0.3), T.SOFT)
        s_k = s_of(19.0 + rng.normal(0, 0.5))
        for side in (-1, 1):
            kc = curve.point(np.array([s_k + side * 8]), np.array([side * (a(s_k) + rng.uniform(45, 60))]))[0]
            cv.fill(blob(rng, kc[0], kc[1], 32, 50, 0.06, angle=side * 0.15), T.FAT)
            cv.fill(blob(rng, kc[0], kc[1], rng.uniform(22, 28), rng.uniform(45, 58), 0.06, angle=side * 0.15),
                    T.KIDNEY)
            cv.fill(blob(rng, kc[0] - side * 10, kc[1], 6, 14, 0.2, angle=side * 0.15), T.FAT)
        s_bowel = s_of(20.5)
        if s1 > s_bowel:
            for _ in range(int(rng.integers(6, 16))):
                ss = rng.uniform(s_bowel, s1)
                side = 1 if rng.random() < 0.5 else -1
                c2 = curve.point(np.array([ss]), np.array([side * rng.uniform(60, 140)]))[0]
                r = rng.uniform(10, 22)
                if not cv.visible(c2[None], cv.px(r)):
                    continue
                cv.fill(blob(rng, c2[0], c2[1], r, r * rng.uniform(0.6, 1.1), 0.2, n=24), T.BOWEL)
                kind = rng.random()
                if kind < 0.6:
                    cv.fill(blob(rng, c2[0], c2[1], r * 0.6, r * 0.5, 0.25, n=24), T.CSF if kind < 0.35 else T.AIR)
        ps0 = max(s0, s_of(17.3))
        if s1 > ps0:
            pw = rng.uniform(0.8, 1.2)
            for side in (-1, 1):
                cv.fill(curve.band(ps0, s1, lambda s, sd=side: sd * (a(s) - 2),
                                   lambda s, sd=side: sd * (a(s) + interp_anchor(PSOAS_HALF, lv(s)) * 2 * pw)), T.MUSCLE)
                cv.line(curve.offset_line(ps0 + 30, s1, lambda s, sd=side: sd * (
                    a(s) + interp_anchor(PSOAS_HALF, lv(s)) * pw * rng.uniform(0.9, 1.1))), T.FAT, 0.6)
    # neck: scalene / longus muscles and the vertebral arteries next to the cervical column
    s_neck = s_of(6.0)
    if s0 < s_neck:
        for side in (-1, 1):
            cv.fill(curve.band(s0, min(s1, s_neck + 20), lambda s, sd=side: sd * (a(s) - 1),
                               lambda s, sd=side: sd * (a(s) + rng.uniform(18, 26))), T.MUSCLE)
            cv.fill(curve.band(s0, min(s1, s_neck), lambda s, sd=side: sd * (a(s) + 3.0),
                               lambda s, sd=side: sd * (a(s) + 7.5)), T.ARTERY)


def _column(cv: Canvas, curve: SpineCurve, rng: np.random.Generator, vis: list[tuple[int, Vertebra]]) -> None:
    shapes = {}
    for k, v in vis:
        shapes[k] = {"p": rng.uniform(4.5, 7.0), "concave": rng.uniform(0.02, 0.07), "waist": rng.uniform(0.02, 0.07),
                     "uncinate": rng.uniform(1.5, 3.0) if 1 <= v.level <= 6 else 0.0,
                     "cortex": rng.uniform(0.9, 1.5)}
    for (k, v), (k2, w) in zip(vis[:-1], vis[1:]):           # discs
        lo = _to_world(v, _endplate(v.half_depth, v.half_height, shapes[k], +1))
        hi = _to_world(w, _endplate(w.half_depth, w.half_height, shapes[k2], -1))[::-1]
        left, right = 0.5 * (lo[0] + hi[-1]), 0.5 * (lo[-1] + hi[0])
        axis = right - left
        axis /= np.linalg.norm(axis) + 1e-9
        bulge = rng.uniform(0.5, 2.5)
        cv.fill(np.concatenate([lo, [right + axis * bulge], hi, [left - axis * bulge]], 0), T.ANNULUS)
        centre = 0.5 * (left + right)
        mid = len(lo) // 2
        dh = max(float(np.linalg.norm(hi[len(hi) - 1 - mid] - lo[mid])), v.disc_below)
        degenerated = v.degeneration > 0.45
        cv.fill(ellipse(centre[0], centre[1], v.half_depth * (0.62 if not degenerated else 0.45),
                        max(0.6, dh * (0.33 if not degenerated else 0.22)), math.atan2(axis[1], axis[0]), 32),
                T.DEGEN_DISC if degenerated else T.NUCLEUS)
    for k, v in vis:
        sh = shapes[k]
        t = sh["cortex"]
        a, b = v.half_depth, v.half_height
        if v.level == SACRUM:                    # S1 with the sacral alae
            ala = np.array([[-a * 0.9, -b], [a * 0.9, -b], [a * 2.3, -b * 0.6], [a * 2.0, b * 1.4], [-a * 2.0, b * 1.4],
                            [-a * 2.3, -b * 0.6]])
            cv.fill(_to_world(v, ala), T.CORTEX)
            cv.fill(_to_world(v, ala * 0.92), T.MARROW)
        cv.fill(_to_world(v, _outline(a, b, sh)), T.CORTEX)
        cv.fill(_to_world(v, _outline(a - t, b - t, sh)), T.MARROW, body=k)
        cv.add_body(k, v.center, -v.theta, a - t, b - t)
