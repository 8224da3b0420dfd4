"""Exponential moving average of a model's weights (``--ema``): ``avg = d * avg + (1 - d) * weights`` after each
optimizer step, with ``d = min(decay, (1 + n) / (10 + n))`` at the n-th update so the first updates are not
dominated by the random initialization. BatchNorm running statistics (buffers) are copied, not averaged.
Validation, the best checkpoint and the export then use the averaged weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    def __init__(self, model: nn.Module, decay: float = 0.99) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for avg, cur in zip(self.model.parameters(), model.parameters()):
            avg.mul_(d).add_(cur.detach(), alpha=1 - d)
        for avg, cur in zip(self.model.buffers(), model.buffers()):
            avg.copy_(cur)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "weights": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        self.model.load_state_dict(state["weights"])
