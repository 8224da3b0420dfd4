"""What hemseg-export's parity gates vouch for in a run: the export report's verdict on each model file, why the
gates may not cover what the chosen backend computes, and the warnings both give. ``hemseg predict`` and the Python
API (:meth:`hemseg.runtime.segmenter.Segmenter.from_path`) open models through :func:`with_verification`, so both say
the same of the same model."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from hemseg.runtime.backends.select import LoadedModel
from hemseg.runtime.model_file import export_gate_basis, export_verification

log = logging.getLogger(__name__)


def export_statuses(loaded: LoadedModel) -> tuple[str | None, ...]:
    """:func:`export_verification` of the model and of each ensemble member, each against the checkpoint its own
    runner's metadata records (read once, when the model opens: the summary reuses them)."""
    runners = getattr(loaded.runner, "members", None) or [loaded.runner]
    shas = [getattr(getattr(r, "metadata", None), "checkpoint_sha256", None) for r in runners]
    paths = (loaded.path, *loaded.members)
    return tuple(export_verification(p, shas[i] if i < len(shas) else None) for i, p in enumerate(paths))


def verification_gap(runner: Any, path: str | Path) -> str | None:
    """Why hemseg-export's parity gates of the model at ``path`` (run on ONNX Runtime at the model's own precision)
    do not cover what ``runner`` computes, or None when they do: OpenVINO in bf16 (what ``auto`` picks on a CPU with
    AMX or AVX512-BF16) rounds every layer's inputs to 8 bits of mantissa; OpenVINO's own reading of a QDQ INT8
    ONNX graph is not ONNX Runtime's; a gate decided on the logits basis (the export report's ``basis``) never
    compared a lesion mask of a reduced-precision model."""
    gaps = [_backend_gap(runner, path)]
    model = getattr(getattr(runner, "metadata", None), "precision", None)
    # e.g. INT8 calibrated and checked on lesion-free slices: "passed" on logits; FP32's logits gate against PyTorch
    # (relative L2 < 1e-4, no flipped pixel) is the same computation, not a reduced one: no gap
    if model != "fp32" and export_gate_basis(path) == "logits":
        gaps.append("its gate compared logits only: no verification image held a lesion the reference model "
                    "found, so no gate compared lesion masks (export again with --calib data holding lesions)")
    said = [g for g in gaps if g]
    return "; ".join(said) if said else None


def _backend_gap(runner: Any, path: str | Path) -> str | None:
    backend = str(getattr(runner, "name", "") or "")
    computes = getattr(runner, "precision", None)
    model = getattr(getattr(runner, "metadata", None), "precision", None)
    if computes == "bf16" and model in ("fp32", "fp16"):
        return (f"{backend} computes in bf16, the gates checked the {model} model on ONNX Runtime (--backend "
                "openvino-f32 or ort-cpu runs what they checked)")
    if computes == "bf16":  # an OpenVINO INT8 IR: its gate ran it at OpenVINO's f32 for INT8 models
        return (f"{backend} computes its non-INT8 layers in bf16, the gates ran the model in f32 (--backend "
                "openvino runs what they checked)")
    if backend.startswith("openvino") and model == "int8" and Path(path).suffix == ".onnx":
        return ("OpenVINO runs this INT8 (QDQ) ONNX model, the gates checked it on ONNX Runtime (--backend ort-cpu "
                "runs what they checked)")
    return None


def threshold_notes(loaded: LoadedModel) -> list[str]:
    """What to say of each model in ``loaded`` exported from a checkpoint whose threshold was never tuned (an
    interrupted training run's interim best.pt): hemseg predict logs it, hemseg eval puts it in its report, as
    both do for the checkpoint itself."""
    metas = loaded.member_metadata or (loaded.metadata,)
    return [f"{path}: exported from a checkpoint whose threshold was never tuned (a last.pt, the best.pt of a "
            f"training run that did not finish, or of one whose validation split had no lesion): its threshold "
            f"{meta.threshold:.4g} is untuned; export a finished run's best.pt (`hemseg train ... --resume` finishes "
            "an interrupted run; validation images with lesions let it tune)"
            for path, meta in zip((loaded.path, *loaded.members), metas) if meta.threshold_tuned is False]


def warn_threshold_notes(loaded: LoadedModel) -> None:
    """Log :func:`threshold_notes` (hemseg predict, the Python API; hemseg eval reports them instead)."""
    for note in threshold_notes(loaded):
        log.warning("%s", note)


def with_verification(loaded: LoadedModel) -> LoadedModel:
    """``loaded`` with :attr:`LoadedModel.verification` and :attr:`LoadedModel.verification_gaps` filled, each model
    whose verdict does not vouch for this run warned of (a --no-verify export, a file its report is not about, gates
    that do not cover the backend's computation)."""
    runners = getattr(loaded.runner, "members", None) or [loaded.runner]
    paths = (loaded.path, *loaded.members)
    statuses = export_statuses(loaded)
    # a gap is what passed gates do not cover: none for a model they did not pass (its summary's gap said "ort-cpu
    # runs what they checked" of a file changed since the export; QA, stop 59)
    loaded = dataclasses.replace(loaded, verification=statuses,
                                 verification_gaps=tuple(verification_gap(r, p) if s == "passed" else None
                                                         for r, p, s in zip(runners, paths, statuses)))
    for path, status, gap in zip(paths, loaded.verification, loaded.verification_gaps):
        if status == "not verified":
            log.warning("%s: its export report says 'not verified' (--no-verify): hemseg-export's parity gates never "
                        "checked this model (export it again without --no-verify)", path)
        elif status == "unknown":
            log.warning("%s: not the file its export report's verdict is about (changed or replaced since the export, "
                        "of another checkpoint than the report, the report is unreadable or, written by an earlier "
                        "hemseg, records no hash of the file): its parity gates are "
                        "unknown; export the checkpoint again into this folder", path)
        elif status not in (None, "passed"):  # "failed" (a hand-made or older report) was said nowhere
            log.warning("%s: its export report's verdict is %r, not 'passed': the parity gates do not vouch for this "
                        "model", path, status)
        elif status == "passed" and gap:
            log.warning("%s: its export passed its parity gates, but they do not cover this run: %s", path, gap)
    return loaded
