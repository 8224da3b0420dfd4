"""``hemseg train``: train FCN-ResNet50 / U-Net / Attention U-Net on a dataset folder."""

from __future__ import annotations

from pathlib import Path

import click

from hemseg.cli._base import SEED, FiniteFloat, NonEmptyPath, done, require_extra

MODELS = ("fcn_resnet50", "unet", "attention_unet")
STEPS = ("clahe", "nlm", "bilateral")


@click.command("train")
@click.argument("data", type=NonEmptyPath(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "-o", required=True, type=NonEmptyPath(path_type=Path), help="Run folder (best.pt, last.pt, metrics.json, ...).")
@click.option("--model", type=click.Choice(MODELS), default="fcn_resnet50", show_default=True)
@click.option("--recipe", type=click.Choice(("hemseg", "paper")), default="hemseg", show_default=True,
              help="hemseg: AdamW 1e-3, warm-up + poly decay over the run's steps, BCE + batch soft Dice, foreground-"
                   "aware sampling, strong augmentation (a smaller field of view on half the slices included), "
                   "selection by pooled Dice (from-scratch, small data). paper: the publication's Adam 1e-4 constant, "
                   "BCE, --epochs passes, mild augmentation.")
@click.option("--steps", type=int, default=None, help="Run length in optimizer steps.")
@click.option("--minutes", type=FiniteFloat(), default=None,
              help="Run length as a wall-clock budget: the run times its first steps and fixes its steps so that "
                   "training, validations and threshold tuning end within M minutes.")
@click.option("--epochs", type=int, default=None,
              help="Run length in passes over the training split (converted to steps). Default, when no run length "
                   "is given: paper --epochs 20; hemseg --minutes 10 on the CPU, --steps 3000 on CUDA.")
@click.option("--batch-size", type=int, default=None, help="Slices per step [recipe: 8].")
@click.option("--image-size", type=int, default=256, show_default=True, help="Network input size S (S x S).")
@click.option("--lr", type=FiniteFloat(), default=None, help="Peak learning rate [recipe: hemseg 1e-3, paper 1e-4].")
@click.option("--precision", type=click.Choice(("auto", "fp32", "bf16", "fp16")), default="auto", show_default=True,
              help="auto: bf16 autocast + channels-last on CPUs with AMX or AVX512-BF16, mixed precision on CUDA, "
                   "else fp32. bf16 on a CPU without them is an error.")
@click.option("--crop", type=FiniteFloat(0, 1), default=0.0, show_default=True,
              help="Probability of a random crop centred on foreground (zoomed back to S), per training slice.")
@click.option("--intensity-remap", type=FiniteFloat(0, 1), default=None,
              help="Probability of a random smooth intensity curve per training slice (air stays black; tissues may "
                   "swap brightness order), for models that must work on MRI sequences they were not trained on "
                   "[recipe: 0].")
@click.option("--invert", type=FiniteFloat(0, 1), default=None,
              help="Probability of a contrast inversion per training slice: the body's grey levels reversed (above "
                   "its Otsu threshold), air kept dark, as T1 and T2 weighting order fluid and tissue oppositely; "
                   "for models that must work on a weighting they were not trained on [recipe: 0].")
@click.option("--lowres", type=FiniteFloat(0, 1), default=None,
              help="Probability of a lower resolution per training slice: shrunk by 0.5-1 (area) and enlarged back "
                   "(cubic), as coarser series of the same contrast look at the network's size (nnU-Net's "
                   "low-resolution simulation) [recipe: 0].")
@click.option("--fov", type=FiniteFloat(0, 1), default=None,
              help="Probability of a smaller field of view per training slice: image and mask black outside a "
                   "random band or box around a lesion pixel, as in series acquired with a smaller FOV or "
                   "zero-padded; 0 switches it off [recipe: hemseg 0.5, paper 0].")
@click.option("--fov-shape", type=click.Choice(("band", "box")), default=None,
              help="Shape of --fov's field of view: band (one side 30-100 %, the other whole: a rectangular FOV, or "
                   "a thinner stack resampled into another grid) or box (both sides 30-100 %) [default: band].")
@click.option("--gin", type=FiniteFloat(0, 1), default=None,
              help="Probability of GIN per training slice: a random shallow convolutional network changes contrast "
                   "and texture but not shapes (Ouyang et al. 2022), for models that must work on MRI sequences they "
                   "were not trained on [recipe: 0].")
@click.option("--aux-loss", type=FiniteFloat(), default=None,
              help="Weight of a training-only auxiliary head on FCN-ResNet50's layer3 (torchvision's aux loss; "
                   "deep supervision). Not saved in best.pt nor exported; 0 turns it off [recipe: 0].")
@click.option("--zero-init-residual/--no-zero-init-residual", default=None,
              help="Start FCN-ResNet50's residual blocks as the identity (last BatchNorm scale 0; Goyal et al. 2017) "
                   "when it trains from random weights [recipe: no].")
@click.option("--patch", default="auto", show_default=True,
              help="Train on P x P windows of the S x S slices (nnU-Net's patch training: on a lesion for the "
                   "batch's forced lesion picks, random otherwise): a step costs what a P px slice costs and lesions "
                   "keep their scale. Validation and inference use the whole slice. A multiple of 16, at most S; 0: "
                   "whole slices; auto: whole slices unless a --minutes budget buys them fewer than 500 steps, then "
                   "the largest of S/2 and S/4 (at least 96 px) that buys 500, else the cheaper (hemseg recipe).")
@click.option("--ema", is_flag=True, help="Validate, select and save an exponential moving average of the weights.")
@click.option("--ema-decay", type=FiniteFloat(), default=0.99, show_default=True,
              help="With --ema: the weight of the running average at each step (0.99 averages about 100 steps).")
@click.option("--val-every", type=int, default=None,
              help="Validate every K steps [hemseg: a tenth of the run; paper: every epoch].")
@click.option("--val-fraction", type=FiniteFloat(), default=0.2, show_default=True,
              help="Share of the cases (see the text above) for validation (seeded, stratified by category).")
@click.option("--folds", type=click.IntRange(min=2), default=None,
              help="K-fold cross-validation (K >= 2) instead of one split.")
@click.option("--splits", "splits_file", type=NonEmptyPath(dir_okay=False, path_type=Path), default=None,
              metavar="FILE",
              help="Use the splits in FILE instead of drawing them: a JSON list of {\"train\": [stems], \"val\": "
                   "[stems]} (nnU-Net's splits_final.json; several entries train as folds) or a hemseg run's "
                   "config.json (its splits, reused exactly).")
@click.option("--label", "labels", type=int, multiple=True,
              help="Mask value counted as lesion (repeatable; a DICOM SEG's segment number, an RTSTRUCT's ROI number); "
                   "default: any nonzero value.")
@click.option("--no-preprocess", is_flag=True, help="Skip CLAHE, NLM and bilateral filtering (resize + normalize only).")
@click.option("--skip", type=click.Choice(STEPS), multiple=True, help="Skip one preprocessing filter (repeatable).")
@click.option("--weights", default="auto", show_default=True,
              help="Initial weights: none, auto (cached torchvision weights if present; never downloads) or a file.")
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda")), default="auto", show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--resume", is_flag=True,
              help="Continue the run in --out from its last.pt, to its own run length (a --minutes run: the steps it "
                   "planned); a new --steps or --epochs lengthens it (not below the steps trained); a new --minutes "
                   "is refused.")
@click.option("--pos-weight", type=FiniteFloat(), default=None, help="BCE weight of lesion pixels (class imbalance).")
@click.option("--dice-loss", is_flag=True, help="Add a batch soft Dice term to the BCE loss (the hemseg recipe has it).")
@click.option("--dice", type=click.Choice(("none", "batch", "blob")), default=None,
              help="The soft Dice term added to BCE [recipe's: hemseg batch, paper none]. blob: the batch term plus "
                   "one Dice per lesion (blob loss, Kofler et al. 2023), so small lesions weigh as much as large ones.")
@click.option("--workers", type=int, default=0, show_default=True,
              help="DataLoader workers (0: in-process, deterministic). The one-off filtering of the data uses "
                   "every usable CPU whatever this is (the result does not depend on it).")
@click.option("--unet-base", type=int, default=64, show_default=True, help="U-Net width (channels of the first level).")
@click.option("--no-augment", is_flag=True, help="Train without augmentation.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="tqdm progress bars.")
def train(data: Path, out: Path, model: str, recipe: str, steps: int | None, minutes: float | None,
          epochs: int | None, batch_size: int | None, image_size: int, lr: float | None, precision: str, crop: float,
          intensity_remap: float | None, invert: float | None, lowres: float | None, fov: float | None, fov_shape: str | None, gin: float | None, aux_loss: float | None, zero_init_residual: bool | None, patch: str, ema: bool, ema_decay: float,
          val_every: int | None, val_fraction: float, folds: int | None, splits_file: Path | None, labels: tuple[int, ...], no_preprocess: bool,
          skip: tuple[str, ...], weights: str, device: str, seed: int, resume: bool, pos_weight: float | None,
          dice_loss: bool, dice: str | None, workers: int, unet_base: int, no_augment: bool, progress: bool) -> None:
    """Train a segmentation model on DATA (images/ + masks/, optionally in category folders).

    Writes OUT/best.pt (best validation Dice, with the tuned threshold), OUT/last.pt (for --resume),
    OUT/metrics.json, OUT/history.csv and OUT/config.json; with --folds K, OUT/fold_<k>/ per fold and the mean and
    std over folds in OUT/metrics.json. Splits are by case (slices of one patient never on
    both sides): the cases DATA/cases.csv lists as stem,case rows, else for DICOM images their Patient ID (or,
    with one Patient ID, Study Instance UID), else each image file its own case. Give one run length: --steps, --minutes or --epochs. On the CPU training is
    seeded and deterministic (with --workers 0); --precision auto picks bf16 on CPUs that compute it natively and
    mixed precision on CUDA.
    """
    require_extra("hemseg train", "torch", "torchvision")
    from hemseg.train.trainer import run_training

    _warn_unused_options(folds, splits_file, ema, model)
    metrics = run_training(
        data, out, model=model, recipe=recipe, steps=steps, minutes=minutes, epochs=epochs, batch_size=batch_size,
        image_size=image_size, lr=lr, precision=precision, crop=crop, intensity_remap=intensity_remap, invert=invert, lowres=lowres,
        fov=fov, fov_shape=fov_shape, gin=gin, aux_loss=aux_loss, zero_init_residual=zero_init_residual, patch=patch, ema=ema, ema_decay=ema_decay, val_every=val_every,
        val_fraction=val_fraction, folds=folds, splits=None if splits_file is None else str(splits_file), labels=labels or None, no_preprocess=no_preprocess, skip=skip,
        weights=weights, device=device, seed=seed, resume=resume, pos_weight=pos_weight, dice_loss=dice_loss,
        dice=dice, workers=workers, unet_base=unet_base, augment=not no_augment, progress=progress)
    done()
    click.echo(_summary_line(metrics, out))


def _warn_unused_options(folds: int | None, splits_file: Path | None, ema: bool, model: str) -> None:
    """Options given on the command line that this run does not use: said, not silently dropped."""
    import logging

    given = click.get_current_context().get_parameter_source
    log = logging.getLogger("hemseg.cli.train")
    if given("val_fraction") == click.core.ParameterSource.COMMANDLINE and (folds or splits_file):
        log.warning("--val-fraction is not used: %s sets the validation samples", "--folds" if folds else "--splits")
    if given("ema_decay") == click.core.ParameterSource.COMMANDLINE and not ema:
        log.warning("--ema-decay is not used without --ema")
    if given("unet_base") == click.core.ParameterSource.COMMANDLINE and model == "fcn_resnet50":
        log.warning("--unet-base is not used: it sets the width of --model unet / attention_unet, not fcn_resnet50")


def _summary_line(metrics: dict, out: Path) -> str:
    where = f"model: {out / 'best.pt'}; metrics: {out / 'metrics.json'}"
    if "folds" in metrics:
        n, scored = metrics["n_folds"], metrics.get("n_scored", metrics["n_folds"])
        of = "" if scored == n else f" over the {scored} fold(s) with validation lesions"
        mean, std = metrics["mean"], metrics["std"]
        pooled = (f"pooled {mean['dice_global']:.4f} +/- {std['dice_global']:.4f}, "
                  if mean.get("dice_global") is not None else "")
        return (f"{n}-fold validation Dice {pooled}per slice {mean['dice']:.4f} +/- {std['dice']:.4f}{of}; per "
                f"fold: {out}/fold_<k>/best.pt; metrics: {out}/metrics.json")
    run = f"step {metrics['step']} of {metrics['steps']} ({metrics['seconds']:.0f} s, {metrics['amp']})"
    if metrics.get("dice") is None:
        return f"no lesion in the validation split, no Dice to report; the last model, {run}; {where}"
    tuned = metrics.get("val_dice_tuned")
    at_tuned = "" if tuned is None else f": Dice ({metrics.get('selection', 'pooled')}) {tuned:.4f}"
    return (f"best validation Dice pooled {metrics['dice_global']:.4f}, per slice {metrics['dice']:.4f} at 0.5, "
            f"{run}; tuned threshold {metrics['threshold']:.4g}{at_tuned}; {where}")
