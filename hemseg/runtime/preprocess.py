"""The one preprocessing definition of hemseg (CPU reference, OpenCV).

The paper's chain, in this order, on an 8-bit single-channel image:

1. ``resize``: to ``size`` x ``size`` (``cv2.INTER_LINEAR`` for images; masks use ``cv2.INTER_NEAREST``).
2. ``clahe``: ``cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))``.
3. ``nlm``: ``cv2.fastNlMeansDenoising(h=10, templateWindowSize=7, searchWindowSize=21)``.
4. ``bilateral``: ``cv2.bilateralFilter(d=9, sigmaColor=75, sigmaSpace=75)``.
5. ``normalize``: ``x / 255``, then ``(x - 0.5) / 0.5``, replicated to three channels -> float32 (3, size, size).

Steps 2-4 can each be switched off (the ablation needs it) and every parameter can be overridden. The spec is a
frozen, JSON-serializable dataclass stored in every checkpoint and exported model, and both training
(``hemseg.train``) and deployment (``hemseg.runtime``) call :func:`preprocess` from here, so they cannot drift.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Iterable

import cv2
import numpy as np

from hemseg.errors import UsageError

#: Steps that can be switched off, in the order they run.
OPTIONAL_STEPS = ("clahe", "nlm", "bilateral")

SPEC_VERSION = 1


#: the largest network input side: 16x the paper's 256 px, above any MR matrix in clinical use; one float32 slice of
#: it is 64 MiB per channel, and a size typed with a digit too many (or a corrupt model file) must fail in one line
#: instead of exhausting the machine's memory (``hemseg train --image-size 100000`` was OOM-killed)
MAX_SIZE = 4096


@dataclass(frozen=True)
class PreprocessSpec:
    """Parameters of the preprocessing chain. Defaults are the paper's."""

    size: int = 256
    clahe: bool = True
    clahe_clip: float = 2.0
    clahe_tiles: int = 8
    nlm: bool = True
    nlm_h: float = 10.0
    nlm_template: int = 7
    nlm_search: int = 21
    bilateral: bool = True
    bilateral_d: int = 9
    bilateral_sigma_color: float = 75.0
    bilateral_sigma_space: float = 75.0
    mean: float = 0.5
    std: float = 0.5
    channels: int = 3

    def __post_init__(self) -> None:
        for name in ("size", "clahe_tiles", "nlm_template", "nlm_search", "bilateral_d", "channels"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise UsageError(f"preprocessing {name} must be a whole number, got {value!r}")
        for name in ("clahe", "nlm", "bilateral"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise UsageError(f"preprocessing {name} must be true or false, got {getattr(self, name)!r}")
        for name in ("clahe_clip", "nlm_h", "bilateral_sigma_color", "bilateral_sigma_space", "mean", "std"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)) \
                    or not np.isfinite(value):
                raise UsageError(f"preprocessing {name} must be a finite number, got {value!r}")
        if int(self.size) < 8:
            raise UsageError(f"preprocessing size must be >= 8 px, got {self.size}")
        if int(self.size) > MAX_SIZE:
            raise UsageError(f"preprocessing size must be <= {MAX_SIZE} px, got {self.size}")
        if self.clahe_tiles < 1 or self.clahe_clip <= 0:
            raise UsageError("CLAHE needs clip > 0 and at least 1 tile")
        if self.nlm_template % 2 == 0 or self.nlm_search % 2 == 0:
            raise UsageError("non-local means template and search windows must be odd")
        if self.std <= 0:
            raise UsageError(f"normalization std must be > 0, got {self.std}")
        if self.channels not in (1, 3):
            raise UsageError(f"channels must be 1 or 3, got {self.channels}")

    # -- serialization -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["version"] = SPEC_VERSION
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessSpec":
        d = dict(d)
        version = d.pop("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise UsageError(f"preprocessing spec version {version} is not supported (this hemseg reads {SPEC_VERSION})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UsageError(f"unknown preprocessing spec keys: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "PreprocessSpec":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"preprocessing spec is not valid JSON: {exc}") from None
        if not isinstance(d, dict):
            raise UsageError("preprocessing spec JSON must be an object")
        return cls.from_dict(d)

    # -- variants ------------------------------------------------------------------------------------------------
    def replace(self, **changes: Any) -> "PreprocessSpec":
        return dataclasses.replace(self, **changes)

    def without(self, steps: Iterable[str]) -> "PreprocessSpec":
        """The same spec with the named optional steps switched off (``"all"`` switches every one off)."""
        steps = list(steps)
        if "all" in steps:
            steps = list(OPTIONAL_STEPS)
        bad = [s for s in steps if s not in OPTIONAL_STEPS]
        if bad:
            raise UsageError(f"unknown preprocessing step(s) {bad}; choose from {list(OPTIONAL_STEPS)}")
        return dataclasses.replace(self, **{s: False for s in steps})

    @property
    def enabled_steps(self) -> tuple[str, ...]:
        return ("resize",) + tuple(s for s in OPTIONAL_STEPS if getattr(self, s)) + ("normalize",)


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 2:
        raise UsageError(f"preprocessing expects a 2D image, got shape {getattr(image, 'shape', None)}")
    if image.dtype != np.uint8:
        raise UsageError(f"preprocessing expects uint8 (map intensities with to_uint8 first), got {image.dtype}")
    if min(image.shape) < 2:
        raise UsageError(f"image of {image.shape[1]}x{image.shape[0]} px is too small to segment")
    return image


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an image to ``size`` x ``size`` with bilinear interpolation (cv2.INTER_LINEAR)."""
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a mask with nearest-neighbour interpolation. ``size`` is an int or ``(height, width)``."""
    h, w = (size, size) if isinstance(size, int) else size
    return cv2.resize(mask.astype(np.uint8), (int(w), int(h)), interpolation=cv2.INTER_NEAREST)


def filter_uint8(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Steps 1-4: resize, CLAHE, NLM, bilateral. Returns a uint8 (size, size) image."""
    out = resize_image(_check_image(image), spec.size)
    if spec.clahe:
        clahe = cv2.createCLAHE(clipLimit=float(spec.clahe_clip), tileGridSize=(spec.clahe_tiles, spec.clahe_tiles))
        out = clahe.apply(out)
    if spec.nlm:
        out = cv2.fastNlMeansDenoising(out, None, h=float(spec.nlm_h), templateWindowSize=int(spec.nlm_template),
                                       searchWindowSize=int(spec.nlm_search))
    if spec.bilateral:
        out = cv2.bilateralFilter(out, int(spec.bilateral_d), float(spec.bilateral_sigma_color),
                                  float(spec.bilateral_sigma_space))
    return out


def normalize(filtered: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Step 5: uint8 (H, W) -> float32 (channels, H, W) with ``(x / 255 - mean) / std``."""
    x = (filtered.astype(np.float32) * np.float32(1.0 / 255.0) - np.float32(spec.mean)) / np.float32(spec.std)
    return np.ascontiguousarray(np.broadcast_to(x, (spec.channels,) + x.shape))


def preprocess(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The whole chain: uint8 (H, W) -> float32 (channels, size, size), ready for the network."""
    return normalize(filter_uint8(image, spec), spec)


def preprocess_batch(images: Iterable[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Preprocess several uint8 images into one float32 (N, channels, size, size) batch."""
    arrays = [preprocess(im, spec) for im in images]
    if not arrays:
        return np.zeros((0, spec.channels, spec.size, spec.size), np.float32)
    return np.stack(arrays)
