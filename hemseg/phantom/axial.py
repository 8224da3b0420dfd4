"""Axial anatomy through a vertebral body at the pedicle level: body, pedicles, posterior ring (laminae, spinous
process, transverse processes, facets), canal with thecal sac, cord (or cauda equina) and epidural fat,
paraspinal muscles, psoas, and the neck / chest / abdomen around the column.

World frame: origin at the body centre, x to the image right (patient left, radiological convention), y down
(posterior), millimetres.
"""

from __future__ import annotations

import math

import numpy as np

from hemseg.phantom import contrast as T
from hemseg.phantom.canvas import Canvas, blob, ellipse, interp_anchor, superellipse, unit_circle
from hemseg.phantom.spine import BODY_DEPTH, BODY_WIDTH, CANAL_AP, CORD_AP

# level ranges an axial slice is drawn from (C2 = 0 ... L5 = 22)
AXIAL_LEVELS = {"cervicothoracic": (1.0, 9.0), "thoracolumbar": (15.0, 22.0)}
CANAL_WIDTH = {0: 24.0, 5: 24.0, 6: 18.0, 12: 16.0, 17: 19.0, 20: 22.0, 22: 24.0}
PEDICLE_ANGLE = {0: 0.6, 5: 0.55, 6: 0.25, 17: 0.1, 22: 0.25}       # rad, converging anteriorly
PEDICLE_WIDTH = {0: 5.0, 5: 6.0, 6: 6.5, 12: 5.5, 17: 8.0, 22: 11.0}
SPINOUS_LEN = {0: 16.0, 5: 28.0, 6: 30.0, 12: 25.0, 17: 28.0, 22: 24.0}
TRANSVERSE_LEN = {0: 12.0, 5: 14.0, 6: 18.0, 12: 16.0, 17: 14.0, 19: 22.0, 22: 20.0}
PSOAS_R = {16: 4.0, 17: 7.0, 18: 11.0, 20: 18.0, 22: 23.0}
ERECTOR = {0: (26.0, 32.0), 5: (30.0, 30.0), 6: (28.0, 30.0), 14: (32.0, 36.0), 20: (40.0, 42.0), 22: (40.0, 40.0)}


def build_axial(rng: np.random.Generator, region: str, height: int, width: int) -> Canvas:
    """Choose a level and field of view and paint an axial slice of ``region`` into a new canvas."""
    lo, hi = AXIAL_LEVELS[region]
    level = float(rng.uniform(lo, hi))
    neck = level < 5.6
    chest = 5.6 <= level < 16.5
    scale = rng.uniform(0.88, 1.12)
    g = {
        "level": level,
        "bw": interp_anchor(BODY_WIDTH, level) * scale * rng.uniform(0.95, 1.05),
        "bd": interp_anchor(BODY_DEPTH, level) * scale * rng.uniform(0.95, 1.05),
        "cw": interp_anchor(CANAL_WIDTH, level) * scale * rng.uniform(0.9, 1.1),
        "ca": interp_anchor(CANAL_AP, level) * scale * rng.uniform(0.85, 1.1),
        "sp": interp_anchor(SPINOUS_LEN, level) * rng.uniform(0.8, 1.15),
    }
    g["back"] = g["bd"] / 2 + g["ca"] + g["sp"] + (rng.uniform(15, 35) if neck else rng.uniform(4, 14))
    g["fat"] = rng.uniform(3, 12) if neck else rng.uniform(5, 35)
    skin_back = g["back"] + g["fat"]
    fov = rng.uniform(110, 170) if neck else rng.uniform(140, 240)
    mm_per_px = fov / max(height, width)
    fov_y = mm_per_px * height
    # the posterior skin sits near the lower edge; the body stays well inside the image
    cy = min(skin_back - 0.5 * fov_y * rng.uniform(0.75, 1.02), g["bd"] / 2 + 0.3 * fov_y)
    cy = max(cy, -0.15 * fov_y)
    canvas = Canvas(height, width, mm_per_px, (float(rng.normal(0, 5)), float(cy)), angle=float(rng.normal(0, 0.06)),
                    shift_px=(float(rng.normal(0, 0.02) * width), float(rng.normal(0, 0.02) * height)))
    _trunk(canvas, rng, g, neck, chest)
    _ring(canvas, rng, g, neck, chest)
    _canal(canvas, rng, g)
    _body(canvas, rng, g, neck, chest)
    return canvas


def _curve(p0, p1, bend: float, n: int = 12) -> np.ndarray:
    """A quadratic Bezier from p0 to p1 whose middle is pushed ``bend`` mm sideways."""
    p0, p1 = np.asarray(p0, np.float64), np.asarray(p1, np.float64)
    d = p1 - p0
    nrm = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-9)
    ctrl = 0.5 * (p0 + p1) + nrm * bend * 2
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * ctrl + t ** 2 * p1


def _outline(half_w: float, ry: float, cy: float, p: float, flat_back: bool) -> np.ndarray:
    pts = superellipse(half_w, ry, p, 72)
    pts[:, 1] += cy
    if flat_back:                                   # the back is flatter than the front
        back = pts[:, 1] > cy
        pts[back, 1] = cy + (pts[back, 1] - cy) * 0.85
    return pts


def _trunk(cv: Canvas, rng: np.random.Generator, g: dict, neck: bool, chest: bool) -> None:
    """Skin, subcutaneous fat, body wall, body cavity, paraspinal muscles and the organs around the column."""
    bd, back, fat = g["bd"], g["back"], g["fat"]
    if neck:
        half_w, front = rng.uniform(52, 66), -bd / 2 - rng.uniform(45, 62)
    elif chest:
        half_w, front = rng.uniform(130, 175), -rng.uniform(140, 190)
    else:
        half_w, front = rng.uniform(120, 175), -rng.uniform(110, 170)
    g["half_w"] = half_w
    cy = 0.5 * (front + back + fat)
    ry = 0.5 * (back + fat - front)
    p = 2.2 if neck else 2.7
    flat = not neck
    cv.fill(_outline(half_w, ry, cy, p, flat), T.SOFT)                        # skin
    cv.fill(_outline(half_w - 1.5, ry - 1.5, cy, p, flat), T.FAT)             # subcutaneous fat
    wall = rng.uniform(8, 16)
    g["interior"] = _outline(half_w - fat, ry - fat, cy, p, flat)
    cv.fill(g["interior"], T.MUSCLE)                                          # body wall / neck muscles
    cavity = _outline(half_w - fat - wall, ry - fat - wall, cy - 8, p, flat)
    if chest:
        cv.fill(cavity, T.LUNG)
        _ribs(cv, rng, g, half_w - fat - wall, ry - fat - wall, cy - 8, p)
    elif not neck:
        cv.fill(cavity, T.FAT)
    _paraspinal(cv, rng, g, neck)
    if neck:
        _neck(cv, rng, g)
    elif chest:
        _chest(cv, rng, g)
    else:
        _abdomen(cv, rng, g, front, half_w)


def _paraspinal(cv: Canvas, rng: np.random.Generator, g: dict, neck: bool) -> None:
    """Erector spinae / multifidus (or the posterior neck muscles) with curved fat planes between bellies."""
    level, bd, ca, back = g["level"], g["bd"], g["ca"], g["back"]
    ew = interp_anchor({k: v[0] for k, v in ERECTOR.items()}, level) * rng.uniform(0.85, 1.15)
    top = bd / 2 + ca * 0.3
    eh = back - top
    mid_y = 0.5 * (top + back)
    for side in (-1, 1):
        cx = side * (ew * 0.5 + 2.5)
        if neck:                   # deep (semispinalis), middle (splenius) and superficial (trapezius) layers
            room = g["half_w"] - g["fat"] - 4.0            # stay inside the neck
            lw2 = min(ew * 0.55, 0.5 * room - 2)
            layers = [(side * (lw2 * 0.8 + 3), top + eh * 0.35, lw2 * 0.8, eh * 0.3),
                      (side * (lw2 + 3), top + eh * 0.72, lw2, eh * 0.18)]
            for lx, ly, lw, lh in layers:
                ang = side * rng.uniform(0.0, 0.15)
                inner = blob(rng, lx, ly, lw, lh, 0.05, angle=ang)
                outer = np.array([lx, ly]) + (inner - np.array([lx, ly])) * (1 + 1.2 / max(3.0, min(lw, lh)))
                cv.fill_over(outer, T.FAT, (T.MUSCLE, T.FAT), hole_mm=inner, hole_label=T.MUSCLE,
                             within_mm=g["interior"])
            continue
        cv.fill(blob(rng, cx, mid_y, ew * 0.58, eh * 0.56, 0.05, angle=side * 0.12), T.FAT)
        cv.fill(blob(rng, cx, mid_y, ew * 0.55, eh * 0.53, 0.05, angle=side * 0.12), T.MUSCLE)
        for _ in range(int(rng.integers(1, 3))):       # fat planes between muscle bellies
            x0 = cx + side * rng.uniform(-0.1, 0.35) * ew
            cv.line(_curve((x0, mid_y - eh * 0.45), (x0 + side * rng.uniform(0, 12), mid_y + eh * 0.45),
                           side * rng.uniform(-4, 6)), T.FAT, rng.uniform(0.4, 1.0))
    if neck:
        cv.line(np.array([[0, bd / 2 + ca + 8], [0, back]]), T.LIGAMENT, 1.2)          # nuchal ligament


def _ribs(cv: Canvas, rng: np.random.Generator, g: dict, hw: float, ry: float, cy: float, p: float) -> None:
    """Posterior rib arcs along the chest wall, starting at the costotransverse joints."""
    bd, ca = g["bd"], g["ca"]
    for side in (-1, 1):
        a0 = rng.uniform(0.35, 0.6)          # fraction of the half outline from the back midline
        a1 = a0 + rng.uniform(0.15, 0.4)
        tt = np.linspace(np.pi / 2 - a0 * np.pi / 2 * 0.2, np.pi / 2 - a1 * np.pi / 2, 20)
        c, s = np.cos(tt), np.sin(tt)
        e = 2.0 / p
        x = side * (hw + 3) * np.abs(c) ** e
        y = cy + (ry * 0.85 + 3) * np.abs(s) ** e
        pts = np.stack([x, y], 1)
        # the neck of the rib joins the transverse process
        start = np.array([[side * (g["cw"] / 2 + 14), bd / 2 + ca * 0.6]])
        pts = np.concatenate([start, pts], 0)
        cv.line(pts, T.CORTEX, rng.uniform(6, 9))
        cv.line(pts, T.MARROW, rng.uniform(2.5, 4))


def _neck(cv: Canvas, rng: np.random.Generator, g: dict) -> None:
    bd, bw = g["bd"], g["bw"]
    y_front = -bd / 2
    # visceral compartment in front of the column
    cv.fill(blob(rng, 0, y_front - 16, 26, 17, 0.08, angle=0.0), T.FAT)
    for side in (-1, 1):                                               # longus colli
        cv.fill(ellipse(side * bw * 0.32, y_front - 2.5, bw * 0.3, 3.5, 0, 24), T.MUSCLE)
    eso_y = y_front - 8
    cv.fill(ellipse(rng.normal(0, 2), eso_y, 8, 4.5, 0, 24), T.SOFT)
    tr_r = rng.uniform(6, 8.5)
    tr_y = eso_y - 4 - tr_r
    for side in (-1, 1):                                               # thyroid lobes
        cv.fill(blob(rng, side * (tr_r + 6), tr_y + 1, 7, 10, 0.15, angle=side * 0.3), T.SOFT)
    cv.fill(ellipse(0, tr_y, tr_r + 1.2, tr_r + 0.8, 0, 32), T.LIGAMENT)
    cv.fill(ellipse(0, tr_y, tr_r, tr_r * 0.85, 0, 32), T.AIR)
    for side in (-1, 1):
        x = side * rng.uniform(20, 27)
        cv.fill(ellipse(x, eso_y - 1, 3.3, 3.3, 0, 16), T.ARTERY)                       # carotid
        cv.fill(ellipse(x + side * 7, eso_y - 3, 5.0, 3.8, 0, 16), T.VEIN)              # jugular
        cv.fill_over(blob(rng, x + side * 11, eso_y - 6, 5, 12, 0.08, angle=side * 0.9), T.MUSCLE,   # SCM
                     (T.MUSCLE, T.FAT, T.SOFT), within_mm=g["interior"])


def _chest(cv: Canvas, rng: np.random.Generator, g: dict) -> None:
    bd, bw = g["bd"], g["bw"]
    # mediastinum: the heart in front, then a little fat around the oesophagus, aorta and azygos near the spine
    hy = -bd / 2 - rng.uniform(75, 95)
    heart = blob(rng, rng.normal(-12, 6), hy, rng.uniform(50, 65), rng.uniform(38, 50), 0.08)
    cv.fill(heart, T.SOFT)
    cc = rng.normal(0, 5, 2) + np.array([-12, hy])
    cv.fill(blob(rng, cc[0], cc[1], 30, 22, 0.2), T.ARTERY)
    cv.fill(blob(rng, rng.normal(-3, 2), -bd / 2 - 22, rng.uniform(15, 22), rng.uniform(14, 20), 0.12, angle=0.0),
            T.FAT)
    ar = rng.uniform(10, 14)
    cv.fill(ellipse(bw * 0.4 + ar * 0.5, -bd / 2 - ar * 0.6, ar + 1.5, ar + 1.5, 0, 32), T.FAT)
    cv.fill(ellipse(bw * 0.4 + ar * 0.5, -bd / 2 - ar * 0.6, ar, ar, 0, 32), T.ARTERY)
    cv.fill(ellipse(-bw * 0.05, -bd / 2 - 8, 7, 4.5, 0, 24), T.SOFT)
    cv.fill(ellipse(-bw * 0.35, -bd / 2 + 1, 3, 3, 0, 16), T.VEIN)


def _abdomen(cv: Canvas, rng: np.random.Generator, g: dict, front: float, half_w: float) -> None:
    level, bd, bw = g["level"], g["bd"], g["bw"]
    if level < 18.5:                 # liver (patient right = image left), stomach / spleen on the other side
        cv.fill(blob(rng, -rng.uniform(45, 70), front * 0.4, rng.uniform(65, 85), rng.uniform(55, 75), 0.08, 0.2),
                T.SOFT)
        cv.fill(blob(rng, rng.uniform(55, 80), front * 0.35, 40, 35, 0.2), T.BOWEL)
    if level < 17.3:                 # posterior costophrenic recesses
        for side in (-1, 1):
            cv.fill(blob(rng, side * rng.uniform(70, 95), bd * 0.5, rng.uniform(22, 35), rng.uniform(15, 24), 0.1,
                         angle=side * 0.5), T.LUNG)
    n = int(rng.integers(6, 14)) if level > 17.5 else int(rng.integers(2, 6))
    for _ in range(n):               # bowel loops in the front half
        cx, cy = rng.uniform(-half_w * 0.6, half_w * 0.6), rng.uniform(front * 0.8, -bd / 2 - 45)
        r = rng.uniform(10, 22)
        cv.fill(blob(rng, cx, cy, r, r * rng.uniform(0.6, 1.1), 0.2, n=24), T.BOWEL)
        kind = rng.random()
        if kind < 0.6:
            cv.fill(blob(rng, cx, cy, r * 0.6, r * 0.5, 0.25, n=24), T.CSF if kind < 0.35 else T.AIR)
    if 16.5 < level < 21.0:          # kidneys in perirenal fat
        for side in (-1, 1):
            kx = side * rng.uniform(55, 75)
            ky = rng.uniform(-15, 5)
            cv.fill(blob(rng, kx, ky, 34, 30, 0.1), T.FAT)
            cv.fill(blob(rng, kx, ky, rng.uniform(22, 30), rng.uniform(16, 22), 0.08, angle=side * 0.9), T.KIDNEY)
            cv.fill(blob(rng, kx - side * 8, ky - 4, 7, 4, 0.2, angle=side * 0.9), T.FAT)   # renal sinus
    ar = rng.uniform(9, 13)           # aorta (patient left = image right) and IVC
    cv.fill(ellipse(bw * 0.25, -bd / 2 - ar - 2, ar, ar, 0, 32), T.ARTERY)
    cv.fill(ellipse(-bw * 0.55, -bd / 2 - 14, rng.uniform(9, 14), rng.uniform(5, 9), 0.2, 24),
            T.ARTERY if rng.random() < 0.5 else T.VEIN)
    if level < 19.0:                  # diaphragmatic crura hugging the aorta and body
        for side in (-1, 1):
            cv.line(np.array([[side * bw * 0.15, -bd / 2 - 2 * ar - 4], [side * bw * 0.55, -bd / 2 - 6],
                              [side * bw * 0.6, 0.0]]), T.MUSCLE, rng.uniform(3, 6))
    pr = interp_anchor(PSOAS_R, level) * rng.uniform(0.8, 1.2)
    tl = interp_anchor(TRANSVERSE_LEN, level)
    for side in (-1, 1):              # psoas and quadratus lumborum
        if pr > 3:
            cv.fill(blob(rng, side * (bw / 2 + pr * 0.7), -bd * 0.1, pr, pr * 0.85, 0.08), T.MUSCLE)
        if level > 17.0:
            cv.fill(blob(rng, side * (bw / 2 + tl + 12), bd / 2 + 8, 14, 8, 0.1, angle=side * 0.3), T.MUSCLE)


def _ring(cv: Canvas, rng: np.random.Generator, g: dict, neck: bool, chest: bool) -> None:
    """Pedicles, laminae, spinous process, transverse and articular processes (bone: cortex around marrow)."""
    level, bd, cw, ca = g["level"], g["bd"], g["cw"], g["ca"]
    pw = interp_anchor(PEDICLE_WIDTH, level) * rng.uniform(0.85, 1.15)
    pa = interp_anchor(PEDICLE_ANGLE, level)
    y0 = bd / 2 - 2.0                          # pedicle root inside the body's posterior corner
    y1 = bd / 2 + ca * 0.55
    sp_len = g["sp"]
    tl = interp_anchor(TRANSVERSE_LEN, level) * rng.uniform(0.85, 1.15)
    lam_t = rng.uniform(4.5, 7.5)
    y_back = bd / 2 + ca                       # posterior wall of the canal (inner surface of the laminae)
    bones: list[tuple[np.ndarray, float]] = []
    for side in (-1, 1):
        xr = side * (cw / 2 + pw * 0.3)
        xe = xr + side * math.tan(pa) * (y1 - y0)
        ped = np.array([[xr - side * pw / 2, y0], [xr + side * pw / 2, y0], [xe + side * pw / 2, y1],
                        [xe - side * pw / 2, y1]])
        bones.append((ped, 1.0))
        # lamina from the pedicle end to the midline
        lam = np.array([[xe - side * pw * 0.45, y1 - 1], [xe + side * pw * 0.5, y1 + 2], [side * 2.5, y_back + lam_t],
                        [side * 0.5, y_back + lam_t * 0.6], [0.0, y_back - 0.5], [side * cw * 0.25, y_back - 0.5]])
        bones.append((lam, 1.0))
        # articular processes (facets) at the pedicle-lamina junction
        fx, fy = xe + side * pw * 0.3, y1 + 3
        if neck:                                   # cervical lateral masses (articular pillars)
            bones.append((ellipse(fx, fy - 1, pw * 1.1, 6.5, side * 0.3, 24), 1.0))
        else:
            bones.append((ellipse(fx, fy, pw * 0.75, 5.5, side * 0.4, 24), 1.0))
        # transverse process
        if neck:                                   # anterolateral, from the body-pedicle junction
            tp = np.array([[xr, y0 - 1], [xr + side * tl, y0 - 5], [xr + side * tl, y0 + 1], [xr, y0 + 3]])
        elif chest:
            tp = np.array([[xe, y1 + 1], [xe + side * tl, y1 + 10], [xe + side * tl * 0.95, y1 + 16], [xe, y1 + 6]])
        else:
            tp = np.array([[xe, y1 - 2], [xe + side * tl, y1 - 1], [xe + side * tl, y1 + 3.5], [xe, y1 + 4]])
        bones.append((tp, 0.8))
    # spinous process (cervical ones are bifid)
    spx = np.array([[-2.8, y_back + 1], [2.8, y_back + 1], [2.2, y_back + sp_len], [-2.2, y_back + sp_len]])
    if neck and level < 4.5:
        spx = np.array([[-3.0, y_back + 1], [3.0, y_back + 1], [5.0, y_back + sp_len], [1.0, y_back + sp_len * 0.8],
                        [-1.0, y_back + sp_len * 0.8], [-5.0, y_back + sp_len]])
    bones.append((spx, 1.0))
    for poly, _ in bones:
        cv.fill(poly, T.CORTEX)
    for poly, k in bones:
        c = poly.mean(0)
        cv.fill(c + (poly - c) * 0.72 * k, T.MARROW)
    if neck:                                       # vertebral arteries in the transverse foramina
        for side in (-1, 1):
            x = side * (cw / 2 + pw * 0.3 + tl * 0.5)
            cv.fill(ellipse(x, y0 - 2, 2.6, 2.6, 0, 16), T.ARTERY)
    # facet joint lines
    for side in (-1, 1):
        xe = side * (cw / 2 + pw * 0.3) + side * math.tan(pa) * (y1 - y0)
        fx, fy = xe + side * pw * 0.3, y1 + 3
        cv.line(np.array([[fx - side * 3, fy - 5], [fx + side * 2, fy + 5]]), T.LIGAMENT, 0.8)


def _canal(cv: Canvas, rng: np.random.Generator, g: dict) -> None:
    """Epidural fat, ligamenta flava, dura, CSF, cord or cauda equina."""
    level, bd, cw, ca = g["level"], g["bd"], g["cw"], g["ca"]
    y0, y1 = bd / 2 + 0.5, bd / 2 + ca
    cy = 0.5 * (y0 + y1)
    tri = level < 6 or level > 17                  # cervical and lumbar canals are triangular
    t, c, s = unit_circle(48)
    rx, ry = cw / 2, (y1 - y0) / 2
    x = rx * c * (1 - (0.35 * (s + 1) / 2 if tri else 0.0))
    y = cy + ry * s
    canal = np.stack([x, y], 1)
    cv.fill(canal, T.FAT)
    for side in (-1, 1):                           # ligamenta flava
        cv.line(np.array([[side * rx * 0.55, y1 - 3.5], [side * 1.0, y1 - 0.2]]), T.LIGAMENT, rng.uniform(1.5, 3.0))
    epi_p = rng.uniform(0.5, 1.5) if level < 6 else rng.uniform(1.5, 4.5)
    sac = np.stack([x * 0.86, cy - 0.5 * epi_p + (y - cy) * (1 - (epi_p + 0.8) / (2 * ry))], 1)
    cv.fill(sac, T.LIGAMENT)
    cv.fill(np.stack([x * 0.82, cy - 0.5 * epi_p + (y - cy) * (1 - (epi_p + 1.6) / (2 * ry))], 1), T.CSF)
    # the sac centre; the cord sits a little anterior
    scy = cy - 0.5 * epi_p
    if level < 18.3:
        cord_ap = interp_anchor(CORD_AP, level) * rng.uniform(0.9, 1.1)
        cord_w = cord_ap * (1.5 if level < 6 else 1.2)
        cv.fill(ellipse(rng.normal(0, 0.6), scy - ry * 0.12, cord_w / 2, cord_ap / 2, 0, 36), T.CORD)
    else:                                          # cauda equina: nerve roots layering dorsally
        for _ in range(int(rng.integers(6, 14))):
            a = rng.uniform(0, np.pi)
            rr = rng.uniform(0.3, 0.8)
            cv.fill(ellipse(math.cos(a) * rx * 0.6 * rr, scy + math.sin(a) * ry * 0.5 * rr + ry * 0.2, 0.9, 0.9, 0,
                            12), T.NERVE)


def _body(cv: Canvas, rng: np.random.Generator, g: dict, neck: bool, chest: bool) -> None:
    """The vertebral body: cortex, marrow (body index 1), basivertebral vein channel."""
    bw, bd = g["bw"], g["bd"]
    t, c, s = unit_circle(72)
    p = rng.uniform(2.3, 3.2) if neck else rng.uniform(2.0, 2.6)
    e = 2.0 / p
    x = np.sign(c) * np.abs(c) ** e
    y = np.sign(s) * np.abs(s) ** e
    concave = rng.uniform(0.05, 0.18) if not chest else rng.uniform(0.0, 0.08)   # posterior concavity

    def outline(ax: float, ay: float) -> np.ndarray:
        yy = ay * y
        yy = np.where(y > 0, yy - concave * ay * 2 * np.maximum(1 - (x * 1.15) ** 2, 0) * y, yy)
        xx = ax * x * (1 - 0.08 * y if chest else 1.0)
        return np.stack([xx, yy], 1)

    cortex = rng.uniform(1.0, 1.6)
    cv.fill(outline(bw / 2, bd / 2), T.CORTEX, body=0)
    inner = outline(bw / 2 - cortex, bd / 2 - cortex)
    cv.fill(inner, T.MARROW, body=1)
    cv.add_body(1, (0.0, 0.0), 0.0, bw / 2 - cortex, bd / 2 - cortex)
    if rng.random() < 0.8:                         # basivertebral venous channel (Y-shaped, posterior centre)
        yb = bd / 2 - concave * bd - cortex
        d = rng.uniform(0.2, 0.35) * bd
        cv.fill(np.array([[-1.2, yb + 1], [1.2, yb + 1], [0.9, yb - d], [-0.9, yb - d]]), T.VEIN, body=1)
        for side in (-1, 1):
            cv.line(np.array([[0.0, yb - d], [side * d * 0.5, yb - d * 1.5]]), T.VEIN, 1.0)
