"""GIN, global intensity non-linear augmentation (``--gin P``): pass a training slice through a small random
convolutional network and blend the result with the slice.

The random intensity curve (``--intensity-remap``) changes each grey level alike everywhere. A sequence the model has
not seen differs in more than that: textures, edges and the relative brightness of neighbouring tissues change too,
while the anatomy, the shapes, stay. GIN (Ouyang et al., "Causality-inspired single-source domain generalization for
medical image segmentation", IEEE TMI 2022) draws such an appearance per image: four convolutions with kernel size 1
or 3 (chosen per layer), 2 intermediate channels, weights and biases from N(0, 1) and a leaky ReLU between them. The
output is blended with the slice, ``a * g(x) + (1 - a) * x`` with ``a ~ U(0, 1)``, and rescaled to the slice's
Frobenius norm so the input's energy stays what the network is used to. Random weights can invert contrast (dark
cerebrospinal fluid where the training sequences show it bright) and change local texture, but a 3x3 or 1x1 network
of four layers cannot move a boundary by more than four pixels: the mask stays valid. Its authors used it for
cross-sequence (bSSFP -> LGE) and cross-modality (CT -> MRI) transfer from one source.

It runs on the normalized float slice (after :func:`hemseg.runtime.preprocess.normalize`; only training sees it),
on one channel, and the result is replicated to every input channel as the runtime's normalization does. The random
draws come from torch's global RNG (seeded runs repeat).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: GIN's settings in Ouyang et al.: layers, intermediate channels, kernel sizes to draw from
LAYERS = 4
CHANNELS = 2
KERNELS = (1, 3)


def _random_network(x: torch.Tensor) -> torch.Tensor:
    """``x`` (1, 1, H, W) through a freshly drawn 4-layer network; returns (1, 1, H, W)."""
    h = x
    for layer in range(LAYERS):
        c_in = 1 if layer == 0 else CHANNELS
        c_out = 1 if layer == LAYERS - 1 else CHANNELS
        k = KERNELS[int(torch.randint(len(KERNELS), ()))]
        weight = torch.randn(c_out, c_in, k, k, dtype=x.dtype)
        bias = torch.randn(c_out, dtype=x.dtype)
        h = F.conv2d(h, weight, bias, padding=k // 2)
        if layer < LAYERS - 1:
            h = F.leaky_relu(h, 0.01)
    return h


def random_appearance(x: torch.Tensor, p: float) -> torch.Tensor:
    """With probability ``p``, GIN applied to a normalized slice ``x`` float ``(C, H, W)`` whose channels are copies
    of one another; returns a new tensor of the same shape and dtype (``x`` itself when not drawn)."""
    if not 0 <= p <= 1:
        raise ValueError(f"probability must be in [0, 1], got {p}")
    if p <= 0 or float(torch.rand(())) >= p:
        return x
    if x.ndim != 3:
        raise ValueError(f"random_appearance needs a (C, H, W) slice, got shape {tuple(x.shape)}")
    src = x[:1].unsqueeze(0).to(torch.float32)  # (1, 1, H, W)
    with torch.no_grad():
        g = _random_network(src)
        a = float(torch.rand(()))
        mixed = a * g + (1.0 - a) * src
        norm_in, norm_out = torch.linalg.vector_norm(src), torch.linalg.vector_norm(mixed)
        mixed = mixed * (norm_in / (norm_out + 1e-5))
    return mixed[0].expand(x.shape[0], -1, -1).to(x.dtype).contiguous()
