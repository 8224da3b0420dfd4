"""Which training slices make up each batch: the batch samplers of the two recipes (see :mod:`hemseg.train.recipes`).

Both yield lists of dataset indices, one list per optimizer step, for ``steps`` steps, drawing all randomness from
the ``torch.Generator`` they are given, so a run is repeatable and a resumed run (the generator's state restored)
continues with the same batches.

- :class:`EpochBatches` (``paper``): shuffled passes over the training split, the last batch of a pass possibly
  smaller, like ``DataLoader(shuffle=True)``.
- :class:`ForegroundBatches` (``hemseg``): batches drawn with replacement; ``ceil(share * batch)`` indices come from
  slices with foreground (when there are any), the others from all slices, in shuffled order (nnU-Net's
  foreground oversampling). With ``mark=True`` (patch training) each entry is ``(index, forced)``, ``forced`` True
  for the foreground picks: only their patches are placed on a lesion (:class:`hemseg.train.data.SliceDataset`),
  the others are placed at random, as in nnU-Net; otherwise most patches would show a lesion, a prior that whole
  slices at inference do not have (on the phantom the two placements measured alike, one run each).
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class EpochBatches(Sampler[list[int]]):
    def __init__(self, n_items: int, batch_size: int, steps: int, generator: torch.Generator,
                 start_in_epoch: int = 0) -> None:
        self.n, self.batch, self.steps, self.gen = int(n_items), int(batch_size), int(steps), generator
        self.start = int(start_in_epoch)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        done = 0
        while done < self.steps:
            perm = torch.randperm(self.n, generator=self.gen).tolist()
            for i in range(0, self.n, self.batch):
                if done >= self.steps:
                    return
                yield perm[i:i + self.batch]
                done += 1


def batches_per_epoch(n_items: int, batch_size: int) -> int:
    return max(1, math.ceil(n_items / batch_size))


class ForegroundBatches(Sampler[list[int]]):
    def __init__(self, has_foreground: Sequence[bool], batch_size: int, share: float, steps: int,
                 generator: torch.Generator, mark: bool = False) -> None:
        self.fg = [i for i, f in enumerate(has_foreground) if f]
        self.mark = bool(mark)
        self.n, self.batch, self.steps, self.gen = len(has_foreground), int(batch_size), int(steps), generator
        self.n_fg = min(self.batch, math.ceil(float(share) * self.batch)) if self.fg else 0

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        fg = torch.tensor(self.fg, dtype=torch.int64)
        for _ in range(self.steps):
            picks = fg[torch.randint(len(fg), (self.n_fg,), generator=self.gen)] if self.n_fg else \
                torch.empty(0, dtype=torch.int64)
            rest = torch.randint(self.n, (self.batch - self.n_fg,), generator=self.gen)
            batch = torch.cat([picks, rest])
            order = torch.randperm(len(batch), generator=self.gen)
            if self.mark:
                forced = torch.arange(len(batch)) < len(picks)
                yield list(zip(batch[order].tolist(), forced[order].tolist()))
            else:
                yield batch[order].tolist()
