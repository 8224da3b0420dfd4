"""``hemseg report``: train, evaluate and tabulate everything the paper reports, from one command."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from hemseg.cli._base import SEED, FiniteFloat, NonEmptyPath, done, require_extra

MODELS = ("fcn_resnet50", "unet", "attention_unet")


def canonical_command(data: Path, out: Path, **opts: object) -> str:
    """The ``hemseg report`` command line with every option spelled out (what REPORT.md records)."""
    parts = ["hemseg", "report", str(data), "--out", str(out)]
    for name, value in opts.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value == ():
            continue
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, tuple):
            for v in value:
                parts += [flag, str(v)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


@click.command("report")
@click.argument("data", type=NonEmptyPath(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "-o", required=True, type=NonEmptyPath(path_type=Path),
              help="Report folder: REPORT.md, report.json, figures, splits/, runs/, evals/, kmeans/, cv/.")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--recipe", type=click.Choice(("paper", "hemseg")), default="paper", show_default=True,
              help="Recipe of the paper's tables; the other recipe is trained too, for the recipe comparison.")
@click.option("--folds", type=click.IntRange(min=0), default=0, show_default=True,
              help="K-fold cross-validation of --cv-model on the training split (K >= 2; 0: none).")
@click.option("--image-size", type=click.IntRange(min=16), default=256, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda")), default="auto", show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--test-fraction", type=FiniteFloat(0, 1, min_open=True, max_open=True), default=0.2,
              show_default=True,
              help="Share of samples (of cases with DATA/cases.csv) held out as the test split (seeded, "
                   "stratified by category).")
@click.option("--models", default=",".join(MODELS), show_default=True,
              help="Models of the comparison table (comma-separated); FCN-ResNet50 is always trained (main model).")
@click.option("--cv-model", type=click.Choice(MODELS), default="fcn_resnet50", show_default=True,
              help="The model of the --folds cross-validation.")
@click.option("--unet-base", type=click.IntRange(min=1), default=64, show_default=True,
              help="U-Net / Attention U-Net width (channels of the first level).")
@click.option("--label", "labels", type=int, multiple=True,
              help="Mask value counted as lesion (repeatable); default: any nonzero value.")
@click.option("--weights", default="auto", show_default=True,
              help="Initial weights: none, auto (cached torchvision weights if present; never downloads) or a file, "
                   "given to the model it is for (a hemseg checkpoint's own model, else FCN-ResNet50); the other "
                   "models start as with auto.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="tqdm progress bars.")
def report(data: Path, out: Path, epochs: int, recipe: str, folds: int, image_size: int, batch_size: int, device: str, seed: int,
           test_fraction: float, models: str, cv_model: str, unet_base: int, labels: tuple[int, ...], weights: str,
           progress: bool) -> None:
    """Make the paper's tables from the dataset DATA into --out/REPORT.md (and report.json).

    A test split is held out first; FCN-ResNet50 is trained with and without preprocessing (ablation), the other
    --models are trained alike, the K-Means baseline runs on the test split, and with --folds K a K-fold
    cross-validation of --cv-model runs on the training split. Every number comes from this run. Rerunning into the same --out
    with the same settings and data reuses the steps already finished (an interrupted report goes on); other
    --models or --cv-model reuse the steps they share and redraw the tables (earlier runs left out are named); a
    rerun with other settings or changed data is refused as a whole, naming the first step that differs: choose
    another --out.
    """
    require_extra("hemseg report", "torch", "torchvision", "matplotlib")
    from hemseg.train.report import ReportSettings, parse_models, run_report

    settings = ReportSettings(epochs=epochs, recipe=recipe, folds=folds or None, image_size=image_size, batch_size=batch_size,
                              device=device, seed=seed, test_fraction=test_fraction, models=parse_models(models),
                              cv_model=cv_model, unet_base=unet_base, labels=tuple(labels) or None, weights=weights,
                              progress=progress)
    command = canonical_command(data, out, epochs=epochs, recipe=recipe, folds=folds, image_size=image_size, batch_size=batch_size,
                                device=device, seed=seed, test_fraction=test_fraction, models=models,
                                cv_model=cv_model, unet_base=unet_base, label=labels, weights=weights)
    result = run_report(data, out, settings, command=command)
    main = result["runs"]["fcn_resnet50"]["test"]
    dice = "n/a" if main.get("dice") is None else f"{main['dice']:.4f}"
    pooled = "n/a" if main.get("dice_global") is None else f"{main['dice_global']:.4f}"
    warned = result["runs"]["fcn_resnet50"].get("test_warnings") or []
    done()
    click.echo(f"FCN-ResNet50 test Dice pooled {pooled}, per image {dice} on {result['split']['n_test']} held-out "
               f"sample(s){'; WARNING: ' + warned[0] if warned else ''}; report: {out / 'REPORT.md'}")
