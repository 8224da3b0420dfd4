"""The torch Dataset of training: filtered slices (see :mod:`hemseg.train.slices`) -> augmentation -> normalize.

Per item, in this order:

1. the cached filtered uint8 slice and its mask (computed once per run by :func:`prepare_items`, i.e. the runtime's
   :func:`~hemseg.runtime.preprocess.filter_uint8` and :func:`~hemseg.runtime.preprocess.resize_mask`);
2. the paired augmentation (training split only, :mod:`hemseg.train.transforms`): the optional foreground crop
   (``crop`` = its probability), then the geometric and intensity transforms; the image stays uint8;
   then, with ``patch``, a ``patch`` x ``patch`` window (:func:`~hemseg.train.transforms.random_patch`), so a step
   costs what a ``patch`` px slice costs while lesions keep their scale. The window is placed on a lesion when the
   index comes as ``(i, True)`` (a foreground pick of :class:`~hemseg.train.sampling.ForegroundBatches`), at random
   for ``(i, False)`` or a plain ``i``;
3. :func:`hemseg.runtime.preprocess.normalize`, the runtime's own normalization;
4. with ``gin`` > 0 (training only), with that probability the GIN appearance of :mod:`hemseg.train.appearance`.

``__getitem__`` returns ``(x, y)``: ``x`` float32 ``(channels, S, S)``, ``y`` float32 ``(1, S, S)`` in ``{0, 1}``.
Without augmentation, ``x`` equals ``hemseg.runtime.preprocess.preprocess(image, spec)`` bit for bit.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

from hemseg.runtime.preprocess import PreprocessSpec, normalize
from hemseg.train.appearance import random_appearance
from hemseg.train.slices import SliceItem, prepare_items
from hemseg.train.transforms import apply_pair, foreground_crop, random_patch

__all__ = ["SliceDataset", "SliceItem", "prepare_items"]


class SliceDataset(Dataset):
    """2D slices as separate items, with an optional paired transform (training only)."""

    def __init__(self, items: Sequence[SliceItem], spec: PreprocessSpec, transform=None, crop: float = 0.0,
                 patch: int | None = None, gin: float = 0.0) -> None:
        if not 0 <= gin <= 1:
            raise ValueError(f"gin is a probability in [0, 1], got {gin}")
        self.items = list(items)
        self.gin = float(gin)
        self.spec = spec
        self.transform = transform
        self.crop = float(crop)
        self.patch = int(patch) if patch else None

    @property
    def has_foreground(self) -> list[bool]:
        """Per item: whether its mask shows a lesion (for foreground-aware sampling)."""
        return [bool(it.mask.any()) for it in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int | tuple[int, bool]) -> tuple[torch.Tensor, torch.Tensor]:
        index, on_lesion = index if isinstance(index, tuple) else (index, False)
        item = self.items[index]
        if self.transform is not None or self.crop > 0 or self.patch:
            image_t, mask_t = foreground_crop(torch.from_numpy(item.image), torch.from_numpy(item.mask), self.crop)
            image_t, mask_t = apply_pair(self.transform, image_t, mask_t)
            if self.patch:
                image_t, mask_t = random_patch(image_t, mask_t, self.patch, on_lesion)
            image, mask = image_t.numpy(), mask_t
        else:
            image, mask = item.image, torch.from_numpy(item.mask)
        x = torch.from_numpy(normalize(image, self.spec))
        if self.gin > 0:
            x = random_appearance(x, self.gin)
        y = mask.to(torch.float32).unsqueeze(0)
        return x, y
