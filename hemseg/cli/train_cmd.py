"""``hemseg train``: train FCN-ResNet50 / U-Net / Attention U-Net on a dataset folder."""

from __future__ import annotations

from pathlib import Path

import click

MODELS = ("fcn_resnet50", "unet", "attention_unet")
STEPS = ("clahe", "nlm", "bilateral")


@click.command("train")
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run folder (best.pt, last.pt, metrics.json, ...).")
@click.option("--model", type=click.Choice(MODELS), default="fcn_resnet50", show_default=True)
@click.option("--epochs", type=int, default=20, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--image-size", type=int, default=256, show_default=True, help="Network input size S (S x S).")
@click.option("--lr", type=float, default=1e-4, show_default=True, help="Adam learning rate.")
@click.option("--val-fraction", type=float, default=0.2, show_default=True,
              help="Share of samples for validation (seeded, stratified by category).")
@click.option("--folds", type=int, default=None, help="K-fold cross-validation (K >= 2) instead of one split.")
@click.option("--label", "labels", type=int, multiple=True,
              help="Mask value counted as lesion (repeatable); default: any nonzero value.")
@click.option("--no-preprocess", is_flag=True, help="Skip CLAHE, NLM and bilateral filtering (resize + normalize only).")
@click.option("--skip", type=click.Choice(STEPS), multiple=True, help="Skip one preprocessing filter (repeatable).")
@click.option("--weights", default="auto", show_default=True,
              help="Initial weights: none, auto (cached torchvision weights if present; never downloads) or a file.")
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda")), default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt (up to --epochs).")
@click.option("--pos-weight", type=float, default=None, help="BCE weight of lesion pixels (class imbalance).")
@click.option("--dice-loss", is_flag=True, help="Add a soft Dice term to the BCE loss.")
@click.option("--workers", type=int, default=0, show_default=True,
              help="DataLoader workers (0: in-process, deterministic); >= 2 also filters the data in 2 processes.")
@click.option("--unet-base", type=int, default=64, show_default=True, help="U-Net width (channels of the first level).")
@click.option("--no-augment", is_flag=True, help="Train without augmentation.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="tqdm progress bars.")
def train(data: Path, out: Path, model: str, epochs: int, batch_size: int, image_size: int, lr: float,
          val_fraction: float, folds: int | None, labels: tuple[int, ...], no_preprocess: bool, skip: tuple[str, ...],
          weights: str, device: str, seed: int, resume: bool, pos_weight: float | None, dice_loss: bool, workers: int,
          unet_base: int, no_augment: bool, progress: bool) -> None:
    """Train a segmentation model on DATA (images/ + masks/, optionally in category folders).

    Writes OUT/best.pt (best validation Dice, with the tuned threshold), OUT/last.pt (for --resume),
    OUT/metrics.json, OUT/history.csv and OUT/config.json; with --folds K, OUT/fold_<k>/ per fold and the mean and
    std over folds in OUT/metrics.json. On the CPU training is seeded and deterministic (with --workers 0); on CUDA
    it uses mixed precision and channels-last.
    """
    from hemseg.train.trainer import run_training

    metrics = run_training(
        data, out, model=model, epochs=epochs, batch_size=batch_size, image_size=image_size, lr=lr,
        val_fraction=val_fraction, folds=folds, labels=labels or None, no_preprocess=no_preprocess, skip=skip,
        weights=weights, device=device, seed=seed, resume=resume, pos_weight=pos_weight, dice_loss=dice_loss,
        workers=workers, unet_base=unet_base, augment=not no_augment, progress=progress)
    if "folds" in metrics:
        click.echo(f"{metrics['n_folds']}-fold validation Dice {metrics['mean']['dice']:.4f} "
                   f"+/- {metrics['std']['dice']:.4f}; per fold: {out}/fold_<k>/best.pt; metrics: {out}/metrics.json")
    else:
        click.echo(f"best validation Dice {metrics['dice']:.4f} at epoch {metrics['epoch']} "
                   f"(tuned threshold {metrics['threshold']:.2f}); model: {out / 'best.pt'}; "
                   f"metrics: {out / 'metrics.json'}")
