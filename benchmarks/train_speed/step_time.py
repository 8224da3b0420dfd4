"""Seconds per training step (forward, BCE, backward, AdamW step; fp32; random data) of FCN-ResNet50 (batch 4 at
128, 256 and 96 px; four steps, the first is warm-up) and of the U-Net (base 16 and 32; batch 8 at 128 px and batch 4
at 256 px; three steps; plus one eval-mode forward of 4 x 256 px).

Run: ``.venv/bin/python benchmarks/train_speed/step_time.py``. The numbers in README "Measured numbers" came from
these loops.
"""

import time

import torch

from hemseg.train.models import build_model


def step_times(model: torch.nn.Module, size: int, batch: int, steps: int) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randn(batch, 3, size, size)
    y = (torch.rand(batch, 1, size, size) > 0.9).float()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(round(time.perf_counter() - t, 2))
    return times


def main() -> None:
    torch.manual_seed(0)
    for size in (128, 256, 96):
        m = build_model("fcn_resnet50").train()
        print("fcn_resnet50", size, 4, step_times(m, size, 4, 4), flush=True)
    for base in (16, 32):
        m = build_model("unet", base=base).train()
        for size, batch in ((128, 8), (256, 4)):
            times = step_times(m, size, batch, 3)
            with torch.no_grad():
                m.eval()
                t = time.perf_counter()
                m(torch.randn(4, 3, 256, 256))
                fe = time.perf_counter() - t
                m.train()
            print("unet base", base, size, batch, times, "eval256x4 %.2f" % fe,
                  sum(p.numel() for p in m.parameters()), flush=True)


if __name__ == "__main__":
    main()
