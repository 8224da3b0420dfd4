"""``hemseg predict MODEL INPUT... --out DIR`` (or ``-i INPUT``): segment images, DICOM and NIfTI with an exported model.

The job itself is :func:`hemseg.runtime.predict.run_predict` (outputs, names and summary are documented there).
This module only parses options and reports: one line ``hemseg: <file>: <reason>`` on stderr per failed input
(with the traceback too under ``--debug``), one summary line on stdout.

Exit codes: 0 every input succeeded; 2 some input failed (the others were still processed); 1 a usage error
(including option-parsing errors, which click would otherwise exit with 2) or a model/backend error.
"""

from __future__ import annotations

import os
import sys

import click

from hemseg.cli._base import NonEmptyPath, done
from hemseg.runtime.backends.select import BACKENDS


class _PredictCommand(click.Command):
    """Option-parsing errors exit with 1 here, so that 2 keeps meaning "some inputs failed"."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            exc.exit_code = 1
            raise


def _quiet_opencv() -> None:
    """OpenCV prints its own warnings (e.g. "PNG input buffer is incomplete") straight to stderr, around our
    one-line errors; the readers already turn those cases into InputErrors, so keep only OpenCV's errors."""
    try:
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except Exception:  # an OpenCV build without the logging utilities: nothing to silence
        pass


@click.command(cls=_PredictCommand)
@click.argument("model", type=NonEmptyPath(path_type=str))
@click.argument("inputs", nargs=-1, type=NonEmptyPath(path_type=str, readable=False))  # fails on its own
@click.option("--input", "-i", "input_opts", multiple=True, type=NonEmptyPath(path_type=str),
              help="An input, like INPUTS (repeatable; TotalSegmentator's and nnU-Net's -i).")
@click.option("--out", "-o", "out_dir", required=True, type=NonEmptyPath(file_okay=False, path_type=str),
              help="Output folder (created if needed).")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="Inference backend; auto = trt if a usable engine is there, else ort-cuda, else openvino on a "
                   "CPU with bf16 (AMX / AVX512-BF16) when OpenVINO is installed, else ort-cpu. openvino chooses "
                   "bf16 where the CPU can, else f32; openvino-f32 / openvino-bf16 insist.")
@click.option("--format", "fmt", type=click.Choice(["auto", "png", "nifti", "dicom-seg", "dicom-rtstruct"]),
              default="auto", show_default=True,
              help="auto: a DICOM SEG for DICOM inputs (needs hemseg[dicom]), else png; png: PNG masks for 2D inputs "
                   "(volumes and NIfTI files always get NIfTI label maps, which keep their geometry; said once); nifti: NIfTI for every input; dicom-seg: a DICOM SEG per "
                   "input; dicom-rtstruct: an RT Structure Set per input, for planning and contouring systems "
                   "(both DICOM inputs only).")
@click.option("--overlay", is_flag=True, help="Also write <stem>_overlay.png (mask over the image).")
@click.option("--save-prob", is_flag=True,
              help="Also write <stem>_prob.npy (float16 probabilities) in the mask file's array layout: (H, W) "
                   "beside a PNG, the NIfTI array's axis order beside a NIfTI label map; beside a multi-slice DICOM "
                   "SEG / RTSTRUCT (N, H, W) in the series' slice order (a series folder: ascending position along the "
                   "slice normal, or InstanceNumber; a multi-frame file: its frame order), "
                   "not the SEG's frames (those of slices with a lesion only, matched by the instance each "
                   "references). float16 keeps about 3 decimals: prob > threshold may differ from the mask at a "
                   "pixel whose probability rounds to the threshold.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Slices per batch.")
@click.option("--postprocess/--no-postprocess", default=True, show_default=True,
              help="Clean the mask (closing r=1, drop components < 8 px, fill holes; sizes for a 256 px image, "
                   "scaled to each image's own size: at 128 px no closing and components < 2 px) or threshold "
                   "only.")
@click.option("--tta", is_flag=True,
              help="Flip test-time augmentation: also segment each slice mirrored left-right and average the two "
                   "probabilities (twice the inference time).")
@click.option("--ensemble-with", "ensemble_with", multiple=True, type=NonEmptyPath(path_type=str),
              help="Another exported model with the same preprocessing to average with MODEL (repeatable; e.g. the "
                   "other cross-validation folds): mean probability at the mean of the models' thresholds, one "
                   "inference per model.")
@click.option("--device", type=click.IntRange(min=0), default=0, show_default=True, help="CUDA device index.")
@click.option("--workers", default="auto", show_default=True,
              help="Preprocessing threads that work ahead of inference on series and many files (auto: the usable "
                   "CPUs, at most 4; 0: strictly sequential).")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="Inference threads of a CPU engine, at most the usable CPUs (ONNX Runtime, OpenVINO); 0: the engine's default, every core. "
                   "With --workers, keeps hemseg off a workstation's other cores.")
@click.option("--gpu-preprocess", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Preprocess on the GPU (CuPy) when the backend runs there.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def predict(model, inputs, input_opts, out_dir, backend, fmt, overlay, save_prob, batch_size, postprocess, tta, ensemble_with,
            device, workers, threads, gpu_preprocess, debug) -> None:
    """Segment INPUT(s) (image files, DICOM files or series folders, NIfTI volumes, or folders of these) with
    MODEL (an .onnx file, a .plan TensorRT engine, an OpenVINO .xml, an export folder, or a K-fold export's folder,
    whose folds are averaged); write masks and summary.json to --out."""
    from hemseg.errors import UsageError
    from hemseg.runtime.predict import PredictOptions, run_predict

    _quiet_opencv()
    inputs = (*inputs, *input_opts)
    if not inputs:
        raise UsageError("no input: give INPUTS after MODEL, or -i INPUT")
    if workers != "auto":
        if not workers.strip().isdigit():
            raise UsageError(f"--workers must be 'auto' or an integer >= 0, got {workers!r}")
        from hemseg.runtime.cpu_features import check_workers

        workers = check_workers("--workers", int(workers))
    debug = debug or "--debug" in sys.argv[1:] or os.environ.get("HEMSEG_DEBUG") == "1"
    opts = PredictOptions(out_dir=out_dir, backend=backend, fmt=fmt, overlay=overlay, save_prob=save_prob,
                          batch_size=batch_size, postprocess=postprocess, device=device, workers=workers, tta=tta,
                          ensemble_with=ensemble_with, threads=threads,
                          gpu_preprocess={"auto": "auto", "on": True, "off": False}[gpu_preprocess],
                          on_summary=done)  # from summary.json on, a Ctrl-C changes nothing (QA, stops 53, 58)
    result = run_predict(model, inputs, opts)
    for report in result.failed:
        if debug and report.traceback:
            click.echo(report.traceback.rstrip(), err=True)
        click.echo(f"hemseg: {report.path}: {report.error}", err=True)
    totals = result.summary["totals"]
    warned = f", {totals['inputs_with_warning']} with a warning" if totals["inputs_with_warning"] else ""
    click.echo(f"{totals['ok']}/{totals['inputs']} input(s) segmented with {result.summary['backend']} "
               f"({totals['inputs_with_lesion']} with a lesion{warned}), {totals['error']} failed; "
               f"summary: {result.summary_path}")
    if result.exit_code:
        sys.exit(result.exit_code)
