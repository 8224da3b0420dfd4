"""``hemseg eval-masks PREDICTIONS DATA``: score existing masks against a dataset's references (nnU-Net's
``evaluate_folder``), with the report of ``hemseg eval``."""

from __future__ import annotations

from pathlib import Path

import click

from hemseg.cli._base import NonEmptyPath, done


@click.command("eval-masks")
@click.argument("predictions", type=NonEmptyPath(exists=True, file_okay=False, path_type=Path))
@click.argument("data", type=NonEmptyPath(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "-o", required=True, type=NonEmptyPath(path_type=Path, file_okay=False),
              help="Report folder: summary.json, per_image.csv, per_category.md, overlays/.")
@click.option("--label", "labels", type=int, multiple=True,
              help="Reference mask value counted as lesion (repeatable); default: any nonzero.")
@click.option("--pred-label", "pred_labels", type=int, multiple=True,
              help="Predicted mask value counted as lesion (repeatable); default: any nonzero.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def eval_masks(predictions: Path, data: Path, out: Path, labels: tuple[int, ...], pred_labels: tuple[int, ...],
               progress: bool) -> None:
    """Score the masks in PREDICTIONS (another tool's, a second reader's, hemseg predict's output) against the
    references of DATA: Dice, IoU, precision, recall, accuracy, HD95, lesion counts, per category.

    A sample's prediction is PREDICTIONS/<stem>.<ext> or <stem>_mask.<ext> (also <stem>_seg.dcm /
    <stem>_rtstruct.dcm), or, in hemseg predict's output, the mask its summary.json records for the sample's image
    (names it had to change: 'a b.png' and 'a_b.png', non-Latin names), in any mask format hemseg reads, on the
    sample image's grid (NIfTI by geometry, DICOM SEG / RTSTRUCT by reference). A sample without a prediction is an error. Where category folders share file names
    (DATA/t1/images/000.png, DATA/t2/images/000.png), put each category's predictions in PREDICTIONS/<category>/.
    """
    from hemseg.cli.eval_cmd import console_line
    from hemseg.train.evaluate import evaluate_masks

    s = evaluate_masks(predictions, data, out, labels=list(labels) or None, pred_labels=list(pred_labels) or None,
                       progress=progress)
    done()
    click.echo(console_line(s, out / "summary.json"))
