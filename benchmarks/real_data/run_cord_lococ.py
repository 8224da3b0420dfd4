#!/usr/bin/env python
"""Leave-one-contrast-out (LOCO) check of the hemseg pipeline on real MRI: spinal-cord segmentation on
spine-generic subject unf01 (T1w, T2w, T2star; axial, 131 x 141 x 16 voxels, 1 mm; manual cord masks).

For each contrast C (a "fold"): train on the two other volumes, evaluate on C, which no model saw or was selected on.

- **Training data** (``--train-units slices``, the default): the two training volumes are cut into 2D slices, written
  as uint8 PNG pairs in category folders ``<contrast>/images|masks`` (the 8-bit mapping is
  :func:`hemseg.runtime.io.to_uint8` of the *whole volume*, exactly what ``load_pair`` does for the test volume, so
  train and test intensities are mapped alike). ``run_training`` then draws its validation slices (``--val-fraction``,
  stratified by contrast) from both training volumes: the model is selected and its threshold tuned on slices of the
  training contrasts (neighbouring slices of the training slices, hence optimistic), never on C.
  With ``--train-units volumes`` the two volumes are symlinked as they are; ``run_training`` splits by *sample*, so one
  training volume trains and the other validates.
- **Test data**: ``images/<name>.nii.gz`` and ``masks/<name>.nii.gz`` symlinks to the original files, evaluated slice
  by slice at native resolution by :func:`hemseg.train.evaluate.evaluate_checkpoint` (the ``hemseg eval`` code).
- **Baselines on the same test volume**: the K-Means baseline (``hemseg baseline kmeans``: brightest of k=4 intensity
  clusters, raw and morphologically cleaned) and a *location prior* control: the pixel-wise mean of all training
  masks thresholded at 0.5, the same mask for every test slice. The three volumes are co-registered and their manual
  masks are voxel-for-voxel identical, so the cord sits at the same pixels in the held-out contrast: the location prior
  measures how much of a model's Dice position alone can explain.

Results: ``--out`` JSON (default ``benchmarks/results/real_cord_lococ_cpu.json``) with date, command, machine,
settings, per-fold Dice/IoU/HD95 (per-slice means on the 16 test slices) and the means over folds; a Markdown table
on stdout. Runs, evaluations and the prepared data go under ``--work``; a finished run there is reused (the trainer's
``resume``, which refuses other settings), so a rerun after a crash only redoes what is missing.

Example (the command used for the committed result is stored in the JSON's ``command``)::

    python benchmarks/real_data/run_cord_lococ.py --steps 300 --image-size 64 --models fcn_resnet50,unet \
        --recipes paper,hemseg
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, str(REPO))

log = logging.getLogger("cord_lococ")

CONTRASTS = ("T1w", "T2w", "T2star")
SUBJECT = "sub-unf01"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "spine-generic-sub-unf01"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "real_cord_lococ_cpu.json"
SUMMARY_KEYS = ("dice", "dice_std", "iou", "iou_std", "precision", "recall", "hd95", "hd95_std", "n_images",
                "n_pred_empty")


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        if dst.is_symlink() and Path(os.readlink(dst)) == src:
            return
        dst.unlink()
    os.symlink(src, dst)


def source_files(data: Path, contrast: str) -> tuple[Path, Path]:
    image = data / f"{SUBJECT}_{contrast}.nii.gz"
    mask = data / f"{SUBJECT}_{contrast}_seg-manual.nii.gz"
    for p in (image, mask):
        if not p.is_file():
            raise SystemExit(f"run_cord_lococ: error: {p}: missing (expected the spine-generic sub-unf01 files)")
    return image, mask


def prepare_test(data: Path, root: Path, contrast: str) -> Path:
    """``root/test_<C>/images|masks/<SUBJECT>_<C>.nii.gz``: symlinks to the original volume and mask."""
    image, mask = source_files(data, contrast)
    out = root / f"test_{contrast}"
    _link(image.resolve(), out / "images" / image.name)
    _link(mask.resolve(), out / "masks" / image.name)
    return out


def prepare_train(data: Path, root: Path, held_out: str, units: str) -> Path:
    """The training dataset of one fold, in category folders (category = contrast); see the module docstring."""
    from hemseg.runtime.io import read_image, read_mask, to_uint8, write_mask_png, write_png

    out = root / f"train_wo_{held_out}_{units}"
    for contrast in CONTRASTS:
        if contrast == held_out:
            continue
        image, mask = source_files(data, contrast)
        if units == "volumes":
            _link(image.resolve(), out / contrast / "images" / image.name)
            _link(mask.resolve(), out / contrast / "masks" / image.name)
            continue
        done = out / contrast / ".complete"
        if done.is_file():
            continue
        vol = read_image(image)
        labels = read_mask(mask, image=vol)
        u8 = to_uint8(vol.data, image)
        for z in range(u8.shape[0]):
            stem = f"{SUBJECT}_{contrast}_z{z:02d}"
            write_png(out / contrast / "images" / f"{stem}.png", u8[z])
            write_mask_png(out / contrast / "masks" / f"{stem}.png", labels[z])
        done.write_text(f"{u8.shape[0]} slices of {image}\n")
    return out


def train_masks(data: Path, held_out: str) -> np.ndarray:
    """Every slice mask of the training contrasts, (N, H, W) uint8 {0,1}."""
    from hemseg.runtime.io import read_image, read_mask

    masks = []
    for contrast in CONTRASTS:
        if contrast != held_out:
            image, mask = source_files(data, contrast)
            masks.append(read_mask(mask, image=read_image(image)))
    return np.concatenate(masks)


def location_prior(data: Path, held_out: str) -> dict[str, Any]:
    """The control: mean training mask >= 0.5 as the prediction for every test slice; per-slice mean metrics."""
    from hemseg.runtime.dataset import discover, load_pair
    from hemseg.runtime.metrics import aggregate, compute_metrics

    prior = (train_masks(data, held_out).astype(np.float64).mean(axis=0) >= 0.5).astype(np.uint8)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        test = prepare_test(data, Path(tmp), held_out)
        for sample in discover(test).samples:
            _, gt = load_pair(sample)
            records += [compute_metrics(prior, gt[z]) for z in range(gt.shape[0])]
    agg = aggregate(records, keys=("dice", "iou", "precision", "recall", "hd95"))
    return {k: agg[k] for k in SUMMARY_KEYS if k in agg} | {"prior_pixels": int(prior.sum())}


def fov_tag(args: argparse.Namespace) -> tuple[str, str]:
    """The run-folder suffix and the method-label part of ``--fov`` / ``--fov-shape``; empty when neither is given
    (the recipe's own). Named by the shape trained (``--fov-shape``, else the default band), so that ``--fov 0.5``
    alone (bands since the default changed) never reuses a box run folder of that name from before, and
    ``--fov-shape box`` alone is not taken for a default run; box keeps the older unsuffixed names."""
    if args.fov is None and args.fov_shape is None:
        return "", ""
    from hemseg.train.transforms import AugmentSpec

    p = "recipe" if args.fov is None else f"{args.fov:g}"
    band = (args.fov_shape or AugmentSpec.fov_shape) == "band" and args.fov != 0
    return f"_fov{p}" + ("_band" if band else ""), f", FOV {p}" + (" band" if band else "")


def run_fold_model(train_dir: Path, test_dir: Path, work: Path, held_out: str, model: str, recipe: str,
                   args: argparse.Namespace) -> dict[str, Any]:
    from hemseg.train.evaluate import evaluate_checkpoint
    from hemseg.train.models import build_model, count_parameters
    from hemseg.train.trainer import run_training

    name = f"{model}_{recipe}" + "".join(f"_no-{step}" for step in args.skip)
    if args.intensity_remap:
        name += f"_remap{args.intensity_remap:g}"
    if args.invert:
        name += f"_invert{args.invert:g}"
    if args.lowres:
        name += f"_lowres{args.lowres:g}"
    if args.aux_loss and model == "fcn_resnet50":
        name += f"_aux{args.aux_loss:g}"
    if args.patch:
        name += f"_patch{args.patch}"
    if args.gin:
        name += f"_gin{args.gin:g}"
    name += fov_tag(args)[0]
    if args.ema:
        name += f"_ema{args.ema_decay:g}"
    if args.zero_init_residual is not None and model == "fcn_resnet50":
        name += "_zeroinit" if args.zero_init_residual else "_nozeroinit"
    run_dir = work / "runs" / name / f"heldout_{held_out}"
    options = dict(model=model, recipe=recipe, steps=args.steps, epochs=args.epochs, batch_size=args.batch_size,
                   image_size=args.image_size, val_fraction=args.val_fraction, device=args.device, seed=args.seed,
                   weights=args.weights, unet_base=args.unet_base, lr=args.lr, dice_loss=args.dice_loss,
                   pos_weight=args.pos_weight, precision=args.precision, skip=tuple(args.skip), progress=False,
                   intensity_remap=args.intensity_remap, invert=args.invert, lowres=args.lowres, patch=args.patch, ema=args.ema, ema_decay=args.ema_decay,
                   gin=args.gin, fov=args.fov, fov_shape=args.fov_shape,
                   aux_loss=args.aux_loss if model == "fcn_resnet50" else None,
                   zero_init_residual=args.zero_init_residual if model == "fcn_resnet50" else None)
    finished_before = (run_dir / "metrics.json").is_file()
    t0 = time.perf_counter()
    metrics = run_training(train_dir, run_dir, resume=(run_dir / "config.json").is_file(), **options)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = {}
    variants = [("raw", False, False), ("postprocessed", True, False)] + ([("tta", False, True)] if args.tta else [])
    for variant, post, tta in variants:
        eval_dir = work / "eval" / name / f"heldout_{held_out}" / variant
        summary = evaluate_checkpoint(run_dir / "best.pt", test_dir, eval_dir, postprocess=post, device=args.device,
                                      batch_size=args.batch_size or 8, progress=False, tta=tta)
        results[variant] = {k: summary.get(k) for k in SUMMARY_KEYS + ("dice_global",)}
    # sanity check of the pipeline: the same evaluation on the training volumes (seen data, hence optimistic); a good
    # Dice there and a poor one on the held-out contrast means the model does not transfer, not that eval is broken
    seen = {}
    for contrast in CONTRASTS:
        if contrast != held_out:
            seen_dir = prepare_test(args.data, test_dir.parent, contrast)
            summary = evaluate_checkpoint(run_dir / "best.pt", seen_dir,
                                          work / "eval" / name / f"heldout_{held_out}" / f"seen_{contrast}",
                                          device=args.device, batch_size=args.batch_size or 8, progress=False)
            seen[contrast] = {k: summary.get(k) for k in ("dice", "iou", "n_pred_empty")}
    eval_s = time.perf_counter() - t0
    kwargs = {} if model == "fcn_resnet50" else {"base": args.unet_base}
    return {
        "test": results["raw"], "test_postprocessed": results["postprocessed"], "test_flip_tta": results.get("tta"),
        "seen_training_volumes_optimistic": seen,
        "val_dice_at_0.5": metrics.get("dice"), "val_dice_tuned": metrics.get("val_dice_tuned"),
        "best_epoch": metrics.get("epoch"), "epochs_trained": metrics.get("epochs_trained"),
        "recipe": recipe, "steps": metrics.get("steps"), "best_step": metrics.get("step"),
        "seconds_per_step": metrics.get("seconds_per_step"), "amp": metrics.get("amp"),
        "threshold": metrics.get("threshold"), "init": metrics.get("init"),
        "n_train_slices": metrics.get("n_train_slices"), "n_val_slices": metrics.get("n_val_slices"),
        "train_wall_s": metrics.get("wall_time_s"), "train_call_s": train_s, "eval_s": eval_s,
        "reused_finished_run": finished_before,
        "params": count_parameters(build_model(model, **kwargs)), "run_dir": str(run_dir),
    }


def _fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    methods = result["methods"]
    head = "| method | " + " | ".join(f"held-out {f['held_out']} Dice / IoU / HD95" for f in result["folds"]) + \
        " | mean Dice | mean IoU | mean HD95 (px) |"
    lines = [head, "|" + "---|" * (len(result["folds"]) + 4)]
    for m in methods:
        cells = []
        for f in result["folds"]:
            r = f["methods"][m]
            cells.append(f"{_fmt(r['dice'])} / {_fmt(r['iou'])} / {_fmt(r['hd95'], 2)}")
        mean = result["mean"][m]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {_fmt(mean['dice'])} | {_fmt(mean['iou'])} | "
                     f"{_fmt(mean['hd95'], 2)} |")
    lines += ["", "Sanity check (optimistic, not a result): Dice of the same models on their own training volumes",
              "", "| model | held-out | Dice on training volumes |", "|---|---|---|"]
    for f in result["folds"]:
        for m, r in f["models"].items():
            seen = ", ".join(f"{c} {_fmt(v['dice'])}" for c, v in r["seen_training_volumes_optimistic"].items())
            lines.append(f"| {m} | {f['held_out']} | {seen} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "hemseg-cord-lococ",
                   help="runs, evaluations and prepared datasets (reused when rerun with the same settings)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--models", default="fcn_resnet50", help="comma-separated: fcn_resnet50,unet,attention_unet")
    p.add_argument("--recipes", default="hemseg", help="comma-separated trainer recipes: hemseg,paper")
    p.add_argument("--steps", type=int, default=None, help="trainer --steps (the same for every recipe)")
    p.add_argument("--epochs", type=int, default=None, help="trainer --epochs (instead of --steps)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    p.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    p.add_argument("--precision", default="auto")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--dice-loss", action="store_true", help="trainer --dice-loss (BCE + soft Dice)")
    p.add_argument("--pos-weight", type=float, default=None, help="trainer --pos-weight (BCE weight of cord pixels)")
    p.add_argument("--intensity-remap", type=float, default=None,
                   help="trainer --intensity-remap (probability of a random intensity curve per training slice)")
    p.add_argument("--invert", type=float, default=None,
                   help="trainer --invert (probability of a contrast inversion of the body per training slice)")
    p.add_argument("--lowres", type=float, default=None,
                   help="trainer --lowres (probability of a lower resolution per training slice)")
    p.add_argument("--aux-loss", type=float, default=None,
                   help="trainer --aux-loss (FCN-ResNet50's training-only layer3 head)")
    p.add_argument("--patch", type=int, default=None,
                   help="trainer --patch P: train on P x P windows of the --image-size slices (evaluation: whole slices)")
    p.add_argument("--fov", type=float, default=None,
                   help="trainer --fov (probability of a smaller field of view per training slice; default: the "
                        "recipe's, hemseg 0.5 as bands; 0: off)")
    p.add_argument("--fov-shape", choices=("box", "band"), default=None, help="trainer --fov-shape")
    p.add_argument("--gin", type=float, default=None,
                   help="trainer --gin (probability of a random convolutional appearance per training slice)")
    p.add_argument("--ema", action="store_true",
                   help="trainer --ema: validate, select and save an exponential moving average of the weights")
    p.add_argument("--ema-decay", type=float, default=0.99, help="trainer --ema-decay (with --ema)")
    p.add_argument("--zero-init-residual", action=argparse.BooleanOptionalAction, default=None,
                   help="trainer --zero-init-residual / --no-zero-init-residual (default: the recipe's)")
    p.add_argument("--tta", action="store_true",
                   help="also evaluate every model with flip test-time augmentation (hemseg eval --tta): a paired "
                        "comparison on the same weights")
    p.add_argument("--unet-base", type=int, default=16)
    p.add_argument("--skip", action="append", default=[], choices=("clahe", "nlm", "bilateral"),
                   help="trainer --skip: leave this filter out of the preprocessing chain (repeatable); the method "
                        "name gets a _no-<step> suffix")
    p.add_argument("--weights", default="auto", help="trainer --weights (auto: cached torchvision weights or random)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-units", choices=("slices", "volumes"), default="slices")
    p.add_argument("--contrasts", default=",".join(CONTRASTS), help="held-out contrasts to run (default: all three)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from hemseg.runtime.allocator import keep_freed_memory

    keep_freed_memory()  # as the hemseg commands do: same results, less time in the kernel

    import torch

    from hemseg.bench.machine import machine_info
    from hemseg.runtime.preprocess import PreprocessSpec
    from hemseg.train.device import describe, resolve_device, versions
    from hemseg.train.kmeans import evaluate_kmeans

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    held = [c.strip() for c in args.contrasts.split(",") if c.strip()]
    bad = [c for c in held if c not in CONTRASTS]
    if bad:
        raise SystemExit(f"run_cord_lococ: error: unknown contrast {bad[0]!r}; choose from {', '.join(CONTRASTS)}")
    work = args.work.resolve()
    data_root = work / "data"
    start = time.perf_counter()
    folds = []
    for c in held:
        log.info("fold: held-out %s (train on %s)", c, ", ".join(x for x in CONTRASTS if x != c))
        test_dir = prepare_test(args.data, data_root, c)
        train_dir = prepare_train(args.data, data_root, c, args.train_units)
        fold: dict[str, Any] = {"held_out": c, "train_contrasts": [x for x in CONTRASTS if x != c],
                                "models": {}, "methods": {}}
        for m in models:
            for r in recipes:
                t0 = time.perf_counter()
                name = (f"{m} ({r} recipe" + (f", without {' + '.join(args.skip)}" if args.skip else "")
                        + (f", intensity remap {args.intensity_remap:g}" if args.intensity_remap else "")
                        + (f", inversion {args.invert:g}" if args.invert else "")
                        + (f", low resolution {args.lowres:g}" if args.lowres else "")
                        + (f", aux loss {args.aux_loss:g}" if args.aux_loss and m == "fcn_resnet50" else "")
                        + (f", {args.patch} px patches" if args.patch else "")
                        + (f", GIN {args.gin:g}" if args.gin else "")
                        + fov_tag(args)[1]
                        + (f", EMA {args.ema_decay:g}" if args.ema else "")
                        + ({True: ", zero-init residual", False: ", no zero-init residual"}.get(args.zero_init_residual)
                           if m == "fcn_resnet50" and args.zero_init_residual is not None else "") + ")")
                fold["models"][name] = run_fold_model(train_dir, test_dir, work, c, m, r, args)
                log.info("held-out %s, %s: test Dice %.4f (%.0f s)", c, name, fold["models"][name]["test"]["dice"],
                         time.perf_counter() - t0)
                fold["methods"][name] = fold["models"][name]["test"]
                fold["methods"][f"{name} + postprocess"] = fold["models"][name]["test_postprocessed"]
                if args.tta:
                    fold["methods"][f"{name} + flip TTA"] = fold["models"][name]["test_flip_tta"]
        km = evaluate_kmeans(test_dir, work / "kmeans" / f"heldout_{c}", spec=PreprocessSpec(size=args.image_size),
                             k=4, seed=args.seed)
        fold["methods"]["kmeans (raw)"] = {k: km["raw"].get(k) for k in SUMMARY_KEYS}
        fold["methods"]["kmeans + cleaning"] = {k: km["cleaned"].get(k) for k in SUMMARY_KEYS}
        fold["methods"]["location prior (control)"] = location_prior(args.data, c)
        folds.append(fold)
    methods = list(folds[0]["methods"])
    mean = {}
    for m in methods:
        mean[m] = {}
        for k in ("dice", "dice_global", "iou", "hd95"):
            vals = [f["methods"][m].get(k) for f in folds]
            vals = [float(v) for v in vals if v is not None and np.isfinite(v)]
            mean[m][k] = float(np.mean(vals)) if vals else None
            mean[m][f"{k}_std_over_folds"] = float(np.std(vals)) if vals else None
    device = resolve_device(args.device)
    cpu = machine_info()  # lscpu's model name and the CPU flags that decide speed, with every result
    result = {
        "experiment": "leave-one-contrast-out spinal-cord segmentation, spine-generic sub-unf01 (real MRI)",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO)] +
                                        (sys.argv[1:] if argv is None else list(argv))),
        "machine": {"device": describe(device), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "torch_threads": torch.get_num_threads(), "cpu": cpu["cpu"], "cpu_flags": cpu["cpu_flags"]},
        "versions": versions(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data": {"root": str(args.data), "contrasts": list(CONTRASTS), "shape": [131, 141, 16],
                 "slices_per_volume": 16, "masks_identical_across_contrasts": True},
        "notes": [
            "Per-slice means over the 16 axial slices of the held-out volume, at native resolution (131 x 141); "
            "hd95 in pixels (1 px = 1 mm here).",
            "Training slices come from the two other contrasts; validation slices (model selection, threshold tuning) "
            "are taken from those same two volumes (stratified by contrast), never from the held-out contrast."
            if args.train_units == "slices" else
            "Training on whole volumes: run_training splits by sample, so one training volume trains and the other "
            "validates.",
            "One subject, co-registered contrasts with identical manual masks: the held-out contrast tests intensity "
            "generalization, not anatomy. The location-prior control shows what position alone gives.",
            "Not a hemangioma dataset: a check of the pipeline (NIfTI in, training, slice-wise evaluation) on real MRI.",
            "seen_training_volumes_optimistic: the same evaluation on the two training volumes (slices the model "
            "trained or was validated on): a sanity check that training and evaluation agree, not a result.",
        ],
        "folds": folds, "methods": methods, "mean": mean,
        "total_wall_s": time.perf_counter() - start,
        "total_wall_s_note": "this invocation only; runs marked reused_finished_run were trained by an earlier "
                             "invocation with the same settings (their train_wall_s is the trainer's own time, "
                             "summed over sessions)",
    }
    from hemseg.train.eval_report import write_json

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    print(markdown(result))
    print(f"\nwritten: {args.out} (total {result['total_wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
