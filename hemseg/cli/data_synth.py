"""``hemseg data synth``: write the synthetic spine-MRI phantom dataset."""

from __future__ import annotations

from pathlib import Path

import click

from hemseg.cli._base import SEED, NonEmptyPath, done


@click.command("synth")
@click.argument("out", type=NonEmptyPath(path_type=Path))
@click.option("--per-category", "-n", type=click.IntRange(min=1, max=9999), default=200, show_default=True,
              help="Images per category (12 categories); the first of each is lesion-free, so -n 1 makes a dataset without a lesion.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Random seed; the same seed gives byte-identical files.")
@click.option("--preview", is_flag=True, help="Also write OUT/preview.png, a labelled contact sheet.")
@click.option("--min-size", type=click.IntRange(32, 4096), default=192, show_default=True,
              help="Smallest image side (pixels).")
@click.option("--max-size", type=click.IntRange(32, 4096), default=512, show_default=True,
              help="Largest image side (pixels).")
@click.option("--workers", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes rendering in parallel; the files are the same whatever the number.")
def synth(out: Path, per_category: int, seed: int, preview: bool, min_size: int, max_size: int, workers: int) -> None:
    """Write a synthetic spine-MRI phantom with vertebral hemangiomas to OUT.

    Layout: OUT/<category>/images/<stem>.png (8-bit grayscale) and OUT/<category>/masks/<stem>.png (0/255),
    plus OUT/manifest.json. OUT must be new, empty, or a previous phantom (which is replaced).
    """
    from hemseg.errors import UsageError
    from hemseg.phantom import CATEGORIES, generate

    if min_size > max_size:
        raise UsageError(f"--min-size ({min_size}) is larger than --max-size ({max_size})")
    manifest = generate(out, per_category, seed=seed, preview=preview, size_range=(min_size, max_size),
                        workers=workers, on_published=done)  # done once in place, not after deleting a replaced one
    images = manifest["images"]
    free = sum(1 for im in images if im["lesions"] == 0)
    click.echo(f"wrote {len(images)} images ({len(CATEGORIES)} categories x {per_category}) to {out}; "
               f"{100.0 * free / max(1, len(images)):.0f}% lesion-free")
    if preview:
        click.echo(f"preview: {out / 'preview.png'}")
