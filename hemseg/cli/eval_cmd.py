"""``hemseg eval``: evaluate a checkpoint on a dataset (native-resolution metrics, report and overlays)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("eval")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Report folder: summary.json, per_image.csv, per_category.md, overlays/.")
@click.option("--label", "labels", type=int, multiple=True,
              help="Mask value counted as lesion (repeatable); default: the checkpoint's labels, else any nonzero.")
@click.option("--postprocess", is_flag=True,
              help="Clean the thresholded masks (closing r=2, opening r=2, components >= 20 px, hole filling).")
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda")), default="auto", show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def eval_cmd(checkpoint: Path, data: Path, out: Path, labels: tuple[int, ...], postprocess: bool, device: str,
             batch_size: int, progress: bool) -> None:
    """Evaluate CHECKPOINT (a hemseg best.pt) on DATA and write a report to --out.

    Masks are predicted with the checkpoint's preprocessing and tuned threshold, resized back to each image's size,
    and compared there: Dice, IoU, precision, recall, accuracy, HD95 per image, their means and a per-category table.
    """
    from hemseg.errors import UsageError
    from hemseg.train.evaluate import evaluate_checkpoint

    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    s = evaluate_checkpoint(checkpoint, data, out, labels=list(labels) or None, postprocess=postprocess,
                            device=device, batch_size=batch_size, progress=progress)

    def fmt(key: str) -> str:
        v = s.get(key)
        return "n/a" if v is None else f"{v:.4f}"

    click.echo(f"{s['n_images']} image(s): Dice {fmt('dice')}, IoU {fmt('iou')}, precision {fmt('precision')}, "
               f"recall {fmt('recall')}, HD95 {fmt('hd95')} px; report: {out / 'summary.json'}")
