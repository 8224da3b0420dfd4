"""Pure-numpy mirror of the CUDA kernels in ``preprocess.cu``: same tables, same integer/float32 arithmetic, same
rounding, so the algorithms can be checked against OpenCV on a machine without a GPU.

Each function names the kernel it mirrors (``KERNEL: ...``); the kernel carries the same name in a comment
(``REFERENCE: ...``). Loops over pixels are vectorized, but every arithmetic step is the one the kernel does
(float32 operations one at a time, a fused multiply-add exactly where the kernel has one; integer shifts
and divisions as written), so the
reference and a correct kernel agree bit for bit. How close both are to OpenCV is what
``tests/test_cuda_reference.py`` measures; the GPU test compares the kernels themselves.

This module is numpy only (plus the shared tables) and is not used on the production path.
"""

from __future__ import annotations

import numpy as np

from hemseg.runtime.cuda.tables import (
    bilateral_tables,
    clahe_geometry,
    nlm_tables,
    reflect101,
    resize_axis,
)

F32 = np.float32


def fma_f32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Correctly rounded float32 fused multiply-add ``a * b + c`` (CUDA ``__fmaf_rn``, C ``fmaf``), vectorized.

    ``a * b`` is exact in float64; the float64 sum is turned into round-to-odd with its exact TwoSum error, and
    round-to-odd at 53 bits followed by rounding to 24 bits is the correctly rounded result (Boldo & Melquiond).
    """
    a64, b64, c64 = (np.asarray(x, np.float32).astype(np.float64) for x in (a, b, c))
    p = a64 * b64
    s = p + c64
    bp = s - c64
    err = (p - bp) + (c64 - (s - bp))
    even = (s.view(np.int64) & 1) == 0
    s = np.where((err != 0) & even, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(np.float32)


def _check_u8(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W) array, got {getattr(image, 'dtype', None)} "
                         f"{getattr(image, 'shape', None)}")
    return image


# -- 1. resize --------------------------------------------------------------------------------------------------
def resize_u8(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """KERNEL: ``resize_linear_u8``. cv2.resize(..., INTER_LINEAR) for uint8 with OpenCV's 11-bit fixed point.

    Horizontal pass ``D = S[x0] * a0 + S[x1] * a1`` (int), vertical pass
    ``((b0 * (D0 >> 4)) >> 16) + ((b1 * (D1 >> 4)) >> 16) + 2 >> 2`` saturated to uint8
    (OpenCV's ``VResizeLinear<uchar, int, short, ...>``).
    """
    src = _check_u8(image).astype(np.int64)
    h, w = src.shape
    xa = resize_axis(w, out_w, horizontal=True)
    ya = resize_axis(h, out_h, horizontal=False)
    a0 = xa.coef[:, 0].astype(np.int64)[None, :]
    a1 = xa.coef[:, 1].astype(np.int64)[None, :]
    b0 = ya.coef[:, 0].astype(np.int64)[:, None]
    b1 = ya.coef[:, 1].astype(np.int64)[:, None]
    r0 = src[ya.ofs[:, 0]]
    r1 = src[ya.ofs[:, 1]]
    d0 = r0[:, xa.ofs[:, 0]] * a0 + r0[:, xa.ofs[:, 1]] * a1
    d1 = r1[:, xa.ofs[:, 0]] * a0 + r1[:, xa.ofs[:, 1]] * a1
    v = (((b0 * (d0 >> 4)) >> 16) + ((b1 * (d1 >> 4)) >> 16) + 2) >> 2
    return np.clip(v, 0, 255).astype(np.uint8)


# -- 2. CLAHE ---------------------------------------------------------------------------------------------------
def clahe_luts(image: np.ndarray, clip: float, tiles_x: int, tiles_y: int) -> np.ndarray:
    """KERNEL: ``clahe_lut_u8``. Per-tile 256-entry LUTs, uint8 (tiles_y * tiles_x, 256), as ``CLAHE_CalcLut_Body``."""
    src = _check_u8(image)
    h, w = src.shape
    g = clahe_geometry(h, w, clip, tiles_x, tiles_y)
    rows = reflect101(np.arange(g.tile_h * tiles_y), h)
    cols = reflect101(np.arange(g.tile_w * tiles_x), w)
    ext = src[rows][:, cols]
    luts = np.zeros((tiles_y * tiles_x, 256), np.uint8)
    for k in range(tiles_y * tiles_x):
        ty, tx = divmod(k, tiles_x)
        tile = ext[ty * g.tile_h:(ty + 1) * g.tile_h, tx * g.tile_w:(tx + 1) * g.tile_w]
        hist = np.bincount(tile.ravel(), minlength=256).astype(np.int64)
        if g.clip_limit > 0:
            over = np.maximum(hist - g.clip_limit, 0)
            clipped = int(over.sum())
            hist = np.minimum(hist, g.clip_limit)
            redist_batch = clipped // 256
            residual = clipped - redist_batch * 256
            hist += redist_batch
            if residual != 0:
                step = max(256 // residual, 1)
                idx = np.arange(0, 256, step)[:residual]
                hist[idx] += 1
        csum = np.cumsum(hist)
        vals = csum.astype(F32) * F32(g.lut_scale)
        luts[k] = np.clip(np.rint(vals), 0, 255).astype(np.uint8)
    return luts


def _clahe_axis(n: int, inv_t: float, tiles: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    tf = np.arange(n).astype(F32) * F32(inv_t) - F32(0.5)
    t1 = np.floor(tf).astype(np.int64)
    a = (tf - t1.astype(F32)).astype(F32)
    a1 = (F32(1.0) - a).astype(F32)
    t2 = np.minimum(t1 + 1, tiles - 1)
    t1 = np.maximum(t1, 0)
    return t1, t2, a, a1


def clahe_apply(image: np.ndarray, luts: np.ndarray, clip: float, tiles_x: int, tiles_y: int) -> np.ndarray:
    """KERNEL: ``clahe_interp_u8``. Bilinear blend of the four neighbouring tile LUTs (``CLAHE_Interpolation_Body``):
    ``res = (L11 * xa1 + L12 * xa) * ya1 + (L21 * xa1 + L22 * xa) * ya`` in float32, then round half to even."""
    src = _check_u8(image)
    h, w = src.shape
    g = clahe_geometry(h, w, clip, tiles_x, tiles_y)
    tx1, tx2, xa, xa1 = _clahe_axis(w, g.inv_tw, tiles_x)
    ty1, ty2, ya, ya1 = _clahe_axis(h, g.inv_th, tiles_y)
    v = src.astype(np.int64)
    lut = luts.astype(F32)

    def at(ty: np.ndarray, tx: np.ndarray) -> np.ndarray:
        return lut[ty[:, None] * tiles_x + tx[None, :], v]

    xa_, xa1_ = xa[None, :], xa1[None, :]
    ya_, ya1_ = ya[:, None], ya1[:, None]
    top = at(ty1, tx1) * xa1_ + at(ty1, tx2) * xa_
    bottom = at(ty2, tx1) * xa1_ + at(ty2, tx2) * xa_
    res = top * ya1_ + bottom * ya_
    return np.clip(np.rint(res.astype(F32)), 0, 255).astype(np.uint8)


def clahe_u8(image: np.ndarray, clip: float = 2.0, tiles: int = 8) -> np.ndarray:
    """cv2.createCLAHE(clip, (tiles, tiles)).apply(image), as the two CLAHE kernels compute it."""
    luts = clahe_luts(image, clip, tiles, tiles)
    return clahe_apply(image, luts, clip, tiles, tiles)


# -- 3. non-local means -----------------------------------------------------------------------------------------
def nlm_u8(image: np.ndarray, h: float = 10.0, template_size: int = 7, search_size: int = 21) -> np.ndarray:
    """KERNEL: ``nlm_u8``. cv2.fastNlMeansDenoising(image, None, h, template_size, search_size).

    For every search offset ``o``: ``ssd(p) = sum over the template of (I[p + t] - I[p + o + t])^2`` on the
    reflect101-extended image (exact integers; OpenCV updates them incrementally, the kernel sums them per
    block: both exact), ``w = weights[min(ssd >> shift, used - 1)]``, ``est += w * I[p + o]``, ``wsum += w``;
    finally ``(unsigned(est) + wsum / 2) / wsum`` (integer division).
    """
    src = _check_u8(image)
    hh, ww = src.shape
    t = nlm_tables(h, template_size, search_size)
    b = t.border
    ext = src[reflect101(np.arange(-b, hh + b), hh)][:, reflect101(np.arange(-b, ww + b), ww)].astype(np.int64)
    th, sh = t.template_half, t.search_half
    tws = 2 * th + 1
    weights = t.weights.astype(np.int64)
    est = np.zeros((hh, ww), np.int64)
    wsum = np.zeros((hh, ww), np.int64)
    # the template-sized window around every output pixel: rows/cols [sh, sh + hh + 2 th) of ext
    a = ext[sh:sh + hh + 2 * th, sh:sh + ww + 2 * th]
    for oy in range(-sh, sh + 1):
        for ox in range(-sh, sh + 1):
            bwin = ext[sh + oy:sh + oy + hh + 2 * th, sh + ox:sh + ox + ww + 2 * th]
            d = (a - bwin) ** 2
            cs = np.cumsum(np.cumsum(np.pad(d, ((1, 0), (1, 0))), axis=0), axis=1)
            ssd = cs[tws:, tws:] - cs[:-tws, tws:] - cs[tws:, :-tws] + cs[:-tws, :-tws]
            w = weights[np.minimum(ssd >> t.shift, t.used - 1)]
            est += w * ext[b + oy:b + oy + hh, b + ox:b + ox + ww]
            wsum += w
    out = (est.astype(np.uint64) + (wsum // 2).astype(np.uint64)) // wsum.astype(np.uint64)
    return np.clip(out, 0, 255).astype(np.uint8)


# -- 4. bilateral -----------------------------------------------------------------------------------------------
def bilateral_u8(image: np.ndarray, d: int = 9, sigma_color: float = 75.0, sigma_space: float = 75.0) -> np.ndarray:
    """KERNEL: ``bilateral_u8``. cv2.bilateralFilter(image, d, sigma_color, sigma_space) for uint8 gray.

    In OpenCV's neighbour order: ``w = space_weight[k] * color_weight[|v - v0|]``; ``wsum += w``;
    ``sum = fma(float(v), w, sum)`` (float32, one rounding, as OpenCV's vectorized loop); result
    ``round_half_even(sum / wsum)``.
    """
    src = _check_u8(image)
    hh, ww = src.shape
    t = bilateral_tables(d, sigma_color, sigma_space)
    r = t.radius
    ext = src[reflect101(np.arange(-r, hh + r), hh)][:, reflect101(np.arange(-r, ww + r), ww)].astype(np.int64)
    v0 = ext[r:r + hh, r:r + ww]
    acc = np.zeros((hh, ww), F32)
    wsum = np.zeros((hh, ww), F32)
    for oy, ox, sw in zip(t.ofs_y.tolist(), t.ofs_x.tolist(), t.space_weight):
        v = ext[r + oy:r + oy + hh, r + ox:r + ox + ww]
        wgt = (F32(sw) * t.color_weight[np.abs(v - v0)]).astype(F32)
        wsum = (wsum + wgt).astype(F32)
        acc = fma_f32(v.astype(F32), wgt, acc)
    out = np.rint((acc / wsum).astype(F32))
    return np.clip(out, 0, 255).astype(np.uint8)


# -- 5. normalize -----------------------------------------------------------------------------------------------
def normalize(filtered: np.ndarray, mean: float, std: float, channels: int = 3,
              dtype: np.dtype | type = np.float32) -> np.ndarray:
    """KERNEL: ``normalize_f32`` / ``normalize_f16``. ``(float(x) * float32(1/255) - mean) / std`` in float32,
    replicated to ``channels``; float16 output rounds that float32 to nearest even."""
    x = (_check_u8(filtered).astype(F32) * F32(1.0 / 255.0) - F32(mean)) / F32(std)
    x = x.astype(F32)
    out = np.ascontiguousarray(np.broadcast_to(x, (channels,) + x.shape))
    return out.astype(np.dtype(dtype))


# -- the chain --------------------------------------------------------------------------------------------------
def filter_uint8(image: np.ndarray, spec) -> np.ndarray:
    """Steps 1-4 of ``hemseg.runtime.preprocess.filter_uint8`` as the GPU kernels compute them."""
    out = resize_u8(image, spec.size, spec.size)
    if spec.clahe:
        out = clahe_u8(out, float(spec.clahe_clip), int(spec.clahe_tiles))
    if spec.nlm:
        out = nlm_u8(out, float(spec.nlm_h), int(spec.nlm_template), int(spec.nlm_search))
    if spec.bilateral:
        out = bilateral_u8(out, int(spec.bilateral_d), float(spec.bilateral_sigma_color),
                           float(spec.bilateral_sigma_space))
    return out


def preprocess(image: np.ndarray, spec, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """The whole chain: uint8 (H, W) -> (channels, size, size) of ``dtype``."""
    return normalize(filter_uint8(image, spec), spec.mean, spec.std, spec.channels, dtype)
