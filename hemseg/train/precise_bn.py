"""BatchNorm statistics recomputed for the current weights before a validation ("precise BN", Wu & Johnson, 2021).

During training BatchNorm keeps running estimates of each layer's mean and variance with momentum 0.1: they mix the
statistics of the last few dozen steps' weights. In a short run at a high learning rate the weights change faster
than those estimates follow, so a validation (which uses the running estimates) judges a model that never existed:
validation Dice then jumps between good and near zero from one validation to the next, the best checkpoint is picked
on noise, and the exported model carries stale statistics. :func:`recompute_bn_stats` resets the estimates and
recomputes them as plain averages over a fixed set of training slices (no augmentation, fixed order, so a resumed run
computes the same), in train mode with gradients off. Models without BatchNorm are left alone.
"""

from __future__ import annotations

import contextlib
from typing import Iterable

import torch
from torch import nn

#: training slices used for the statistics (fewer when the training split is smaller)
PRECISE_BN_SLICES = 32


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device,
                       precision=None) -> int:
    """Reset and recompute the BatchNorm running statistics of ``model`` over ``batches`` (inputs only); returns
    the number of images seen. The model is left in eval mode."""
    layers = bn_layers(model)
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the plain mean over all batches
    was_training = model.training
    model.train()
    seen = 0
    try:
        for x in batches:
            x = x.to(device)
            if precision is not None and precision.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with precision.autocast_context(device) if precision is not None else contextlib.nullcontext():
                model(x)
            seen += int(x.shape[0])
    finally:
        for m, mom in zip(layers, momenta):
            m.momentum = mom
        model.train(was_training)
    model.eval()
    return seen
