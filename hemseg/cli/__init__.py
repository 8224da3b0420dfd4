"""The ``hemseg`` command (a click group). Each sub-command lives in its own module, imported on use."""

from __future__ import annotations

import click

from hemseg import __version__
from hemseg.cli._base import LazyGroup, run_main, setup_logging


@click.group(cls=LazyGroup, lazy={
    "doctor": "hemseg.cli.doctor:doctor",
    "train": "hemseg.cli.train_cmd:train",
    "eval": "hemseg.cli.eval_cmd:eval_cmd",
    "eval-masks": "hemseg.cli.eval_masks_cmd:eval_masks",
    "eval-compare": "hemseg.cli.eval_compare_cmd:eval_compare",
    "baseline": "hemseg.cli.baseline_cmd:baseline",
    "report": "hemseg.cli.report_cmd:report",
    "predict": "hemseg.cli.predict_cmd:predict",
    "serve": "hemseg.cli.serve_cmd:serve",
    "quickstart": "hemseg.cli.quickstart_cmd:quickstart",
})
@click.version_option(__version__, prog_name="hemseg")
@click.option("-v", "--verbose", count=True, help="Debug messages (-vv: also other libraries' debug records and warnings' tracebacks).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def main(verbose: int, quiet: bool) -> None:
    """hemseg: spinal hemangioma segmentation, from training to the scanner workstation.

    Add --debug anywhere to see a traceback instead of a one-line error.
    """
    setup_logging(verbose, quiet)


@main.group(cls=LazyGroup, lazy={
    "synth": "hemseg.cli.data_synth:synth",
    "check": "hemseg.cli.data_check:check",
    "sort-dicom": "hemseg.cli.data_sort:sort_dicom_cmd",
})
def data() -> None:
    """Datasets: synthesize the spine-MRI phantom, check a dataset, sort DICOM files into series folders."""


def entry() -> None:
    run_main(main, "hemseg")
