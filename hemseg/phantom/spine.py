"""The spinal column as a curve: vertebral levels, their sizes, and the centre line they sit on.

Levels are numbered C2 = 0 ... C7 = 5, T1 = 6 ... T12 = 17, L1 = 18 ... L5 = 22, S1 = 23 ... S4 = 26. Sizes are
adult averages (mm) interpolated between anchor levels and jittered per image. The centre line is given by its
arclength ``s`` (mm, running caudally) and the angle ``theta`` of its tangent from the image's vertical axis; at
each ``s`` the frame is ``t`` (tangent, caudal) and ``p`` (normal: posterior in sagittal, patient-left in coronal).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hemseg.phantom.canvas import interp_anchor

LEVEL_NAMES = tuple(
    [f"C{i}" for i in range(2, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
    + [f"S{i}" for i in range(1, 5)]
)
SACRUM = 23

REGION_LEVELS = {"cervicothoracic": (0, 15), "thoracolumbar": (11, 26)}

BODY_HEIGHT = {0: 19.0, 1: 13.5, 5: 14.5, 6: 16.5, 11: 20.0, 17: 24.0, 20: 27.0, 22: 27.0, 23: 26.0, 24: 20.0,
               25: 15.0, 26: 11.0}
BODY_DEPTH = {0: 16.0, 1: 15.5, 5: 17.0, 6: 18.0, 11: 25.0, 17: 30.0, 20: 34.0, 22: 34.0, 23: 36.0, 24: 26.0,
              25: 19.0, 26: 13.0}
BODY_WIDTH = {0: 17.0, 1: 17.0, 5: 22.0, 6: 26.0, 11: 30.0, 17: 38.0, 20: 46.0, 22: 50.0, 23: 52.0, 24: 40.0,
              25: 30.0, 26: 20.0}
DISC_HEIGHT = {0: 4.5, 1: 5.0, 5: 5.5, 6: 4.0, 11: 4.5, 15: 5.5, 17: 7.0, 20: 10.0, 22: 11.0, 23: 2.0, 26: 1.5}
CANAL_AP = {0: 17.0, 5: 15.0, 6: 14.0, 17: 14.5, 20: 17.0, 23: 15.0, 26: 9.0}
CORD_AP = {0: 8.5, 5: 8.0, 6: 7.0, 14: 6.5, 17: 7.5}
SAGITTAL_THETA = {0: -0.22, 2.5: 0.0, 5: 0.22, 6: 0.24, 12: 0.0, 17: -0.22, 18: -0.26, 20: 0.0, 22: 0.36,
                  23: 0.75, 26: 1.15}


@dataclass
class Vertebra:
    level: int
    s: float             # arclength of the body centre
    half_height: float
    half_depth: float    # half AP depth (sagittal) or half width (coronal)
    disc_below: float    # disc height below this body (mm)
    degeneration: float  # 0 healthy .. 1 collapsed, dark disc below
    center: tuple[float, float] = (0.0, 0.0)   # world position of the body centre (set by make_spine)
    theta: float = 0.0                         # tangent angle at the centre


@dataclass
class SpineCurve:
    """Centre line samples and the vertebrae placed on it."""

    s: np.ndarray          # (N,) arclength grid, mm
    xy: np.ndarray         # (N, 2) world points
    theta: np.ndarray      # (N,) tangent angle from the world y axis (rad)
    vertebrae: list[Vertebra]
    region: str
    theta_outer: np.ndarray | None = None   # heavily smoothed theta: the frame for skin and trunk outlines
    level_grid: np.ndarray | None = None    # level number on the ``s`` grid (cached)
    _table: np.ndarray | None = None        # x, y, sin theta, cos theta on the ``s`` grid (cached)
    _outer: np.ndarray | None = None        # the smoothed normal on the ``s`` grid (cached)

    def _lookup(self, table: np.ndarray, s) -> np.ndarray:
        """Linear interpolation of rows of ``table`` (on the uniform ``s`` grid) at arclengths ``s``."""
        f = (np.asarray(s, np.float64) - self.s[0]) * (1.0 / (self.s[1] - self.s[0]))
        i = np.minimum(np.maximum(f.astype(np.intp), 0), len(self.s) - 2)
        w = (f - i)[..., None]
        return table[i] + (table[i + 1] - table[i]) * w

    def frame(self, s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Point, tangent and normal at arclength ``s`` (arrays of shape (..., 2))."""
        if self._table is None:
            self._table = np.column_stack([self.xy, np.sin(self.theta), np.cos(self.theta)])
        row = self._lookup(self._table, s)
        c = row[..., 0:2]
        t = row[..., 2:4]
        p = np.stack([t[..., 1], -t[..., 0]], -1)
        return c, t, p

    def angle_at(self, s: float) -> float:
        return float(np.interp(s, self.s, self.theta))

    def level_of(self, s: np.ndarray) -> np.ndarray:
        """Continuous level number at arclength ``s`` (linear between body centres, extrapolated beyond)."""
        if self.level_grid is None:
            self.level_grid = self._levels(self.s)[:, None]
        return self._lookup(self.level_grid, s)[..., 0]

    def _levels(self, s: np.ndarray) -> np.ndarray:
        vs = self.vertebrae
        ss = np.array([v.s for v in vs])
        lv = np.array([v.level for v in vs], np.float64)
        s = np.asarray(s, np.float64)
        out = np.interp(s, ss, lv)
        step0 = (ss[1] - ss[0]) / (lv[1] - lv[0])
        step1 = (ss[-1] - ss[-2]) / (lv[-1] - lv[-2])
        out = np.where(s < ss[0], lv[0] - (ss[0] - s) / step0, out)
        out = np.where(s > ss[-1], lv[-1] + (s - ss[-1]) / step1, out)
        return out

    def point(self, s: np.ndarray, u: np.ndarray, outer: bool = False) -> np.ndarray:
        """World points at arclength ``s`` shifted ``u`` mm along the normal.

        ``outer`` uses the smoothed normal, so that far offsets (skin, trunk) do not swing with the sacral bend.
        """
        c, _, p = self.frame(s)
        if outer and self.theta_outer is not None:
            if self._outer is None:
                self._outer = np.column_stack([np.cos(self.theta_outer), -np.sin(self.theta_outer)])
            p = self._lookup(self._outer, s)
        return c + np.asarray(u, np.float64)[..., None] * p

    def offset_line(self, s0: float, s1: float, u, step: float = 2.0, outer: bool = False) -> np.ndarray:
        """Points of the offset curve ``u(s)`` (callable or constant) for s in [s0, s1]."""
        n = max(2, int(abs(s1 - s0) / step) + 1)
        s = np.linspace(s0, s1, n)
        return self.point(s, u(s) if callable(u) else np.full(n, float(u)), outer)

    def band(self, s0: float, s1: float, lo, hi, step: float = 2.0, outer: bool = False) -> np.ndarray:
        """Polygon between the offset curves ``u = lo(s)`` and ``u = hi(s)`` for s in [s0, s1].

        ``lo``/``hi`` are callables of an s array, or constants.
        """
        n = max(2, int(abs(s1 - s0) / step) + 1)
        s = np.linspace(s0, s1, n)
        ulo = lo(s) if callable(lo) else np.full(n, float(lo))
        uhi = hi(s) if callable(hi) else np.full(n, float(hi))
        c, _, p = self.frame(s)
        if outer and self.theta_outer is not None:
            if self._outer is None:
                self._outer = np.column_stack([np.cos(self.theta_outer), -np.sin(self.theta_outer)])
            p = self._lookup(self._outer, s)
        out = np.empty((2 * n, 2))
        out[:n] = c + ulo[:, None] * p
        out[n:] = (c + uhi[:, None] * p)[::-1]
        return out


def make_spine(rng: np.random.Generator, region: str, theta_anchors: dict[float, float] | None,
               size_key: dict[float, float] = BODY_DEPTH, curvature: float = 1.0) -> SpineCurve:
    """Place the vertebrae of ``region`` on a curve with random (but anatomical) sizes and curvature.

    ``size_key`` chooses which half size the vertebra carries (AP depth for sagittal, width for coronal).
    ``theta_anchors`` is None for a straight-ish column (coronal: a small random scoliosis is added instead).
    """
    lo, hi = REGION_LEVELS[region]
    scale = rng.uniform(0.88, 1.12)
    levels = list(range(lo, hi + 1))
    verts: list[Vertebra] = []
    s = 0.0
    degen_base = rng.uniform(0.0, 0.6)
    for i, lv in enumerate(levels):
        hh = interp_anchor(BODY_HEIGHT, lv) * scale * rng.uniform(0.94, 1.06) / 2
        hd = interp_anchor(size_key, lv) * scale * rng.uniform(0.95, 1.05) / 2
        disc = interp_anchor(DISC_HEIGHT, lv) * scale * rng.uniform(0.85, 1.15)
        degen = 0.0
        if lv < SACRUM - 1 and rng.random() < degen_base:
            degen = rng.uniform(0.3, 1.0)
            disc *= 1.0 - 0.55 * degen
        if i > 0:
            prev = verts[-1]
            s += prev.half_height + prev.disc_below + hh
        verts.append(Vertebra(lv, s, float(hh), float(hd), float(disc), float(degen)))
    s_grid = np.arange(-250.0, s + 250.0, 1.0)
    curve = SpineCurve(s_grid, np.zeros((len(s_grid), 2)), np.zeros(len(s_grid)), verts, region)
    lv = curve.level_of(s_grid)
    if theta_anchors is not None:
        theta = interp_anchor(theta_anchors, lv) * curvature
    else:
        theta = np.zeros_like(s_grid)
    # a little random waviness on top (scoliosis in coronal, irregular curvature in sagittal)
    amp = rng.uniform(0.0, 0.06)
    theta = theta + amp * np.sin(2 * np.pi * s_grid / rng.uniform(250, 500) + rng.uniform(0, 2 * np.pi))
    ds = np.diff(s_grid, prepend=s_grid[0])
    x = np.cumsum(np.sin(theta) * ds)
    y = np.cumsum(np.cos(theta) * ds)
    i0 = int(np.argmin(np.abs(s_grid)))
    xy = np.stack([x - x[i0], y - y[i0]], 1)
    # smoothed, clipped angle for the frame of far offsets (box filter of ~120 mm, twice)
    k = np.ones(121) / 121.0
    th_o = np.clip(theta, -0.3, 0.4)
    th_o = np.convolve(np.pad(th_o, 60, mode="edge"), k, mode="valid")
    th_o = np.convolve(np.pad(th_o, 60, mode="edge"), k, mode="valid")
    out = SpineCurve(s_grid, xy, theta, verts, region, th_o)
    for v in verts:
        c, _, _ = out.frame(v.s)
        v.center = (float(c[0]), float(c[1]))
        v.theta = out.angle_at(v.s)
    return out


def visible_run(canvas, vertebrae: list[Vertebra], margin_mm: float) -> list[tuple[int, Vertebra]]:
    """(body index, vertebra) of the contiguous run of vertebrae whose centre lies within ``margin_mm`` of the
    image (plus one neighbour on each side, so the discs at the image border are complete)."""
    idx = [i for i, v in enumerate(vertebrae)
           if canvas.visible(np.array([v.center]), canvas.px(margin_mm + max(v.half_height, v.half_depth)))]
    if not idx:
        return []
    lo, hi = max(0, idx[0] - 1), min(len(vertebrae) - 1, idx[-1] + 1)
    return [(i + 1, vertebrae[i]) for i in range(lo, hi + 1)]
