"""Label map -> MR signal for one sequence: tissue contrast, marrow make-up, tissue texture, lesion texture,
CSF flow voids. The result is a noise-free float32 "true signal" image; :mod:`hemseg.phantom.degrade` adds the
acquisition (resolution, bias field, Rician noise) afterwards.
"""

from __future__ import annotations

import numpy as np

from hemseg.phantom import contrast as T
from hemseg.phantom.canvas import Canvas
from hemseg.phantom.lesions import LesionLayer
from hemseg.phantom.texture import smooth_noise

# Marrow signal as a function of its fat fraction f (0 = red, 1 = fatty): (value at f=0, value at f=1)
_MARROW_BY_FAT = {"t1": (0.42, 0.80), "t1c": (0.48, 0.82), "t2": (0.36, 0.60), "stir": (0.24, 0.10),
                  "t1c_fatsat": (0.30, 0.16)}


def tissue_table(sequence: str, rng: np.random.Generator) -> np.ndarray:
    """Per-image tissue values, with marrow fat fraction and lesion conspicuity drawn at random."""
    vals = T.tissue_values(sequence, rng)
    fat = rng.beta(2.0, 2.0)
    lo, hi = _MARROW_BY_FAT[sequence]
    vals[T.MARROW] = (lo + (hi - lo) * fat) * float(np.exp(rng.normal(0, 0.05)))
    marrow = vals[T.MARROW]
    if sequence == "t1c_fatsat":
        # The lesion's fat is suppressed like the marrow's, but its vascular part enhances (focal fat does not: the
        # fat-island mimic stays dark), so it ranges from about iso-intense (fat-rich, weakly enhancing) to twice the
        # marrow; the mean ratio, 1.45, is close to the 1.48 measured for typical hemangiomas on fat-suppressed
        # sequences (Nabavizadeh et al., Br J Radiol 2016).
        vals[T.LESION] = marrow * rng.uniform(0.9, 2.0)
    else:
        lesion = max(vals[T.LESION], marrow * 1.25)
        vals[T.LESION] = marrow + rng.uniform(0.55, 1.1) * (lesion - marrow)
    return vals


def render_signal(canvas: Canvas, sequence: str, rng: np.random.Generator, lesions: LesionLayer) -> np.ndarray:
    """The noise-free signal image (float32, (H, W))."""
    h, w = canvas.height, canvas.width
    labels = canvas.labels
    vals = tissue_table(sequence, rng)
    img = vals[labels]
    coarse = smooth_noise(rng, h, w, canvas.px(rng.uniform(8.0, 20.0)))
    fine = smooth_noise(rng, h, w, canvas.px(rng.uniform(1.2, 2.5)))
    k_c, k_f = rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.5)
    gain = 1.0 + k_c * T.COARSE_AMP[labels] * coarse + k_f * T.FINE_AMP[labels] * fine
    img *= np.clip(gain, 0.2, None)
    # each vertebral body has its own marrow make-up
    n_body = len(canvas.bodies) + 1
    body_gain = np.exp(rng.normal(0, 0.07, 256)).astype(np.float32)
    body_gain[0] = 1.0
    body_gain[n_body:] = 1.0
    bm = canvas.body > 0
    img[bm] *= body_gain[canvas.body[bm]]
    # CSF pulsation flow voids on fluid-bright sequences
    if sequence in ("t2", "stir") and rng.random() < 0.6:
        csf = labels == T.CSF
        if csf.any():
            flow = smooth_noise(rng, h, w, canvas.px(rng.uniform(3.0, 7.0)))
            img[csf] *= 1.0 - rng.uniform(0.3, 0.7) * np.clip(flow[csf] - 0.3, 0, 1)
    # hemangioma trabeculae
    if lesions.count:
        m = lesions.mask
        pat = lesions.pattern[m]
        img[m] = img[m] * (1.0 - pat) + T.TRABECULA[sequence] * pat
    return img
