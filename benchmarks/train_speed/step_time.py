"""Seconds per training step, fp32 vs bf16 (forward, BCE, backward, AdamW step; random data) of FCN-ResNet50 and the
U-Net, on the CPU this runs on.

``bf16`` here is what ``hemseg train --precision bf16`` does (the trainer's own
:func:`hemseg.train.device.resolve_precision`: bfloat16 autocast and channels-last), forced on whatever CPU this is:
the trainer refuses bf16 on CPUs without AMX-BF16 or AVX512-BF16, and
this measurement says whether that refusal costs anything (on such CPUs the bf16 kernels are emulated). The record
carries the CPU model and flags (``hemseg.bench.machine``; ``lscpu``'s model name and flags).

Run (idle machine; the committed numbers name their file in benchmarks/MEASUREMENTS.md)::

    .venv/bin/python benchmarks/train_speed/step_time.py --json benchmarks/results/<date>_<machine>_step_time.json

Each case runs ``--steps`` steps (default 4) after one warm-up step and reports their median. The record of an
AVX2-only CPU used ``--steps 2 --cases fcn_resnet50:64:2,fcn_resnet50:96:4,unet16:128:8`` (emulated bf16 is slow).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO, REPO / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from quickstart_record import machine_now, write_record  # noqa: E402

from hemseg.runtime.cpu_features import BF16_FLAGS  # noqa: E402
from hemseg.train.device import Precision, resolve_precision  # noqa: E402
from hemseg.train.models import build_model  # noqa: E402

#: model:size:batch cases (``unet16``: U-Net base 16)
CASES = "fcn_resnet50:96:4,fcn_resnet50:128:4,fcn_resnet50:256:4,unet16:128:8,unet16:256:4"


def parse_cases(text: str) -> list[tuple[str, int | None, int, int]]:
    """``"fcn_resnet50:96:4,unet16:128:8"`` -> ``[(model, unet_base, size, batch), ...]``."""
    out = []
    for item in text.split(","):
        name, size, batch = item.split(":")
        base = int(name[4:]) if name.startswith("unet") and name[4:] else None
        out.append(("unet" if base else name, base, int(size), int(batch)))
    return out


def forced_precision(name: str) -> Precision:
    """The trainer's CPU precision ``name``, resolved as if the CPU computed bfloat16 natively (so bf16 is not
    refused here: this script measures what the refusal avoids)."""
    return resolve_precision(name, torch.device("cpu"), flags=frozenset(BF16_FLAGS))


def step_times(model: torch.nn.Module, size: int, batch: int, steps: int, precision: Precision) -> list[float]:
    """Wall seconds of ``steps`` + 1 training steps (the first is warm-up) at ``size`` px, batch ``batch``."""
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randn(batch, 3, size, size)
    y = (torch.rand(batch, 1, size, size) > 0.9).float()
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        with precision.autocast_context(x.device):
            out = model(x)
            out = out["out"] if isinstance(out, dict) else out
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return times[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the record here")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--cases", default=CASES, help="model:size:batch, comma-separated [%(default)s]; emulated bf16 "
                    "(CPUs without AMX-BF16 / AVX512-BF16) is about 10x slower than fp32: keep it small there")
    a = ap.parse_args()
    rows = []
    for name, base, size, batch in parse_cases(a.cases):
        row = {"model": name, "unet_base": base, "image_size": size, "batch": batch}
        for prec in a.precisions.split(","):
            torch.manual_seed(0)
            model = build_model(name, **({"base": base} if base else {})).train()
            times = step_times(model, size, batch, a.steps, forced_precision(prec))
            row[f"{prec}_s_per_step"] = round(statistics.median(times), 3)
        if "fp32_s_per_step" in row and "bf16_s_per_step" in row:
            row["bf16_speedup"] = round(row["fp32_s_per_step"] / row["bf16_s_per_step"], 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if a.json:
        write_record(a.json, {
            "experiment": "seconds per training step, fp32 vs bf16 autocast + channels-last (forced), CPU",
            "command": " ".join([".venv/bin/python", "benchmarks/train_speed/step_time.py", *sys.argv[1:]]),
            "machine": machine_now(), "torch_threads": torch.get_num_threads(), "steps_timed": a.steps, "rows": rows})


if __name__ == "__main__":
    main()
