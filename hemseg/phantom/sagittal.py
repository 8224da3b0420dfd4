"""Midline sagittal anatomy: stacked vertebral bodies and discs, canal, thecal sac, cord, posterior elements,
paraspinal soft tissue and the contents of the neck, chest and abdomen in front of the column.

World frame: x to the image right (posterior), y down (caudal), millimetres. Anterior is on the image left, as
radiologists display sagittal spine images. Layers are described as offsets ``u`` (mm) along the posterior normal
of the spine's centre line as functions of its arclength ``s`` (see :mod:`hemseg.phantom.spine`).
"""

from __future__ import annotations

import math

import numpy as np

from hemseg.phantom import contrast as T
from hemseg.phantom.canvas import Canvas, blob, clamp, ellipse, interp_anchor, place, superellipse
from hemseg.phantom.spine import (
    BODY_DEPTH,
    CANAL_AP,
    CORD_AP,
    SACRUM,
    SAGITTAL_THETA,
    SpineCurve,
    Vertebra,
    make_spine,
    visible_run,
)

SP_LENGTH = {0: 24.0, 1: 13.0, 4: 16.0, 5: 26.0, 6: 30.0, 10: 36.0, 17: 30.0, 20: 27.0, 22: 21.0}
SP_ANGLE = {0: 0.2, 4: 0.35, 5: 0.45, 8: 0.95, 13: 0.95, 16: 0.45, 18: 0.12, 22: 0.1}   # rad below horizontal
SP_HEIGHT = {0: 12.0, 1: 7.0, 5: 9.0, 10: 8.0, 17: 14.0, 19: 19.0, 22: 15.0}
MUSCLE_DEPTH = {0: 62.0, 5: 60.0, 8: 45.0, 14: 45.0, 20: 62.0, 23: 40.0, 26: 25.0}
ANTERIOR_SKIN = {0: 46.0, 4: 50.0, 5: 58.0, 7: 150.0, 26: 150.0}
POST_EPIDURAL = {0: 0.6, 5: 0.8, 8: 1.8, 17: 2.5, 20: 4.0, 23: 5.0}
_CAP_COS = np.cos(np.linspace(-np.pi / 2, np.pi / 2, 7))
_CAP_SIN = np.sin(np.linspace(-np.pi / 2, np.pi / 2, 7))


# -- vertebral body outline -----------------------------------------------------------------------------------
def _deform(x: np.ndarray, y: np.ndarray, a: float, b: float, concave: float, front: float, wedge: float):
    y = y - np.sign(y) * concave * b * np.maximum(1 - (x / a) ** 2, 0)
    x = x + (x < 0) * front * a * np.maximum(1 - (y / b) ** 2, 0)
    y = y * (1 + wedge * x / a)
    return x, y


def body_outline(a: float, b: float, shape: dict, n: int = 64) -> np.ndarray:
    """Local outline (u = AP, v = craniocaudal) of a body with half depth ``a`` and half height ``b``."""
    pts = superellipse(a, b, shape["p"], n)
    x, y = _deform(pts[:, 0], pts[:, 1], a, b, shape["concave"], shape["front"], shape["wedge"])
    return np.stack([x, y], 1)


def endplate(a: float, b: float, shape: dict, side: int, n: int = 16) -> np.ndarray:
    """Local points of the lower (side=+1) or upper (side=-1) endplate, anterior to posterior."""
    x = np.linspace(-0.98 * a, 0.98 * a, n)
    y = side * b * np.maximum(1 - np.abs(x / a) ** shape["p"], 0) ** (1 / shape["p"])
    x, y = _deform(x, y, a, b, shape["concave"], 0.0, shape["wedge"])
    return np.stack([x, y], 1)


def body_shape(rng: np.random.Generator, level: int) -> dict:
    """Random outline parameters of one body (rounding, endplate concavity, anterior concavity, wedging)."""
    wedge = 0.0
    if 7 <= level <= 16:
        wedge = rng.uniform(0.02, 0.09)          # thoracic: anterior a little shorter
    elif level in (21, 22):
        wedge = -rng.uniform(0.02, 0.08)         # lower lumbar: anterior taller
    return {"p": rng.uniform(4.5, 7.0), "concave": rng.uniform(0.02, 0.07), "front": rng.uniform(0.0, 0.05),
            "wedge": wedge, "cortex": rng.uniform(0.9, 1.5)}


def _to_world(v: Vertebra, local: np.ndarray) -> np.ndarray:
    return place(local, v.center[0], v.center[1], -v.theta)


class _SmoothRandom:
    """A random smooth function of s (mm): three sines, amplitude ``scale``."""

    def __init__(self, rng: np.random.Generator, scale: float, period: float):
        self.scale = scale
        self.ph = rng.uniform(0, 2 * np.pi, 3)
        self.per = period * rng.uniform(0.7, 1.3, 3) * np.array([1.0, 1 / 2.3, 1 / 5.1])

    def __call__(self, s):
        s = np.asarray(s, np.float64)
        w = (0.75, 0.2, 0.05)
        return self.scale * sum(w[i] * np.sin(2 * np.pi * s / self.per[i] + self.ph[i]) for i in range(3))


class _Layers:
    """Offsets (mm along the posterior normal) of the sagittal layers, as functions of arclength."""

    def __init__(self, curve: SpineCurve, rng: np.random.Generator):
        self.curve = curve
        vs = curve.vertebrae
        self.vs_s = np.array([v.s for v in vs])
        self.vs_a = np.array([v.half_depth for v in vs])
        self.lumbar = curve.region == "thoracolumbar"
        self.canal_scale = rng.uniform(0.88, 1.15)
        self.muscle_scale = rng.uniform(0.8, 1.25)
        self.wig = _SmoothRandom(rng, 3.0, 220.0)
        self.fat_post = rng.uniform(4, 30) if self.lumbar else rng.uniform(3, 14)
        self.fat_wig = _SmoothRandom(rng, self.fat_post * 0.12, 200.0)
        self.neck = rng.uniform(0.85, 1.2)
        self.lf = rng.uniform(1.2, 3.0)                   # ligamentum flavum thickness
        self.ea = rng.uniform(0.4, 1.5)                   # anterior epidural space
        self.pe = rng.uniform(0.7, 1.3)                   # posterior epidural fat scale
        self.sac_end = None
        self.conus = None
        lv = [v.level for v in vs]
        if self.lumbar:
            self.sac_end = float(np.interp(24.0 + rng.uniform(-0.4, 0.3), lv, self.vs_s))
            self.conus = float(np.interp(18.6 + rng.normal(0, 0.5), lv, self.vs_s))
        self.cord_scale = rng.uniform(0.9, 1.1)
        self.cord_shift = rng.uniform(-0.25, 0.05)
        self._lv_key = self._a_key = None
        self._lv_val = self._a_val = None

    def lv(self, s):
        # memo on the array object: one band evaluates many layers on the same ``s`` array
        if s is not self._lv_key:
            self._lv_key, self._lv_val = s, self.curve.level_of(s)
        return self._lv_val

    def a(self, s):
        if s is not self._a_key:
            self._a_key, self._a_val = s, np.interp(s, self.vs_s, self.vs_a)
        return self._a_val

    def ant_canal(self, s):
        return self.a(s) + 1.0

    def post_canal(self, s):
        return self.ant_canal(s) + interp_anchor(CANAL_AP, self.lv(s)) * self.canal_scale

    def post_muscle(self, s):
        return self.post_canal(s) + interp_anchor(MUSCLE_DEPTH, self.lv(s)) * self.muscle_scale + self.wig(s)

    def post_fat(self, s):
        return self.post_muscle(s) + self.fat_post + self.fat_wig(s)

    def ant_skin(self, s):
        return -self.a(s) - interp_anchor(ANTERIOR_SKIN, self.lv(s)) * self.neck

    def sac_ant(self, s):
        return self.ant_canal(s) + self.ea

    def sac_post(self, s):
        return self.post_canal(s) - self.lf * 0.6 - interp_anchor(POST_EPIDURAL, self.lv(s)) * self.pe

    def sac_mid(self, s):
        return 0.5 * (self.sac_ant(s) + self.sac_post(s))

    def sac_half(self, s):
        half = 0.5 * (self.sac_post(s) - self.sac_ant(s))
        if self.sac_end is None:
            return half
        return half * clamp((self.sac_end - np.asarray(s)) / 25.0, 0.05, 1.0) ** 0.5

    def cord_r(self, s):
        r = interp_anchor(CORD_AP, self.lv(s)) * self.cord_scale / 2
        if self.conus is not None:
            r = r * clamp((self.conus - np.asarray(s)) / 28.0, 0, 1) ** 0.6
        return np.minimum(r, self.sac_half(s) * 0.75)

    def cord_c(self, s):
        return self.sac_mid(s) + self.cord_shift * self.sac_half(s)


def build_sagittal(rng: np.random.Generator, region: str, height: int, width: int) -> tuple[Canvas, SpineCurve]:
    """Choose a field of view and paint a sagittal spine of ``region`` into a new canvas."""
    curve = make_spine(rng, region, SAGITTAL_THETA, BODY_DEPTH, curvature=rng.uniform(0.45, 1.2))
    verts = curve.vertebrae
    fov_h = rng.uniform(190, 300) if region == "cervicothoracic" else rng.uniform(240, 380)
    mm_per_px = fov_h / height
    fov_w = mm_per_px * width
    half = fov_h / 2
    s_first, s_last = verts[0].s - verts[0].half_height, verts[-1].s + verts[-1].half_height
    if region == "cervicothoracic":
        lo_c, hi_c = s_first + half + 3, s_first + half + 70
    else:
        lo_c, hi_c = s_last - half - 100, s_last - half - 12
    s_c = float(rng.uniform(lo_c, max(lo_c + 1, hi_c)))
    c, _, p = curve.frame(s_c)
    center = c + p * rng.uniform(10, 45)
    canvas = Canvas(height, width, mm_per_px, (float(center[0]), float(center[1])),
                    angle=float(rng.normal(0, 0.05)),
                    shift_px=(float(rng.normal(0, 0.03) * width), float(rng.normal(0, 0.03) * height)))
    reach = 0.5 * math.hypot(fov_h, fov_w) + 30
    _paint(canvas, curve, rng, s_c - reach, s_c + reach)
    return canvas, curve


def _paint(cv: Canvas, curve: SpineCurve, rng: np.random.Generator, s0: float, s1: float) -> None:
    L = _Layers(curve, rng)
    verts = curve.vertebrae
    vis = visible_run(cv, verts, 60.0)
    # -- the trunk: subcutaneous fat inside the skin, skin line, posterior muscles with fascial planes
    cv.fill(curve.band(s0, s1, L.ant_skin, L.post_fat, 3.0, outer=True), T.FAT)
    cv.line(curve.offset_line(s0, s1, lambda s: L.post_fat(s) + 0.8, 3.0, outer=True), T.SOFT, 1.4)
    cv.fill(curve.band(s0, s1, lambda s: L.a(s) + 2.0, L.post_muscle, 3.0, outer=True), T.MUSCLE)
    for _ in range(int(rng.integers(1, 4))):
        off = rng.uniform(0.35, 0.95)
        wig = _SmoothRandom(rng, rng.uniform(1, 4), rng.uniform(60, 200))
        a0 = rng.uniform(s0, s1)
        a1 = min(s1, a0 + rng.uniform(60, 250))

        def fascia(s, o=off, w=wig):
            return L.post_canal(s) + o * (L.post_muscle(s) - L.post_canal(s)) + w(s)

        cv.line(curve.offset_line(a0, a1, fascia, 3.0, outer=True), T.FAT, rng.uniform(0.5, 1.2))
    _anterior(cv, curve, rng, L, s0, s1)
    _canal(cv, curve, rng, L, s0, s1, vis)
    _posterior_elements(cv, curve, rng, L, vis)
    shapes = {k: body_shape(rng, v.level) for k, v in vis}
    _discs(cv, rng, vis, shapes)
    _ligaments(cv, vis, shapes)
    for k, v in vis:
        sh = shapes[k]
        t = sh["cortex"]
        cv.fill(_to_world(v, body_outline(v.half_depth, v.half_height, sh)), T.CORTEX)
        cv.fill(_to_world(v, body_outline(v.half_depth - t, v.half_height - t, sh)), T.MARROW, body=k)
        cv.add_body(k, v.center, -v.theta, v.half_depth - t, v.half_height - t)
        if v.level < SACRUM and rng.random() < 0.75:       # basivertebral vein entering the posterior wall
            dep = v.half_depth * rng.uniform(0.2, 0.4)
            hh = rng.uniform(0.6, 1.2)
            vein = np.array([[v.half_depth - dep, -hh * 0.5], [v.half_depth + 0.5, -hh], [v.half_depth + 0.5, hh],
                             [v.half_depth - dep, hh * 0.5]])
            cv.fill(_to_world(v, vein), T.VEIN, body=k)


def _canal(cv: Canvas, curve: SpineCurve, rng: np.random.Generator, L: _Layers, s0: float, s1: float,
           vis: list[tuple[int, Vertebra]]) -> None:
    """Epidural fat, ligamentum flavum, dura, CSF, cord (conus) and cauda equina."""
    cv.fill(curve.band(s0, s1, L.ant_canal, L.post_canal), T.FAT)
    cv.fill(curve.band(s0, s1, lambda s: L.post_canal(s) - L.lf, lambda s: L.post_canal(s) + 0.5), T.LIGAMENT)
    s_sac1 = s1 if L.sac_end is None else min(s1, L.sac_end)
    if s_sac1 > s0:
        cv.fill(curve.band(s0, s_sac1, lambda s: L.sac_mid(s) - L.sac_half(s) - 0.5,
                           lambda s: L.sac_mid(s) + L.sac_half(s) + 0.5), T.LIGAMENT)
        cv.fill(curve.band(s0, s_sac1, lambda s: L.sac_mid(s) - L.sac_half(s),
                           lambda s: L.sac_mid(s) + L.sac_half(s)), T.CSF)
    for _, v in vis:                  # anterior epidural veins behind the bodies (enhance on T1+C)
        if v.level < SACRUM and rng.random() < 0.5:
            c = curve.point(np.array([v.s]), np.array([v.half_depth + 1.0 + L.ea * 0.5]))[0]
            cv.fill(ellipse(c[0], c[1], max(0.6, L.ea * 0.5), v.half_height * rng.uniform(0.3, 0.6), -v.theta, 16),
                    T.VEIN)
    s_cord1 = s1 if L.conus is None else min(s1, L.conus)
    if s_cord1 > s0:
        cv.fill(curve.band(s0, s_cord1, lambda s: L.cord_c(s) - L.cord_r(s), lambda s: L.cord_c(s) + L.cord_r(s),
                           1.5), T.CORD)
    if L.conus is not None and L.sac_end is not None and L.conus < s1 and L.sac_end > s0:
        for _ in range(int(rng.integers(3, 7))):          # cauda equina, drifting dorsally
            f0, f1 = rng.uniform(-0.4, 0.4), rng.uniform(0.0, 0.8)
            ss = np.linspace(L.conus - 5, L.sac_end - 2, 30)
            frac = np.linspace(0, 1, len(ss))
            u = L.sac_mid(ss) + (f0 + (f1 - f0) * np.sqrt(frac)) * L.sac_half(ss)
            cv.line(curve.point(ss, u), T.NERVE, rng.uniform(0.6, 1.2))


def _discs(cv: Canvas, rng: np.random.Generator, vis: list[tuple[int, Vertebra]], shapes: dict) -> None:
    for (k, v), (k2, w) in zip(vis[:-1], vis[1:]):
        lo = _to_world(v, endplate(v.half_depth, v.half_height, shapes[k], +1))
        hi = _to_world(w, endplate(w.half_depth, w.half_height, shapes[k2], -1))[::-1]
        mid_ant = 0.5 * (lo[0] + hi[-1])
        mid_post = 0.5 * (lo[-1] + hi[0])
        axis = mid_post - mid_ant
        axis /= np.linalg.norm(axis) + 1e-9
        fused = v.level >= SACRUM
        bulge_p = 0.0 if fused else rng.uniform(0.3, 1.8) + v.degeneration * rng.uniform(0, 3.5)
        bulge_a = 0.0 if fused else rng.uniform(0.5, 2.0)
        poly = np.concatenate([lo, [mid_post + axis * bulge_p], hi, [mid_ant - axis * bulge_a]], 0)
        cv.fill(poly, T.ANNULUS)
        if fused:
            continue
        centre = 0.5 * (mid_ant + mid_post) + axis * 0.08 * v.half_depth
        ang = math.atan2(axis[1], axis[0])
        mid = len(lo) // 2
        dh = max(float(np.linalg.norm(hi[len(hi) - 1 - mid] - lo[mid])), v.disc_below)
        degenerated = v.degeneration > 0.45
        ax = v.half_depth * (0.58 if not degenerated else 0.4) * rng.uniform(0.9, 1.1)
        ay = dh * (0.34 if not degenerated else 0.22)
        cv.fill(ellipse(centre[0], centre[1], ax, max(0.6, ay), ang, 32), T.DEGEN_DISC if degenerated else T.NUCLEUS)
        if not degenerated and v.level >= 8 and rng.random() < 0.6:     # intranuclear cleft
            d = np.array([math.cos(ang), math.sin(ang)])
            cv.line(np.stack([centre - d * ax * 0.8, centre + d * ax * 0.8]), T.ANNULUS, 0.6)


def _ligaments(cv: Canvas, vis: list[tuple[int, Vertebra]], shapes: dict) -> None:
    """Anterior and posterior longitudinal ligaments: dark lines hugging the bodies and discs."""
    ant, post = [], []
    for k, v in vis:
        if v.level > SACRUM:
            continue
        sh = shapes[k]
        ys = np.linspace(-0.95, 0.95, 5) * v.half_height
        xa = -v.half_depth * (1 - sh["front"] * (1 - (ys / v.half_height) ** 2)) - 0.6
        ant.append(_to_world(v, np.stack([xa, ys], 1)))
        post.append(_to_world(v, np.stack([np.full_like(ys, v.half_depth + 0.6), ys], 1)))
    if len(ant) > 1:
        cv.line(np.concatenate(ant), T.LIGAMENT, 1.2)
        cv.line(np.concatenate(post), T.LIGAMENT, 1.0)


def _spinous(v: Vertebra, pc: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outer and inner outlines (world) of the lamina + spinous process of ``v``, and the tip point."""
    b = v.half_height
    length = interp_anchor(SP_LENGTH, v.level) * rng.uniform(0.85, 1.15)
    alpha = interp_anchor(SP_ANGLE, v.level) * rng.uniform(0.85, 1.15)
    ht = interp_anchor(SP_HEIGHT, v.level) * rng.uniform(0.85, 1.15) / 2
    v0, v1 = -0.3 * b, 1.2 * b           # lamina: from mid-body down to the disc below
    lam = rng.uniform(5.0, 8.0)
    d = np.array([math.cos(alpha), math.sin(alpha)])
    n = np.array([-math.sin(alpha), math.cos(alpha)])
    base_c = np.array([pc + lam * 0.5, 0.5 * (v0 + v1)])
    waist = rng.uniform(0.6, 0.95)

    def outline(inset: float) -> np.ndarray:
        tip = base_c + d * (length - inset)
        hb = 0.5 * (v1 - v0) - inset
        r = max(ht - inset, 0.6)
        wa = max(ht * waist - inset, 0.5)
        pts = np.empty((13, 2))
        pts[0] = (pc - 1.0 + inset, v0 + inset)
        pts[1] = base_c + d * lam * 0.6 - n * hb * 0.85
        pts[2] = base_c + d * (length * 0.55) - n * wa
        pts[3:10] = tip + (_CAP_COS[:, None] * d + _CAP_SIN[:, None] * n) * r
        pts[10] = base_c + d * (length * 0.55) + n * wa
        pts[11] = base_c + d * lam * 0.6 + n * hb * 0.85
        pts[12] = (pc - 1.0 + inset, v1 - inset)
        return pts

    tip = _to_world(v, (base_c + d * (length + ht * 0.9))[None])[0]
    return _to_world(v, outline(0.0)), _to_world(v, outline(1.3)), tip


def _posterior_elements(cv: Canvas, curve: SpineCurve, rng: np.random.Generator, L: _Layers,
                        vis: list[tuple[int, Vertebra]]) -> None:
    tips = []
    for _, v in vis:
        if v.level > SACRUM:
            continue
        if v.level == SACRUM:       # the dorsal plate of the sacrum, down to S4
            last = curve.vertebrae[-1]
            sa, sb = v.s - v.half_height, last.s + last.half_height
            cv.fill(curve.band(sa, sb, lambda s: L.post_canal(s) - 0.5, lambda s: L.post_canal(s) + 9.0), T.CORTEX)
            cv.fill(curve.band(sa + 1.5, sb - 1.5, lambda s: L.post_canal(s) + 0.8, lambda s: L.post_canal(s) + 7.5),
                    T.MARROW)
            continue
        pc = float(L.post_canal(np.array([v.s]))[0])
        outer, inner, tip = _spinous(v, pc, rng)
        cv.fill(outer, T.CORTEX)
        cv.fill(inner, T.MARROW)
        tips.append(tip)
    if len(tips) > 1:
        cv.line(np.array(tips), T.LIGAMENT, rng.uniform(1.0, 2.0))      # supraspinous ligament


def _anterior(cv: Canvas, curve: SpineCurve, rng: np.random.Generator, L: _Layers, s0: float, s1: float) -> None:
    """Neck (airway, pharynx), mediastinum (aorta, heart) and abdomen (liver, bowel) in front of the column."""
    verts = curve.vertebrae
    lvls = np.array([v.level for v in verts], np.float64)
    vs_s = L.vs_s
    step = (vs_s[-1] - vs_s[0]) / max(1.0, lvls[-1] - lvls[0])

    def s_of(level: float) -> float:
        if level < lvls[0]:
            return float(vs_s[0] - (lvls[0] - level) * step)
        if level > lvls[-1]:
            return float(vs_s[-1] + (level - lvls[-1]) * step)
        return float(np.interp(level, lvls, vs_s))

    pre = rng.uniform(2.0, 5.0)

    def front(s):                       # anterior surface of the prevertebral muscle layer
        return -L.a(s) - 1.0 - pre - np.where(L.lv(s) < 7, 2.5, 0.0)

    fat_ant = rng.uniform(3, 12)
    cv.fill(curve.band(s0, s1, lambda s: L.ant_skin(s) + fat_ant, lambda s: -L.a(s) - 1.0, 3.0, outer=True), T.SOFT)
    cv.fill(curve.band(s0, s1, front, lambda s: -L.a(s) - 0.5), T.MUSCLE)
    diaphragm = s_of(16.5 + rng.normal(0, 0.6))
    s_thorax = s_of(6.5)
    # mediastinal fat between the column and the heart
    if s1 > s_thorax:
        cv.fill(curve.band(max(s0, s_thorax), s1, lambda s: front(s) - 80.0, front), T.FAT)
    # oesophagus in front of the prevertebral layer
    esoph = rng.uniform(4, 8)
    s_pharynx = s_of(4.5)
    cv.fill(curve.band(s0, min(s1, diaphragm), lambda s: front(s) - esoph, front), T.SOFT)
    # airway: pharynx / larynx, then the trachea down to the carina (T4-T5)
    s_carina = s_of(9.5 + rng.normal(0, 0.4))
    if s0 < s_carina:
        aw = rng.uniform(12, 18)
        wall = 1.5
        widen = rng.uniform(0.0, 8.0)

        def aw_half(s):           # tapers to nothing at the carina (the bronchi leave the midline)
            w = aw + widen * clamp((s_pharynx - np.asarray(s)) / 40.0, 0, 1)
            return 0.5 * w * clamp((s_carina - np.asarray(s)) / 18.0, 0, 1) ** 0.5

        def aw_mid(s):
            return front(s) - esoph - 1.0 - 0.5 * aw

        def aw_lo(s):
            return aw_mid(s) - aw_half(s)

        def aw_hi(s):
            return aw_mid(s) + aw_half(s)

        taper0, taper1 = s0, s_carina
        cv.fill(curve.band(taper0, taper1, lambda s: aw_lo(s) - wall, lambda s: aw_hi(s) + wall), T.LIGAMENT)
        cv.fill(curve.band(taper0, taper1, aw_lo, aw_hi), T.AIR)
        # thyroid / strap muscles in front of the airway
        cv.fill(curve.band(s_of(4.0), s_of(6.5), lambda s: aw_lo(s) - wall - rng.uniform(8, 14),
                           lambda s: aw_lo(s) - wall), T.SOFT)
    # descending aorta (often partly in the slice) from T4 to L4
    if rng.random() < 0.6:
        dia = rng.uniform(16, 25)
        gap = rng.uniform(1.0, 4.0)
        sa0, sa1 = s_of(8.5), s_of(21.0)
        if sa0 < s1 and sa1 > s0:
            cv.fill(curve.band(max(s0, sa0), min(s1, sa1), lambda s: front(s) - esoph * 0.3 - gap - dia,
                               lambda s: front(s) - esoph * 0.3 - gap), T.ARTERY)
    # heart in the chest
    if s0 < diaphragm and s1 > s_of(8.0):
        sh = s_of(12.0)
        c, _, p = curve.frame(sh)
        hc = c - p * (L.a(sh) + rng.uniform(80, 100))
        cv.fill(blob(rng, hc[0], hc[1], rng.uniform(48, 60), rng.uniform(60, 75), 0.08, angle=rng.uniform(0.2, 0.6)),
                T.SOFT)
        cc = hc + rng.normal(0, 8, 2)
        cv.fill(blob(rng, cc[0], cc[1], rng.uniform(25, 35), rng.uniform(30, 45), 0.2), T.ARTERY)
    # abdomen: crura, liver / stomach under the diaphragm, bowel loops in mesenteric fat
    if s1 > diaphragm:
        cv.fill(curve.band(max(s0, diaphragm), s1, lambda s: L.ant_skin(s) + fat_ant, lambda s: front(s) - 4.0,
                           3.0, outer=True), T.FAT)
        c, _, p = curve.frame(diaphragm)
        lc = c - p * (L.a(diaphragm) + rng.uniform(45, 70)) + np.array([0.0, rng.uniform(30, 55)])
        cv.fill(blob(rng, lc[0], lc[1], rng.uniform(55, 75), rng.uniform(40, 60), 0.12, angle=0.0), T.SOFT)
        _bowel(cv, curve, rng, L, max(s0, diaphragm + rng.uniform(50, 80)), s1, front)
        cv.fill(curve.band(max(s0, diaphragm), s1, lambda s: front(s) - 3.0 * (L.lv(s) > 17.5),
                           lambda s: -L.a(s) - 0.5), T.MUSCLE)


def _bowel(cv: Canvas, curve: SpineCurve, rng: np.random.Generator, L: _Layers, s_a: float, s_b: float,
           front) -> None:
    """Bowel loops: walls with fluid, gas or faeces inside, packed in mesenteric fat."""
    if s_b <= s_a:
        return
    n = int((s_b - s_a) / 15.0) * 6 + 6
    ss = rng.uniform(s_a, s_b, n)
    depth = rng.uniform(8, 170, n)
    r = rng.uniform(9, 22, n)
    c = curve.point(ss, front(ss) - depth, outer=True)
    p = cv.to_px(c)
    m = cv.px(r) + 2
    keep = (p[:, 0] > -m) & (p[:, 0] < cv.width + m) & (p[:, 1] > -m) & (p[:, 1] < cv.height + m)
    for (cx, cy), rr in zip(c[keep], r[keep]):
        ry = rr * rng.uniform(0.6, 1.2)
        ang = rng.uniform(0, np.pi)
        cv.fill(blob(rng, cx, cy, rr, ry, 0.2, angle=ang, n=24), T.BOWEL)
        kind = rng.random()
        inner = T.CSF if kind < 0.35 else (T.AIR if kind < 0.55 else T.SOFT)
        if kind < 0.85:
            cv.fill(blob(rng, cx, cy, rr * 0.65, ry * 0.65, 0.25, angle=ang, n=24), inner)
