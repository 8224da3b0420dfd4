"""The drawing surface of the phantom: a tissue label map addressed in millimetres.

Anatomy is described in *world* coordinates (millimetres; x to the image right, y down for sagittal/coronal, y
posterior for axial). A :class:`Canvas` maps world to pixels with a similarity transform (zoom, rotation, shift)
that stands for the scanner's field of view, and paints polygons into two maps: ``labels`` (tissue codes, see
:mod:`hemseg.phantom.contrast`) and ``body`` (index of the vertebral body a pixel belongs to, 0 for none).
Later paint covers earlier paint (painter's order), in both maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

_SHIFT = 4                 # fixed-point bits for cv2.fillPoly (sub-pixel vertices)
_SCALE = float(1 << _SHIFT)


@dataclass
class Body:
    """A vertebral body: its index in ``Canvas.body``, centre (world mm), axis angle (rad), half sizes (mm)."""

    index: int
    center: tuple[float, float]
    angle: float
    half_width: float
    half_height: float


@dataclass
class Canvas:
    """World (mm) -> pixel similarity transform plus the label and body maps being painted."""

    height: int
    width: int
    mm_per_px: float
    center_mm: tuple[float, float]
    angle: float = 0.0                       # rotation of the field of view (rad)
    shift_px: tuple[float, float] = (0.0, 0.0)
    labels: np.ndarray = field(init=False)
    body: np.ndarray = field(init=False)
    bodies: list[Body] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = np.zeros((self.height, self.width), np.uint8)
        self.body = np.zeros((self.height, self.width), np.uint8)
        c, s = math.cos(self.angle), math.sin(self.angle)
        k = 1.0 / self.mm_per_px
        cx = self.width / 2.0 - 0.5 + self.shift_px[0]
        cy = self.height / 2.0 - 0.5 + self.shift_px[1]
        # px = A @ (mm - center) + (cx, cy)
        self._a = np.array([[c * k, -s * k], [s * k, c * k]], np.float64)
        self._t = np.array([cx, cy], np.float64) - self._a @ np.asarray(self.center_mm, np.float64)
        self._ainv = np.linalg.inv(self._a)

    # -- transforms -------------------------------------------------------------------------------------------
    def to_px(self, pts_mm: np.ndarray) -> np.ndarray:
        """World points (N, 2) in mm -> pixel coordinates (N, 2) as (x, y)."""
        return np.asarray(pts_mm, np.float64) @ self._a.T + self._t

    def to_mm(self, pts_px: np.ndarray) -> np.ndarray:
        """Pixel coordinates (N, 2) -> world mm."""
        return (np.asarray(pts_px, np.float64) - self._t) @ self._ainv.T

    def px_angle(self, world_angle: float) -> float:
        """Direction angle in the image of a world direction given by its angle (rad, from +x towards +y)."""
        return world_angle + self.angle

    def px(self, mm: float) -> float:
        """A length in mm as pixels."""
        return mm / self.mm_per_px

    # -- painting ---------------------------------------------------------------------------------------------
    def _int_pts(self, pts_mm: np.ndarray) -> np.ndarray:
        p = np.asarray(pts_mm, np.float64) @ (self._a.T * _SCALE) + self._t * _SCALE
        return np.rint(p).astype(np.int32).reshape(-1, 1, 2)

    def fill(self, poly_mm: np.ndarray, label: int, body: int | None = None) -> None:
        """Fill a closed polygon (N, 2) given in mm with a tissue code.

        With ``body`` (an index > 0) the pixels also join that vertebral body in the body map; without it the
        body map is left alone, so paint that must not end up inside a body has to come before the bodies.
        """
        pts = self._int_pts(poly_mm)
        cv2.fillPoly(self.labels, [pts], int(label), lineType=cv2.LINE_8, shift=_SHIFT)
        if body is not None:
            cv2.fillPoly(self.body, [pts], int(body), lineType=cv2.LINE_8, shift=_SHIFT)

    def _local_fill(self, poly_mm: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice], np.ndarray] | None:
        """The polygon (world mm) rasterized as 1 into a uint8 mask over its bounding box clipped to the image:
        ``(mask, (row slice, column slice), fixed-point offset of the box)``; None when the box is empty."""
        pts = self._int_pts(poly_mm)
        x0 = max(0, int(pts[:, 0, 0].min()) >> _SHIFT)
        y0 = max(0, int(pts[:, 0, 1].min()) >> _SHIFT)
        x1 = min(self.width, (int(pts[:, 0, 0].max()) >> _SHIFT) + 2)
        y1 = min(self.height, (int(pts[:, 0, 1].max()) >> _SHIFT) + 2)
        if x1 <= x0 or y1 <= y0:
            return None
        m = np.zeros((y1 - y0, x1 - x0), np.uint8)
        off = np.array([x0 << _SHIFT, y0 << _SHIFT], np.int32)
        cv2.fillPoly(m, [pts - off], 1, lineType=cv2.LINE_8, shift=_SHIFT)
        return m, (slice(y0, y1), slice(x0, x1)), off

    def fill_in_body(self, poly_mm: np.ndarray, label: int, body: int) -> int:
        """Fill a polygon with ``label`` only on pixels of vertebral body ``body``; returns the pixel count."""
        local = self._local_fill(poly_mm)
        if local is None:
            return 0
        m, (ys, xs), _ = local
        sel = (m > 0) & (self.body[ys, xs] == body)
        self.labels[ys, xs][sel] = label
        return int(sel.sum())

    def fill_over(self, poly_mm: np.ndarray, label: int, over: tuple[int, ...],
                  hole_mm: np.ndarray | None = None, hole_label: int | None = None,
                  within_mm: np.ndarray | None = None) -> None:
        """Fill a polygon with ``label`` only where the current label is one of ``over`` (painting clipped to
        existing tissue) and inside ``within_mm`` if given. An optional hole polygon is left alone, or filled
        with ``hole_label`` (same clipping)."""
        local = self._local_fill(poly_mm)
        if local is None:
            return
        m, (ys, xs), off = local
        if hole_mm is not None:
            cv2.fillPoly(m, [self._int_pts(hole_mm) - off], 2, lineType=cv2.LINE_8, shift=_SHIFT)
        sub = self.labels[ys, xs]
        ok = np.isin(sub, over)
        if within_mm is not None:
            w = np.zeros_like(m)
            cv2.fillPoly(w, [self._int_pts(within_mm) - off], 1, lineType=cv2.LINE_8, shift=_SHIFT)
            ok &= w > 0
        if hole_mm is not None and hole_label is not None:
            sub[(m == 2) & ok] = hole_label
        sub[(m == 1) & ok] = label

    def visible(self, pts_mm: np.ndarray, margin_px: float = 0.0) -> bool:
        """Whether the bounding box of the points (world mm) overlaps the image (grown by ``margin_px``)."""
        p = self.to_px(np.atleast_2d(pts_mm))
        return bool(p[:, 0].max() >= -margin_px and p[:, 0].min() <= self.width + margin_px
                    and p[:, 1].max() >= -margin_px and p[:, 1].min() <= self.height + margin_px)

    def line(self, pts_mm: np.ndarray, label: int, width_mm: float, closed: bool = False) -> None:
        """Draw a polyline (world mm) ``width_mm`` thick (at least one pixel); the body map is left alone."""
        th = max(1, int(round(self.px(width_mm))))
        pts = self._int_pts(pts_mm)
        cv2.polylines(self.labels, [pts], closed, int(label), thickness=th, lineType=cv2.LINE_8, shift=_SHIFT)

    def add_body(self, index: int, center: tuple[float, float], angle: float, half_width: float,
                 half_height: float) -> None:
        self.bodies.append(Body(index, (float(center[0]), float(center[1])), float(angle), float(half_width),
                                float(half_height)))


# -- shapes (world mm) ----------------------------------------------------------------------------------------
@lru_cache(maxsize=32)
def unit_circle(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t, cos t, sin t) for n angles in [0, 2 pi) (cached, read-only)."""
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    out = (t, np.cos(t), np.sin(t))
    for a in out:
        a.setflags(write=False)
    return out


def place(local: np.ndarray, cx: float, cy: float, angle: float = 0.0) -> np.ndarray:
    """Rotate local points (N, 2) by ``angle`` and move them to (cx, cy)."""
    c, s = math.cos(angle), math.sin(angle)
    local = np.asarray(local, np.float64)
    out = np.empty_like(local)
    out[:, 0] = local[:, 0] * c - local[:, 1] * s + cx
    out[:, 1] = local[:, 0] * s + local[:, 1] * c + cy
    return out


def ellipse(cx: float, cy: float, ax: float, ay: float, angle: float = 0.0, n: int = 48) -> np.ndarray:
    """Points of an ellipse with half axes ax, ay rotated by ``angle`` (rad)."""
    _, c, s = unit_circle(n)
    pts = np.empty((n, 2))
    pts[:, 0] = ax * c
    pts[:, 1] = ay * s
    return place(pts, cx, cy, angle)


def superellipse(ax: float, ay: float, p: float = 4.0, n: int = 64) -> np.ndarray:
    """Rounded-rectangle outline |x/ax|^p + |y/ay|^p = 1 centred at the origin (local coordinates)."""
    _, c, s = unit_circle(n)
    e = 2.0 / p
    pts = np.empty((n, 2))
    pts[:, 0] = ax * np.sign(c) * np.abs(c) ** e
    pts[:, 1] = ay * np.sign(s) * np.abs(s) ** e
    return pts


_HARMONICS = np.arange(2, 7, dtype=np.float64)


def blob(rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float, irregularity: float = 0.15,
         angle: float | None = None, n: int = 40) -> np.ndarray:
    """An irregular closed outline: an ellipse whose radius carries a few random harmonics (k = 2..6)."""
    t, c, s = unit_circle(n)
    amp = irregularity / _HARMONICS ** 0.8 * rng.normal(size=5)
    ph = rng.uniform(0, 2 * np.pi, 5)
    r = np.maximum(1.0 + amp @ np.cos(_HARMONICS[:, None] * t + ph[:, None]), 0.35)
    ang = rng.uniform(0, np.pi) if angle is None else angle
    pts = np.empty((n, 2))
    pts[:, 0] = rx * r * c
    pts[:, 1] = ry * r * s
    return place(pts, cx, cy, ang)


_ANCHOR_CACHE: dict[int, tuple[dict, np.ndarray, np.ndarray]] = {}


def interp_anchor(anchors: dict[float, float], x: np.ndarray | float) -> np.ndarray:
    """Smoothed piecewise-linear interpolation of a {position: value} table (clamped at both ends).

    The linear interpolant is smoothed with a box of width 1 (twice), so anatomical profiles built from these
    tables have no kinks at the anchors.
    """
    hit = _ANCHOR_CACHE.get(id(anchors))
    if hit is None or hit[0] is not anchors:
        keys = sorted(anchors)
        grid = np.arange(keys[0] - 2.0, keys[-1] + 2.0 + 1e-9, 0.05)
        vals = np.interp(grid, keys, [anchors[k] for k in keys])
        box = np.ones(21) / 21.0
        for _ in range(2):
            vals = np.convolve(np.pad(vals, 10, mode="edge"), box, mode="valid")
        hit = (anchors, grid, vals)
        _ANCHOR_CACHE[id(anchors)] = hit
    return np.interp(x, hit[1], hit[2])


def clamp(x, lo: float, hi: float):
    """np.clip without its dispatch overhead (hot paths work on small arrays)."""
    return np.minimum(np.maximum(x, lo), hi)
