"""``hemseg baseline``: classical baselines to compare the networks against (numpy + OpenCV; no torch)."""

from __future__ import annotations

from pathlib import Path

import click

from hemseg.cli._base import SEED, NonEmptyPath

#: Must equal hemseg.runtime.preprocess.OPTIONAL_STEPS (not imported here to keep the CLI import light; tested).
SKIPPABLE_STEPS = ("clahe", "nlm", "bilateral")


@click.group()
def baseline() -> None:
    """Classical baselines (no training needed)."""


@baseline.command("kmeans")
@click.argument("data", type=NonEmptyPath(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "-o", "out_dir", required=True, type=NonEmptyPath(file_okay=False, path_type=Path),
              help="Report folder: raw/, cleaned/ and summary.json are written here.")
@click.option("--label", "labels", type=int, multiple=True,
              help="Mask value that counts as lesion (repeatable). Default: any nonzero value.")
@click.option("--k", "k", type=click.IntRange(2, 8), default=4, show_default=True, help="Number of clusters.")
@click.option("--image-size", type=click.IntRange(min=8), default=256, show_default=True,
              help="Preprocessing size (images are resized to SIZE x SIZE for clustering).")
@click.option("--skip", "skip", type=click.Choice(SKIPPABLE_STEPS), multiple=True,
              help="Preprocessing step to switch off (repeatable).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="OpenCV RNG seed (k-means++ seeding).")
@click.option("--overlays", "n_overlays", type=click.IntRange(min=0), default=4, show_default=True,
              help="Best and worst cases drawn per report.")
def kmeans(data: Path, out_dir: Path, labels: tuple[int, ...], k: int, image_size: int, skip: tuple[str, ...],
           seed: int, n_overlays: int) -> None:
    """Evaluate the K-Means intensity-clustering baseline on the dataset DATA.

    Each image is preprocessed with the shared chain, clustered into K intensity clusters, and the brightest
    cluster is taken as the lesion; the "raw" report uses that mask as is, the "cleaned" one after closing,
    opening, small-component removal and hole filling. Volumes are evaluated slice by slice.
    """
    from hemseg.runtime.preprocess import PreprocessSpec
    from hemseg.train.kmeans import DEFAULT_CLEANING, evaluate_kmeans

    spec = PreprocessSpec(size=image_size).without(skip)
    result = evaluate_kmeans(data, out_dir, spec=spec, k=k, labels=list(labels) or None, cleaning=DEFAULT_CLEANING,
                             seed=seed, n_overlays=n_overlays)
    from hemseg.cli._base import done
    from hemseg.cli.eval_cmd import console_line

    done()
    for name in ("raw", "cleaned"):  # eval's line: the pooled Dice and its interval first, then lesions and means
        click.echo(f"{name}: {console_line(result[name], Path(out_dir) / name / 'summary.json')}")
    click.echo(f"report: {out_dir}")
