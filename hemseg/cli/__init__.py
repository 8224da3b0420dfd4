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

    Add --debug anywhere to see a traceback instead of a one-line error; -q and -v may also follow the command
    (hemseg predict ... -q).
    """
    setup_logging(verbose, quiet)


@main.group(cls=LazyGroup, lazy={
    "synth": "hemseg.cli.data_synth:synth",
    "check": "hemseg.cli.data_check:check",
    "sort-dicom": "hemseg.cli.data_sort:sort_dicom_cmd",
})
def data() -> None:
    """Datasets: synthesize the spine-MRI phantom, check a dataset, sort DICOM files into series folders."""


#: the group's own flags, taken anywhere on the command line (no sub-command has options of these names)
GLOBAL_FLAGS = ("-q", "--quiet", "-v", "-vv", "-vvv", "--verbose")


def global_flags_first(argv: list[str]) -> list[str]:
    """``argv`` with the group's -q / -v flags moved in front of the sub-command, where click reads them: ``hemseg
    data check D -q`` was 'No such option' (``hemseg-export`` and ``hemseg-bench`` took -q after their arguments).
    Nothing after ``--`` moves."""
    cut = argv.index("--") if "--" in argv else len(argv)
    head = argv[:cut]
    return [a for a in head if a in GLOBAL_FLAGS] + [a for a in head if a not in GLOBAL_FLAGS] + argv[cut:]


def entry() -> None:
    import sys

    # (own_process: the `hemseg` command passes its reordered argv, and a signal just after its success line still
    # killed it: QA, stop 57)
    run_main(main, "hemseg", global_flags_first(sys.argv[1:]), own_process=True)
