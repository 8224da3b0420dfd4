"""Seconds per training step of the U-Net (base 16 and 32; forward, BCE, backward, AdamW step; fp32; random data) and
one eval-mode forward of 4 x 256 px.

Run: ``.venv/bin/python benchmarks/train_speed/unet_step.py``. The numbers in README "Measured numbers" came from this
loop.
"""

import time

import torch

from hemseg.train.models import build_model

torch.manual_seed(0)
for base in [16, 32]:
    m = build_model("unet", base=base)
    m.train()
    opt = torch.optim.AdamW(m.parameters(), 1e-3)
    for size, bs in [(128, 8), (256, 4)]:
        x = torch.randn(bs, 3, size, size)
        y = (torch.rand(bs, 1, size, size) > 0.9).float()
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ts.append(time.perf_counter() - t)
        with torch.no_grad():
            m.eval()
            t = time.perf_counter()
            m(torch.randn(4, 3, 256, 256))
            fe = time.perf_counter() - t
            m.train()
        print("base", base, size, bs, [round(t, 2) for t in ts], "eval256x4 %.2f" % fe,
              sum(p.numel() for p in m.parameters()), flush=True)
