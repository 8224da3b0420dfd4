"""``hemseg eval``: evaluate a checkpoint or an exported model on a dataset (native-resolution metrics, report and
overlays)."""

from __future__ import annotations

from pathlib import Path

import click

from hemseg.cli._base import NonEmptyPath, done, require_extra
from hemseg.runtime.backends.select import BACKENDS
from hemseg.runtime.bootstrap import interval_text


@click.command("eval")
@click.argument("checkpoint", metavar="MODEL", type=NonEmptyPath(exists=True, path_type=Path))
@click.argument("data", type=NonEmptyPath(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "-o", required=True, type=NonEmptyPath(path_type=Path, file_okay=False),
              help="Report folder: summary.json, per_image.csv, per_category.md, overlays/.")
@click.option("--label", "labels", type=int, multiple=True,
              help="Mask value counted as lesion (repeatable; a DICOM SEG's segment number, an RTSTRUCT's ROI number); "
                   "default: the checkpoint's labels, else any nonzero.")
@click.option("--postprocess", is_flag=True,
              help="Clean the thresholded masks (closing and opening r=2, components >= 20 px, hole filling; sizes "
                   "for a 256 px image, scaled to each image's own size). hemseg predict's default clean-up is "
                   "lighter: to score its masks, run hemseg eval-masks on its output.")
@click.option("--tta", is_flag=True,
              help="Flip test-time augmentation: average the probabilities of each slice and its left-right mirror.")
@click.option("--ensemble-with", "ensemble_with", multiple=True,
              type=NonEmptyPath(exists=True, path_type=Path),
              help="Another model of the same kind (an export folder too, as for MODEL) with the same preprocessing to average with MODEL (repeatable; "
                   "e.g. the other cross-validation folds): mean probability, mean of the tuned thresholds.")
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda")), default="auto", show_default=True,
              help="Where a checkpoint runs (PyTorch). For an exported model, cpu means --backend ort-cpu; its GPU "
                   "backends are chosen with --backend (ort-cuda, trt), not with --device cuda.")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Runtime backend of an exported model, as for hemseg predict [default: auto].")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def eval_cmd(checkpoint: Path, data: Path, out: Path, labels: tuple[int, ...], postprocess: bool, tta: bool,
             ensemble_with: tuple[Path, ...], device: str, backend: str | None, batch_size: int,
             progress: bool) -> None:
    """Evaluate MODEL on DATA and write a report to --out. MODEL is a checkpoint (a hemseg best.pt, run by
    PyTorch) or an exported model (.onnx FP32/FP16/INT8, OpenVINO .xml, TensorRT .plan, or an export folder, run by
    the runtime backend hemseg predict would use: the engine you deploy, scored against the masks; no PyTorch
    needed).

    Masks are predicted with the model's preprocessing and tuned threshold, resized back to each image's size,
    and compared there: Dice, IoU, precision, recall, accuracy, HD95 per image, their means and a per-category table.
    """
    from hemseg.errors import UsageError

    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    from hemseg.errors import ModelError
    from hemseg.runtime.model_file import training_run_reason

    for given in (checkpoint, *ensemble_with):  # a run folder is neither kind ('an exported model' it was called)
        run = training_run_reason(Path(given))
        if run:
            raise ModelError(Path(given), run)
    kind = is_exported_model(checkpoint)
    other = next((p for p in ensemble_with if is_exported_model(p) != kind), None)
    if other is not None:  # each side was read as MODEL's kind: 'not a PyTorch file' of an .onnx
        mine, theirs = (("an exported model", "not an exported model (taken for a checkpoint)") if kind else
                        ("a checkpoint", "an exported model"))
        raise UsageError(f"--ensemble-with {other} is {theirs} and {checkpoint} {mine}: an ensemble averages models "
                         "of one kind (all checkpoints, run by PyTorch, or all exported models)")
    if kind:
        from hemseg.train.evaluate import evaluate_model

        if device == "cpu" and backend in (None, "auto"):
            backend = "ort-cpu"  # --device cpu: never a GPU backend
        if device == "cuda":  # it was ignored: the CPU backend auto chose ran, as if the GPU had been used
            raise UsageError(f"--device cuda is for checkpoints; {checkpoint} is an exported model: choose its GPU "
                             "backend with --backend ort-cuda or --backend trt")
        s = evaluate_model(checkpoint, data, out, labels=list(labels) or None, postprocess=postprocess, tta=tta,
                           ensemble_with=ensemble_with, backend=backend or "auto", batch_size=batch_size,
                           progress=progress)
    else:
        if backend is not None:
            raise UsageError(f"--backend is for exported models; {checkpoint} is a checkpoint (use --device)")
        require_extra("hemseg eval of a checkpoint", "torch", "torchvision")  # a checkpoint runs on PyTorch
        from hemseg.train.evaluate import evaluate_checkpoint

        s = evaluate_checkpoint(checkpoint, data, out, labels=list(labels) or None, postprocess=postprocess,
                                tta=tta, ensemble_with=ensemble_with, device=device, batch_size=batch_size,
                                progress=progress)

    done()
    click.echo(console_line(s, out / "summary.json"))  # a warning (e.g. nothing predicted) was logged already


def is_exported_model(path: Path) -> bool:
    """An export folder or an exported model file, by the runtime's own model-file names (the backend checks the
    content); anything else is taken for a PyTorch checkpoint."""
    from hemseg.runtime.model_file import IR_SUFFIXES, ONNX_SUFFIXES, PLAN_SUFFIXES

    return path.is_dir() or path.suffix.lower() in ONNX_SUFFIXES + PLAN_SUFFIXES + IR_SUFFIXES


def console_line(s: dict, where: Path) -> str:
    """The one-line result: pooled Dice and lesion recall first, then the per-image means."""

    def fmt(v) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    les = s.get("lesions") or {}
    lesions = (f"lesion recall {fmt(les.get('recall'))} ({les.get('gt_lesions_detected')} of {les.get('gt_lesions')}), "
               f"lesion precision {fmt(les.get('precision'))}, "
               f"{fmt(les.get('fp_components_per_lesion_free_slice'))} false-positive components per lesion-free "
               "slice; " if les else "")
    return (f"{s['n_images']} image(s): pooled Dice {fmt(s.get('dice_global'))}{interval_text(s)}, {lesions}per "
            "image: Dice "
            f"{fmt(s.get('dice'))}, IoU {fmt(s.get('iou'))}, precision {fmt(s.get('precision'))}, recall "
            f"{fmt(s.get('recall'))}, HD95 {fmt(s.get('hd95'))} px; report: {where}")
