#!/usr/bin/env python
"""IBN-Net on the leave-one-contrast-out (LOCO) cord check: does instance normalization in the shallow stages give
FCN-ResNet50 the unseen contrast?

IBN-Net (Pan, Luo, Shi and Tang, "Two at once: enhancing learning and generalization capacities via IBN-Net",
ECCV 2018) replaces, in every bottleneck of ResNet stages ``layer1``-``layer3``, the first BatchNorm by an
"IBN-a" layer: half of its channels are instance-normalized (each image's own mean and variance, learned affine),
the other half batch-normalized. Instance normalization removes per-image feature statistics (contrast, brightness)
in the stages where appearance lives, at training *and* inference; the batch-normalized half keeps the content
discrimination. Its authors report better cross-domain segmentation (synthetic -> real street scenes) without
target data. Unlike the pixel-level augmentations measured before (intensity curves, inversion, GIN) and MixStyle
(feature statistics mixed at training only), it changes the network itself, so the exported graph would change too
(an InstanceNormalization per bottleneck of layer1-3, 13 in all).

This script makes ``hemseg.train.models.FCNResNet50`` build IBN-a bottlenecks (for training, checkpoint loading and
evaluation alike) and runs ``run_cord_lococ.py`` unchanged with the remaining arguments, so the only difference
from a baseline run with the same arguments is the normalization layers (the parameter count grows by nothing:
the instance norms' affine parameters replace half of each BatchNorm's).

Usage (the command of a committed result is stored in its JSON)::

    python benchmarks/real_data/ibn_check.py -- --models fcn_resnet50 --recipes hemseg --steps 500 \
        --image-size 96 --batch-size 4 --tta --seed 8 --work W --out OUT.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for path in (REPO, Path(__file__).resolve().parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def ibn_layer(channels: int, ratio: float):
    """IBN-a: the first ``round(channels * ratio)`` channels instance-normalized, the rest batch-normalized."""
    import torch
    from torch import nn

    class IBN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.half = int(round(channels * ratio))
            self.IN = nn.InstanceNorm2d(self.half, affine=True)
            self.BN = nn.BatchNorm2d(channels - self.half)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
            return torch.cat([self.IN(a.contiguous()), self.BN(b.contiguous())], dim=1)

    return IBN()


def install(ratio: float, stages: tuple[str, ...]) -> None:
    """Make every FCN-ResNet50 built from now on use IBN-a bottlenecks in ``stages``."""
    import hemseg.train.models as models

    original = models.FCNResNet50.__init__

    def init_with_ibn(self, *args, **kwargs):
        original(self, *args, **kwargs)
        n = 0
        for stage in stages:
            for block in getattr(self.net.backbone, stage):
                block.bn1 = ibn_layer(block.bn1.num_features, ratio)
                n += 1
        self._ibn_blocks = n

    models.FCNResNet50.__init__ = init_with_ibn


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.5, help="share of each first BatchNorm's channels that IN takes")
    ap.add_argument("--stages", default="layer1,layer2,layer3")
    args = ap.parse_args(own)
    stages = tuple(s for s in args.stages.split(",") if s)
    install(args.ratio, stages)

    import run_cord_lococ

    rc = run_cord_lococ.main(rest)
    out = Path(rest[rest.index("--out") + 1]) if "--out" in rest else run_cord_lococ.DEFAULT_OUT
    result = json.loads(out.read_text())
    result["command"] = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO), *argv])
    result["ibn"] = {"ratio": args.ratio, "stages": list(stages),
                     "where": "the first BatchNorm of every bottleneck in these stages, training and inference"}
    out.write_text(json.dumps(result, indent=2) + "\n")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
