"""The synthetic spine-MRI phantom (numpy + OpenCV only).

Twelve categories (plane x sequence x region) of 2D spine MR images with vertebral hemangiomas and their exact
masks: anatomy painted as a tissue label map in millimetres (:mod:`~hemseg.phantom.sagittal`,
:mod:`~hemseg.phantom.axial`, :mod:`~hemseg.phantom.coronal`), hemangioma mimics (:mod:`~hemseg.phantom.marrow`),
lesions with corduroy / polka-dot texture (:mod:`~hemseg.phantom.lesions`), per-sequence tissue contrast
(:mod:`~hemseg.phantom.contrast`, :mod:`~hemseg.phantom.render`) and the acquisition chain
(:mod:`~hemseg.phantom.degrade`).

- :func:`render_case` renders one case in memory; :func:`generate` writes a dataset (see ``hemseg data synth``).
"""

from __future__ import annotations

from hemseg.phantom.case import case_rng, render_case, render_scene
from hemseg.phantom.categories import CATEGORIES, parse_category
from hemseg.phantom.generate import GENERATOR_NAME, PHANTOM_VERSION, generate, is_phantom_dir

__all__ = [
    "CATEGORIES", "GENERATOR_NAME", "PHANTOM_VERSION", "case_rng", "generate", "is_phantom_dir", "parse_category",
    "render_case", "render_scene",
]
