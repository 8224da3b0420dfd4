"""A contact sheet of phantom images: a few images per category, labelled, with the lesion masks outlined."""

from __future__ import annotations

import cv2
import numpy as np

TILE = 220                  # each image is fitted into a TILE x TILE box
LABEL_H = 18
OUTLINE_BGR = (40, 40, 255)
TEXT_BGR = (120, 255, 120)


def _tile(image: np.ndarray, mask: np.ndarray, caption: str) -> np.ndarray:
    h, w = image.shape
    s = TILE / max(h, w)
    nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    img = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    m = cv2.resize(mask, (nw, nh), interpolation=cv2.INTER_NEAREST)
    bgr = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    contours, _ = cv2.findContours((m > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(bgr, contours, -1, OUTLINE_BGR, 1)
    out = np.zeros((TILE + LABEL_H, TILE, 3), np.uint8)
    y0, x0 = LABEL_H + (TILE - nh) // 2, (TILE - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = bgr
    cv2.putText(out, caption, (3, LABEL_H - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.36, TEXT_BGR, 1, cv2.LINE_AA)
    return out


def contact_sheet(items: list[tuple[str, np.ndarray, np.ndarray]], columns: int = 8) -> np.ndarray:
    """BGR sheet of ``(caption, image uint8 (H, W), mask uint8 (H, W))`` tiles, ``columns`` per row."""
    if not items:
        return np.zeros((TILE + LABEL_H, TILE, 3), np.uint8)
    tiles = [_tile(img, mask, cap) for cap, img, mask in items]
    rows = []
    for i in range(0, len(tiles), columns):
        row = tiles[i:i + columns]
        row += [np.zeros_like(tiles[0])] * (columns - len(row))
        rows.append(np.hstack(row))
    sheet = np.vstack(rows)
    # thin separators between tiles
    sheet[:, ::TILE][:, 1:] = 60
    return sheet
