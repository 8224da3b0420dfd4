"""Seconds per training step (forward, BCE, backward, AdamW step; fp32; random data) of FCN-ResNet50.

Run: ``.venv/bin/python benchmarks/train_speed/fcn_step.py`` (prints size, batch and four step times; the first is
warm-up). The numbers in README "Measured numbers" came from this loop.
"""

import time

import torch

from hemseg.train.models import build_model

torch.manual_seed(0)
for size, bs in [(128, 4), (256, 4), (96, 4)]:
    m = build_model("fcn_resnet50")
    m.train()
    opt = torch.optim.AdamW(m.parameters(), 1e-3)
    x = torch.randn(bs, 3, size, size)
    y = (torch.rand(bs, 1, size, size) > 0.9).float()
    ts = []
    for _ in range(4):
        t = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ts.append(time.perf_counter() - t)
    print(size, bs, [round(t, 2) for t in ts], flush=True)
