#!/usr/bin/env python
"""The learning test's runs (``tests/test_learning.py``) over several seeds and torch thread counts: how much
one run's held-out pooled Dice depends on the seed and on the CPU's float summation order.

    .venv/bin/python benchmarks/learning_test_seeds.py --threads 2,1 --seeds 0,1,2 --steps 300 [--n-train 40]
    .venv/bin/python benchmarks/learning_test_seeds.py --model fcn_resnet50 --threads 1 --steps 100 \
        [--zero-init-residual]

Prints one line per run; the runs go under ``--work`` (default a new temporary folder).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import torch  # noqa: E402
from blobs import make_blobs, train_and_eval  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="2")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--n-train", type=int, default=40)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--model", choices=("unet", "fcn_resnet50"), default="unet")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the learning test's (U-Net 8, FCN 4)")
    ap.add_argument("--zero-init-residual", action="store_true", help="hemseg train --zero-init-residual (FCN)")
    args = ap.parse_args()
    root = args.work or Path(tempfile.mkdtemp(prefix="hemseg-learning-seeds-"))
    train = make_blobs(root / "train", args.n_train, 64, seed=0)
    heldout = make_blobs(root / "heldout", 16, 64, seed=1)
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for seed in (int(s) for s in args.seeds.split(",")):
            batch = args.batch_size or (8 if args.model == "unet" else 4)
            extra = {"zero_init_residual": True} if args.zero_init_residual else {}
            summary = train_and_eval(train, heldout, root / f"threads{threads}_seed{seed}", args.model, args.steps,
                                     batch, seed, **extra)
            print(f"{args.model}{' zero-init residual' if extra else ''} threads {threads} seed {seed} steps "
                  f"{args.steps} n_train {args.n_train}: held-out pooled Dice "
                  f"{summary['dice_global']:.3f}, false components per blob-free image "
                  f"{summary['lesions']['fp_components_per_lesion_free_slice']:.2f}", flush=True)


if __name__ == "__main__":
    main()
