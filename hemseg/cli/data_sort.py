"""``hemseg data sort-dicom SRC OUT``: one folder per DICOM series (see :mod:`hemseg.runtime.io.dicom_sort`)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("sort-dicom")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
def sort_dicom_cmd(src: Path, out: Path) -> None:
    """Copy the DICOM files under SRC (a PACS or CD export, flat or nested) into OUT, one folder per series.

    Folders are named <SeriesNumber>_<Modality>_<SeriesDescription>; OUT/series.json lists them. SRC is only read;
    OUT must be new or empty. Then: hemseg predict MODEL OUT/*/ -o RESULTS.
    """
    from hemseg.runtime.io.dicom_sort import sort_dicom

    manifest = sort_dicom(src, out)
    series = manifest["series"]
    mr = sum(1 for s in series if s["modality"] == "MR")
    files = sum(s["files"] for s in series)
    skipped = f"; skipped {len(manifest['skipped'])} unreadable file(s)" if manifest["skipped"] else ""
    click.echo(f"sorted {files} file(s) into {len(series)} series folder(s) ({mr} MR) in {out}{skipped}; "
               f"list: {out / 'series.json'}")
