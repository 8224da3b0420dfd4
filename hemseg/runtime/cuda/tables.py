"""Host-side tables shared by the CUDA kernels and their numpy reference (one definition, so they cannot drift).

Every table here is computed exactly as OpenCV computes it on the CPU (double precision where OpenCV uses double,
float32 where it uses float, ``cvRound`` = round half to even), then handed unchanged to both the GPU kernels
(:mod:`hemseg.runtime.cuda.gpu_preprocess`) and the numpy mirror of the kernels (:mod:`hemseg.runtime.cuda.reference`).

Conventions: images are uint8 ``(H, W)``; "reflect101" is OpenCV's ``BORDER_REFLECT_101`` (``BORDER_DEFAULT``):
``gfedcb|abcdefgh|gfedcba``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: OpenCV's fixed-point resize coefficients: INTER_RESIZE_COEF_BITS = 11.
RESIZE_COEF_BITS = 11
RESIZE_COEF_SCALE = 1 << RESIZE_COEF_BITS

#: OpenCV's fastNlMeansDenoising drops weights below this fraction of the fixed-point unit.
NLM_WEIGHT_THRESHOLD = 0.001


def reflect101(p: np.ndarray | int, length: int) -> np.ndarray:
    """OpenCV ``borderInterpolate(p, len, BORDER_REFLECT_101)`` for any integer coordinate (also far outside)."""
    p = np.asarray(p, dtype=np.int64)
    if length == 1:
        return np.zeros_like(p)
    period = 2 * (length - 1)
    q = np.mod(p, period)
    return np.where(q < length, q, period - q)


# -- 1. resize (cv2.INTER_LINEAR, 8-bit fixed point) --------------------------------------------------------------
@dataclass(frozen=True)
class ResizeAxis:
    """One axis of OpenCV's 8-bit INTER_LINEAR resize: for every output index, two source indices and two
    int16 coefficients summing to (about) 2048. ``ofs`` int32 (n, 2); ``coef`` int16 (n, 2)."""

    ofs: np.ndarray
    coef: np.ndarray


def _round_half_even_f32(x: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(x, np.float32)).astype(np.int64)


def resize_axis(src_len: int, dst_len: int, horizontal: bool) -> ResizeAxis:
    """Mirror of ``cv::hal::resize``'s table set-up for ``INTER_LINEAR`` on 8-bit images.

    ``fx = (float)((dx + 0.5) * scale - 0.5)`` with ``scale = 1 / (dst / src)`` in double; ``sx = floor(fx)``;
    ``fx -= sx``; coefficients ``saturate_cast<short>((1 - fx) * 2048)`` and ``saturate_cast<short>(fx * 2048)``.
    Horizontally OpenCV clamps (``sx < 0`` -> ``sx = 0, fx = 0``; ``sx >= w - 1`` -> ``sx = w - 1, fx = 0``).
    Vertically it keeps ``fy`` and clamps only the two row indices into ``[0, h - 1]``.
    """
    inv_scale = float(dst_len) / float(src_len)
    scale = 1.0 / inv_scale
    d = np.arange(dst_len, dtype=np.float64)
    f = ((d + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    if horizontal:
        low = s < 0
        f = np.where(low, np.float32(0), f).astype(np.float32)
        s = np.where(low, 0, s)
        high = s >= src_len - 1
        f = np.where(high, np.float32(0), f).astype(np.float32)
        s = np.where(high, src_len - 1, s)
    c0 = (np.float32(1) - f).astype(np.float32)
    c1 = f
    coef = np.stack([_round_half_even_f32(c0 * np.float32(RESIZE_COEF_SCALE)),
                     _round_half_even_f32(c1 * np.float32(RESIZE_COEF_SCALE))], axis=1)
    coef = np.clip(coef, -32768, 32767).astype(np.int16)
    ofs = np.stack([np.clip(s, 0, src_len - 1), np.clip(s + 1, 0, src_len - 1)], axis=1).astype(np.int32)
    return ResizeAxis(ofs=np.ascontiguousarray(ofs), coef=np.ascontiguousarray(coef))


# -- 2. CLAHE -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClaheGeometry:
    """Tile geometry of ``cv::CLAHE::apply`` for an 8-bit image of ``height`` x ``width``.

    When either side is not divisible by the grid, OpenCV pads bottom and right with reflect101 by
    ``tiles - size % tiles`` each (so a divisible side grows by a whole tile) and uses the padded size for the
    tiles; the interpolation still runs on the original pixels only.
    """

    height: int
    width: int
    tiles_x: int
    tiles_y: int
    tile_w: int
    tile_h: int
    clip_limit: int          # absolute bin limit, 0 = no clipping
    lut_scale: float         # float32(255) / tile area, a float32 value
    inv_tw: float            # float32(1) / float32(tile_w)
    inv_th: float            # float32(1) / float32(tile_h)


def clahe_geometry(height: int, width: int, clip: float, tiles_x: int, tiles_y: int) -> ClaheGeometry:
    if width % tiles_x == 0 and height % tiles_y == 0:
        padded_w, padded_h = width, height
    else:
        # OpenCV pads both axes by ``tiles - size % tiles``: an axis that was divisible grows by a whole tile
        padded_w = width + tiles_x - width % tiles_x
        padded_h = height + tiles_y - height % tiles_y
    tile_w, tile_h = padded_w // tiles_x, padded_h // tiles_y
    area = tile_w * tile_h
    lut_scale = float(np.float32(255.0) / np.float32(area))
    clip_limit = 0
    if clip > 0.0:
        clip_limit = max(int(clip * area / 256), 1)   # static_cast<int>(clipLimit_ * tileSizeTotal / histSize)
    return ClaheGeometry(height, width, tiles_x, tiles_y, tile_w, tile_h, clip_limit, lut_scale,
                         float(np.float32(1.0) / np.float32(tile_w)), float(np.float32(1.0) / np.float32(tile_h)))


# -- 3. non-local means (cv2.fastNlMeansDenoising, 8-bit, NORM_L2) -------------------------------------------------
@dataclass(frozen=True)
class NlmTables:
    """Constants of OpenCV's ``FastNlMeansDenoisingInvoker<uchar, int, unsigned, DistSqr, int>``.

    ``weights[ssd >> shift]`` is the integer weight of a candidate whose template sum of squared differences is
    ``ssd``; the table is non-increasing and ``weights[i] == 0`` for ``i >= used``, so an index may be clamped to
    ``used - 1`` (``used`` >= 1) without changing anything; the kernels do that to keep the hot part of the table
    small and cached.
    """

    template_half: int
    search_half: int
    shift: int
    fixed_point_mult: int
    weights: np.ndarray      # int32 (almost_max_dist,)
    used: int

    @property
    def border(self) -> int:
        return self.search_half + self.template_half


def nlm_tables(h: float, template_size: int, search_size: int) -> NlmTables:
    th, sh = template_size // 2, search_size // 2
    tws, sws = 2 * th + 1, 2 * sh + 1
    int_max = 2**31 - 1
    fixed_point_mult = min(int_max // (sws * sws * 255), int_max)
    tws_sq = tws * tws
    shift = 0
    while (1 << shift) < tws_sq:          # getNearestPowerOf2
        shift += 1
    mult = float(1 << shift) / tws_sq      # almost_dist2actual_dist_multiplier
    max_dist = 255 * 255                   # DistSqr::maxDist<uchar>() for one channel
    almost_max_dist = int(max_dist / mult + 1)
    hf = np.float32(h)
    h2 = float(hf * hf * np.float32(1))    # h[0]*h[0]*channels in float
    almost = np.arange(almost_max_dist, dtype=np.float64)
    dist = almost * mult
    if h2 == 0.0:
        w = np.where(dist == 0.0, 1.0, 0.0)   # exp(-dist/0): NaN -> 1 for dist 0 (OpenCV), else exp(-inf) = 0
    else:
        w = np.array([math.exp(-x / h2) for x in dist.tolist()])   # libm exp, as std::exp
    weights = np.rint(fixed_point_mult * w).astype(np.int64)          # cvRound (half to even)
    weights[weights < NLM_WEIGHT_THRESHOLD * fixed_point_mult] = 0
    weights = weights.astype(np.int32)
    nz = np.nonzero(weights)[0]
    used = int(nz[-1]) + 2 if nz.size else 1
    used = min(used, almost_max_dist)
    return NlmTables(th, sh, shift, int(fixed_point_mult), weights, used)


# -- 4. bilateral (cv2.bilateralFilter, 8-bit gray) ----------------------------------------------------------------
@dataclass(frozen=True)
class BilateralTables:
    """Constants of ``cv::bilateralFilter_8u`` for one channel.

    ``ofs_y``/``ofs_x`` int32 (maxk,) and ``space_weight`` float32 (maxk,) list the circular neighbourhood in
    OpenCV's order (rows ``-r..r``, then columns ``-r..r``, keeping ``sqrt(i*i + j*j) <= r``);
    ``color_weight`` float32 (256,) is ``exp(-c*c / (2 sigma_color^2))``.
    """

    radius: int
    ofs_y: np.ndarray
    ofs_x: np.ndarray
    space_weight: np.ndarray
    color_weight: np.ndarray


def bilateral_tables(d: int, sigma_color: float, sigma_space: float) -> BilateralTables:
    sigma_color = float(sigma_color) if sigma_color > 0 else 1.0
    sigma_space = float(sigma_space) if sigma_space > 0 else 1.0
    gauss_color_coeff = -0.5 / (sigma_color * sigma_color)
    gauss_space_coeff = -0.5 / (sigma_space * sigma_space)
    radius = int(round_half_even(sigma_space * 1.5)) if d <= 0 else d // 2
    radius = max(radius, 1)
    color = np.array([math.exp(i * i * gauss_color_coeff) for i in range(256)], dtype=np.float32)
    oy, ox, sw = [], [], []
    for i in range(-radius, radius + 1):
        for j in range(-radius, radius + 1):
            r = math.sqrt(float(i) * i + float(j) * j)
            if r > radius:
                continue
            oy.append(i)
            ox.append(j)
            sw.append(math.exp(r * r * gauss_space_coeff))
    return BilateralTables(radius, np.array(oy, np.int32), np.array(ox, np.int32),
                           np.array(sw, dtype=np.float32), color)


def round_half_even(x: float) -> int:
    """``cvRound`` for a double: round half to even (the default FPU rounding mode)."""
    return int(np.rint(x))
