"""Tissue labels and the tissue-contrast table of each sequence.

Anatomy is painted as a label map (one uint8 tissue code per pixel); :func:`tissue_values` turns the codes into
signal for one sequence. Values are relative signal on a 0..1 scale (1 is about the brightest tissue of a typical
image); each image jitters them a little so that no two studies share exact grey levels.
"""

from __future__ import annotations

import numpy as np

# Tissue codes (uint8). Keep AIR == 0.
AIR = 0
FAT = 1            # subcutaneous, epidural, intermuscular, retroperitoneal and mediastinal fat
MARROW = 2         # cancellous bone of vertebral bodies and posterior elements (adult, mixed red/yellow)
CORTEX = 3         # cortical bone and endplates (signal void)
NUCLEUS = 4        # healthy nucleus pulposus
ANNULUS = 5        # annulus fibrosus
DEGEN_DISC = 6     # desiccated nucleus
CSF = 7
CORD = 8
MUSCLE = 9
LIGAMENT = 10      # longitudinal ligaments, ligamentum flavum, dura, fascia
ARTERY = 11        # fast flow: flow void
VEIN = 12          # slow flow: epidural plexus, basivertebral vein (enhances)
LUNG = 13
SOFT = 14          # viscera, organs, pharynx, thyroid, heart (generic soft tissue)
BOWEL = 15         # bowel loops (very heterogeneous)
KIDNEY = 16
NERVE = 17         # nerve roots, cauda equina
FAT_ISLAND = 18    # focal fatty marrow (a hemangioma mimic on T1 and T2)
MODIC1 = 19        # endplate oedema (Modic type 1)
MODIC2 = 20        # endplate fatty change (Modic type 2)
RED_MARROW = 21    # focal haematopoietic marrow (darker on T1)
LESION = 22        # hemangioma (its texture is applied by the renderer)
N_TISSUES = 23

TISSUE_NAMES = (
    "air", "fat", "marrow", "cortex", "nucleus", "annulus", "degen_disc", "csf", "cord", "muscle", "ligament",
    "artery", "vein", "lung", "soft", "bowel", "kidney", "nerve", "fat_island", "modic1", "modic2", "red_marrow",
    "lesion",
)

# Codes that form the inside of a vertebral body (lesions may only live there).
MARROW_CODES = (MARROW, FAT_ISLAND, MODIC1, MODIC2, RED_MARROW, LESION)

#             T1     T1C    T2     STIR   T1C-FS
_TABLE = {
    AIR:        (0.00, 0.00, 0.00, 0.00, 0.00),
    FAT:        (0.95, 0.95, 0.82, 0.07, 0.10),
    MARROW:     (0.62, 0.66, 0.46, 0.15, 0.22),
    CORTEX:     (0.05, 0.05, 0.04, 0.03, 0.04),
    NUCLEUS:    (0.33, 0.35, 0.80, 0.72, 0.24),
    ANNULUS:    (0.22, 0.24, 0.13, 0.12, 0.17),
    DEGEN_DISC: (0.28, 0.30, 0.24, 0.20, 0.19),
    CSF:        (0.12, 0.12, 0.98, 0.95, 0.08),
    CORD:       (0.44, 0.44, 0.42, 0.40, 0.38),
    MUSCLE:     (0.32, 0.34, 0.21, 0.22, 0.30),
    LIGAMENT:   (0.07, 0.08, 0.07, 0.06, 0.08),
    ARTERY:     (0.04, 0.08, 0.04, 0.05, 0.12),
    VEIN:       (0.30, 0.78, 0.58, 0.60, 0.76),
    LUNG:       (0.03, 0.03, 0.03, 0.04, 0.03),
    SOFT:       (0.42, 0.55, 0.36, 0.36, 0.48),
    BOWEL:      (0.40, 0.50, 0.55, 0.45, 0.42),
    KIDNEY:     (0.36, 0.72, 0.58, 0.56, 0.70),
    NERVE:      (0.34, 0.38, 0.32, 0.33, 0.36),
    FAT_ISLAND: (0.92, 0.92, 0.76, 0.07, 0.10),
    MODIC1:     (0.36, 0.66, 0.72, 0.66, 0.62),
    MODIC2:     (0.86, 0.88, 0.66, 0.10, 0.14),
    RED_MARROW: (0.45, 0.52, 0.40, 0.24, 0.30),
    LESION:     (0.92, 0.98, 0.90, 0.50, 0.16),
}
_SEQ_COLUMN = {"t1": 0, "t1c": 1, "t2": 2, "stir": 3, "t1c_fatsat": 4}

# Signal of thickened trabeculae inside a hemangioma (dark on every sequence).
TRABECULA = {"t1": 0.12, "t1c": 0.14, "t2": 0.10, "stir": 0.06, "t1c_fatsat": 0.06}

# Relative amplitude of the coarse (organ-scale) and fine (texture-scale) heterogeneity of each tissue.
COARSE_AMP = np.zeros(N_TISSUES, np.float32)
FINE_AMP = np.zeros(N_TISSUES, np.float32)
for _code, _c, _f in (
    (FAT, 0.05, 0.04), (MARROW, 0.12, 0.10), (NUCLEUS, 0.10, 0.05), (ANNULUS, 0.10, 0.08), (DEGEN_DISC, 0.15, 0.08),
    (CSF, 0.03, 0.02), (CORD, 0.04, 0.03), (MUSCLE, 0.10, 0.10), (LIGAMENT, 0.2, 0.2), (ARTERY, 0.5, 0.3),
    (VEIN, 0.2, 0.1), (LUNG, 0.5, 0.5), (SOFT, 0.15, 0.12), (BOWEL, 0.45, 0.35), (KIDNEY, 0.1, 0.08),
    (NERVE, 0.05, 0.05), (FAT_ISLAND, 0.08, 0.08), (MODIC1, 0.12, 0.10), (MODIC2, 0.10, 0.10),
    (RED_MARROW, 0.1, 0.1), (LESION, 0.08, 0.06),
):
    COARSE_AMP[_code] = _c
    FINE_AMP[_code] = _f


def base_values(sequence: str) -> np.ndarray:
    """The nominal signal of every tissue code for ``sequence`` (float32, shape (N_TISSUES,))."""
    col = _SEQ_COLUMN[sequence]
    out = np.zeros(N_TISSUES, np.float32)
    for code, row in _TABLE.items():
        out[code] = row[col]
    return out


def tissue_values(sequence: str, rng: np.random.Generator, jitter: float = 0.08) -> np.ndarray:
    """Per-image signal of every tissue: the table value times a log-normal jitter (air stays 0)."""
    vals = base_values(sequence) * np.exp(rng.normal(0.0, jitter, N_TISSUES)).astype(np.float32)
    vals[AIR] = 0.0
    return vals.astype(np.float32)
