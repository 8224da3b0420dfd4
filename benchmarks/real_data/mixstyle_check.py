#!/usr/bin/env python
"""MixStyle on the leave-one-contrast-out (LOCO) cord check: does mixing feature statistics give FCN-ResNet50 the
unseen contrast?

MixStyle (Zhou et al., "Domain generalization with MixStyle", ICLR 2021) is a training-only layer: with probability
``p`` per batch, the channel-wise mean and standard deviation of each sample's feature maps after ResNet stages
``layer1`` and ``layer2`` (where "style", i.e. contrast and texture, lives) are replaced by a random convex mix
(weight ~ Beta(alpha, alpha)) of its own and another sample's. With batches drawn from two MRI contrasts the network
sees intermediate contrasts in feature space, which pixel-level augmentations (intensity curves, inversion, GIN;
all measured, none adopted) cannot produce. In eval mode it is the identity: the saved weights, exports and runtime
are those of a plain FCN-ResNet50.

This script installs MixStyle as forward hooks on the model ``hemseg.train.fit`` builds and then runs
``run_cord_lococ.py`` unchanged with the remaining arguments, so the only difference from a baseline run with the
same arguments is the hooks (they draw from torch's seeded generator, so the augmentation stream differs too).

Usage (the command of a committed result is stored in its JSON)::

    python benchmarks/real_data/mixstyle_check.py --mixstyle-p 0.5 --mixstyle-alpha 0.1 -- \
        --models fcn_resnet50 --recipes hemseg --steps 500 --image-size 96 --batch-size 4 --tta --seed 8 \
        --work W --out OUT.json
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


def mixstyle_hook(p: float, alpha: float, eps: float = 1e-6):
    """A forward hook that applies MixStyle to a module's output while the module is training."""
    import torch

    beta = torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha))

    def hook(module, inputs, output):
        # training steps only: not in eval mode, nor in the no-grad passes that re-estimate BatchNorm statistics
        if not (module.training and torch.is_grad_enabled()) or output.shape[0] < 2 or float(torch.rand(())) >= p:
            return output
        x = output.float()
        b = x.shape[0]
        mu = x.mean(dim=(2, 3), keepdim=True).detach()
        sig = (x.var(dim=(2, 3), keepdim=True) + eps).sqrt().detach()
        lam = beta.sample((b, 1, 1, 1)).to(x.device)
        perm = torch.randperm(b, device=x.device)
        mu_mix = lam * mu + (1 - lam) * mu[perm]
        sig_mix = lam * sig + (1 - lam) * sig[perm]
        return ((x - mu) / sig * sig_mix + mu_mix).to(output.dtype)

    return hook


def install(p: float, alpha: float, stages: tuple[str, ...]) -> None:
    """Make ``hemseg.train.fit`` build models with MixStyle hooks after ``stages`` of the backbone."""
    import hemseg.train.fit as fit

    build = fit.build_model

    def build_with_mixstyle(name, *args, **kwargs):
        model = build(name, *args, **kwargs)
        modules = dict(model.named_modules())
        found = [n for n in modules if n.rsplit(".", 1)[-1] in stages and ".backbone." in f".{n}"]
        if len(found) != len(stages):
            raise SystemExit(f"MixStyle here is for FCN-ResNet50 (backbone stages {stages}), not {name}")
        for n in found:
            modules[n].register_forward_hook(mixstyle_hook(p, alpha))
        return model

    fit.build_model = build_with_mixstyle


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mixstyle-p", type=float, default=0.5)
    ap.add_argument("--mixstyle-alpha", type=float, default=0.1)
    ap.add_argument("--stages", default="layer1,layer2")
    args = ap.parse_args(own)
    stages = tuple(s for s in args.stages.split(",") if s)
    install(args.mixstyle_p, args.mixstyle_alpha, stages)

    import run_cord_lococ

    rc = run_cord_lococ.main(rest)
    out = Path(rest[rest.index("--out") + 1]) if "--out" in rest else run_cord_lococ.DEFAULT_OUT
    result = json.loads(out.read_text())
    result["command"] = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO), *argv])
    result["mixstyle"] = {"p": args.mixstyle_p, "alpha": args.mixstyle_alpha, "stages": list(stages),
                          "where": "forward hooks on the backbone stages, training mode only"}
    out.write_text(json.dumps(result, indent=2) + "\n")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
