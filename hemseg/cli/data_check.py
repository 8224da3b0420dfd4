"""``hemseg data check DATA``: read every image/mask pair of a dataset and report what is wrong.

Exit status 0 only when the dataset is usable (see :mod:`hemseg.runtime.dataset`); otherwise the report is printed
and the command fails with a DatasetError (exit status 1).
"""

from __future__ import annotations

from pathlib import Path

import click

from hemseg.cli._base import NonEmptyPath, done


@click.command("check")
@click.argument("data", type=NonEmptyPath(path_type=Path))
@click.option("--label", "labels", type=int, multiple=True, metavar="V",
              help="Mask value counted as foreground (repeatable; a DICOM SEG's segment number, an RTSTRUCT's ROI "
                   "number). Default: every nonzero value.")
@click.option("--json", "json_out", type=NonEmptyPath(dir_okay=False, path_type=Path), default=None,
              help="Also write the report as JSON to this file.")
def check(data: Path, labels: tuple[int, ...], json_out: Path | None) -> None:
    """Check the dataset in DATA: pairs, readability, sizes, empty masks.

    Layouts: DATA/images + DATA/masks (optionally DATA/categories.csv with stem,category rows), or
    DATA/<category>/images + DATA/<category>/masks, or nnU-Net's imagesTr + labelsTr; any of them with
    DATA/cases.csv (stem,case rows: the patient of each file, kept on one side of training splits). Prints counts
    per category and one line per problem.
    """
    from hemseg.errors import DatasetError
    from hemseg.runtime.dataset import check_dataset
    from hemseg.runtime.io.writers import is_json_with, refuse_replacing, write_json

    if json_out is not None:  # before the check: a dataset's own file given as --json was replaced
        refuse_replacing(json_out, "--json", lambda p: is_json_with(p, {"layout", "usable", "valid_pairs"}),
                         "hemseg data check report")
    report = check_dataset(data, labels=list(labels) or None)
    done()  # checked: the report (and its --json, written atomically) follow
    click.echo(report.format_text())
    if json_out is not None:
        write_json(json_out, report.to_dict())
        click.echo(f"report written to {json_out}")
    if not report.usable:
        errors = report.error_lines()
        raise DatasetError(f"{data}: dataset is not usable ({len(errors)} error(s); first: {errors[0]})")
