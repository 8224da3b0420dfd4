"""``hemseg data sort-dicom SRC OUT``: one folder per DICOM series (see :mod:`hemseg.runtime.io.dicom_sort`)."""

from __future__ import annotations

from pathlib import Path

import click

from hemseg.cli._base import NonEmptyPath, done


@click.command("sort-dicom")
@click.argument("src", type=NonEmptyPath(path_type=Path))
@click.argument("out", type=NonEmptyPath(path_type=Path))
@click.option("--dataset", is_flag=True,
              help="Make OUT a hemseg dataset: image series in OUT/images/, and the DICOM SEG or RT Structure Set "
                   "drawn on a series as OUT/masks/<series>.dcm (masks that reference several series, or several "
                   "masks of one series, are listed in series.json, not paired); categories.csv by Series "
                   "Description, cases.csv by patient.")
def sort_dicom_cmd(src: Path, out: Path, dataset: bool) -> None:
    """Copy the DICOM files under SRC (a PACS or CD export, flat or nested) into OUT, one folder per series.

    Folders are named <SeriesNumber>_<Modality>_<SeriesDescription>; OUT/series.json lists them (a SEG's or
    RTSTRUCT's entry names the series it references; files not sorted, with the reason: hidden, unreadable, cut
    short, copies). SRC is only read; OUT must be new or empty, and is locked while the sort runs. Then: hemseg
    predict MODEL OUT -o RESULTS (one input per image series; SEG and RTSTRUCT series skipped); with --dataset:
    hemseg data check OUT, hemseg train OUT -o RUN.
    """
    from hemseg.runtime.io.dicom_sort import skipped_counts, sort_dicom

    manifest = sort_dicom(src, out, dataset=dataset)
    series = manifest["series"]
    mr = sum(1 for s in series if s["modality"] == "MR")
    files = sum(s["files"] for s in series)
    skipped = "".join(f"; skipped {n} {what}" for n, what in skipped_counts(manifest["skipped"]))
    mixed = sum(1 for s in series if s.get("warnings"))
    if mixed:  # each is logged above with its files: the one line says it is not to be trusted as it is
        skipped += f"; {mixed} series mix patients, studies or modalities (see the warnings; not usable as they are)"
    done()
    if dataset:
        images = sum(1 for s in series if s["kind"] == "image")
        paired = sum(1 for s in series if "mask" in s)
        unpaired = f", {len(manifest['unpaired_masks'])} mask(s) not paired" if manifest["unpaired_masks"] else ""
        by = manifest["cases_by"]
        cases = (f", {manifest['cases']} {'patients' if by == 'patient' else 'studies'} in cases.csv (splits keep "
                 "each one's series together)" if by else ", one patient")
        click.echo(f"dataset {out}: {images} image series ({mr} MR), {paired} with a mask{unpaired}{cases}{skipped}; "
                   f"list: {out / 'series.json'}; next: hemseg data check {out}")
        return
    click.echo(f"sorted {files} file(s) into {len(series)} series folder(s) ({mr} MR) in {out}{skipped}; "
               f"list: {out / 'series.json'}")
