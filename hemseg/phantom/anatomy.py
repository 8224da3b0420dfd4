"""Dispatch to the plane-specific anatomy painters."""

from __future__ import annotations

import numpy as np

from hemseg.phantom.canvas import Canvas


def build_anatomy(rng: np.random.Generator, plane: str, region: str, height: int,
                  width: int) -> tuple[Canvas, tuple[float, float] | None]:
    """Paint the anatomy of ``plane``/``region``; returns the canvas and the world direction of the spine coil."""
    if plane == "sagittal":
        from hemseg.phantom.sagittal import build_sagittal

        canvas, curve = build_sagittal(rng, region, height, width)
        return canvas, (1.0, 0.0)
    if plane == "axial":
        from hemseg.phantom.axial import build_axial

        return build_axial(rng, region, height, width), (0.0, 1.0)
    from hemseg.phantom.coronal import build_coronal

    return build_coronal(rng, region, height, width), None
