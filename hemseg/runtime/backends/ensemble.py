"""Model ensembles as one :class:`Runner` (``hemseg eval --ensemble-with``).

:class:`EnsembleRunner` runs several engines on the same preprocessed batch and returns the logit of the mean of
their probabilities, the way nnU-Net ensembles its cross-validation folds (it averages softmax probabilities). The
members must share one preprocessing definition and input size, since the pipeline preprocesses once for all of
them: :func:`check_members` refuses anything else. The ensemble's threshold is the mean of the members' tuned
thresholds (:func:`ensemble_threshold`), each tuned on its own validation split.

:func:`open_ensemble` opens several exported models as one :class:`~hemseg.runtime.backends.select.LoadedModel`
(``hemseg predict MODEL --ensemble-with MODEL2 ...``): same backend for all, the ensemble's threshold in its
metadata, the other files in ``members``.

Why: a model trained from scratch on a few dozen slices depends on its seed (and on its fold) about as much as on
any recipe change; averaging several such models removes part of that variance at the price of one inference each.
Combine with :class:`hemseg.runtime.backends.tta.FlipTTARunner` by wrapping the ensemble.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hemseg.errors import UsageError
from hemseg.runtime.backends.base import InferTimings, Runner, finite_logits
from hemseg.runtime.backends.tta import mean_probability_logits
from hemseg.runtime.model_file import model_digest
from hemseg.runtime.preprocess import PreprocessSpec

log = logging.getLogger(__name__)


def check_members(names: Sequence[str], specs: Sequence[PreprocessSpec]) -> None:
    """A :class:`UsageError` naming the first member whose preprocessing (size included) differs from the first's."""
    first = specs[0].to_dict()
    for name, spec in zip(names[1:], specs[1:]):
        if spec.to_dict() != first:
            diff = sorted(k for k in set(first) | set(spec.to_dict()) if first.get(k) != spec.to_dict().get(k))
            raise UsageError(f"{name}: cannot join an ensemble with {names[0]}: its preprocessing differs "
                             f"({', '.join(diff)})")


def check_distinct(names: Sequence[str], digests: Sequence[str]) -> None:
    """A :class:`UsageError` naming a member whose content (``digests``) is another member's: one model given twice
    (a fold and itself, a copy of MODEL) was averaged as two, weighing it double, and recorded as a two-model
    ensemble."""
    seen: dict[str, str] = {}
    for name, digest in zip(names, digests):
        if digest in seen:
            raise UsageError(f"{name}: the same model as {seen[digest]} (identical content): an ensemble averages "
                             "distinct models, and one given twice would count twice")
        seen[digest] = name


def warn_same_checkpoint(names: Sequence[str], checkpoints: Sequence[str]) -> None:
    """A warning naming members exported from one checkpoint (``model.onnx`` beside its ``model_int8.onnx``): their
    files differ, so :func:`check_distinct` lets them in, but they are one model in two precisions, and the
    ensemble of them was recorded as one of two models without a word (QA, stop 56)."""
    groups: dict[str, list[str]] = {}
    for name, sha in zip(names, checkpoints):
        if sha.strip("0"):  # (hand-made test models record sixty-four zeros)
            groups.setdefault(sha, []).append(name)
    for sha, same in groups.items():
        if len(same) > 1:
            log.warning("%s are exports of one checkpoint (%s): an ensemble of one model in %d forms, not of %d "
                        "models", " and ".join(same), sha[:12], len(same), len(same))


def ensemble_threshold(thresholds: Sequence[float]) -> float:
    """The members' probability thresholds, averaged."""
    return float(np.mean([float(t) for t in thresholds]))


class EnsembleRunner(Runner):
    """Every member on the same batch; the logit of the mean probability. Closing it closes every member;
    ``last_timings`` are the members' times summed."""

    def __init__(self, members: Sequence[Runner]) -> None:
        super().__init__()
        members = list(members)
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        if len({m.on_gpu for m in members}) > 1 or len({np.dtype(m.input_dtype) for m in members}) > 1:
            raise UsageError("ensemble members must run on the same device with the same input dtype: "
                             + ", ".join(f"{m.name} ({'GPU' if m.on_gpu else 'CPU'}, {np.dtype(m.input_dtype)})"
                                         for m in members))
        self.members = members
        self.name = "ensemble(" + ", ".join(m.name for m in members) + ")"
        self.input_dtype = members[0].input_dtype
        self.on_gpu = members[0].on_gpu

    @property
    def precision(self) -> str | None:
        """The members' compute precision (``bf16``, ``f32``, ...; ``a+b`` when they differ; None when none says):
        recorded in predict's summary and the DICOM SEG's algorithm parameters, as for one model."""
        said = [p for p in (getattr(m, "precision", None) for m in self.members) if p]
        return None if not said else "+".join(dict.fromkeys(str(p) for p in said))

    def _mean(self, call, xp: Any):
        outs, t = [], InferTimings()
        for m in self.members:
            outs.append(finite_logits(m, xp.asarray(call(m), dtype=xp.float32), xp))  # before the mean hides it
            t = t + m.last_timings
        self.last_timings = t
        return xp.ascontiguousarray(mean_probability_logits(outs, xp))

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self._mean(lambda m: m.infer(batch), np)

    def infer_device(self, batch):
        import cupy

        return self._mean(lambda m: m.infer_device(batch), cupy.get_array_module(batch))

    def close(self) -> None:
        for m in self.members:
            m.close()


def open_ensemble(first: str | Path, others: Sequence[str | Path], backend: str = "auto", device: int = 0,
                  threads: int = 0):
    """``first`` and ``others`` opened with :func:`hemseg.runtime.backends.select.open_model` and joined into one
    LoadedModel whose runner is an :class:`EnsembleRunner` (every engine is closed again if any step fails). A
    folder of fold exports (:func:`hemseg.runtime.model_file.fold_exports`) among them stands for all its folds."""
    from hemseg.runtime.backends.select import check_model_path, open_model
    from hemseg.runtime.model_file import fold_exports

    paths = []
    for given in map(check_model_path, [first, *others]):  # a folder of fold exports (hemseg-export of a --folds run): all its folds
        folds = fold_exports(given)
        if folds:
            log.info("%s: the %d fold exports %s, averaged", given, len(folds), ", ".join(f.name for f in folds))
        paths += folds or [given]
    first, others = paths[0], paths[1:]
    opened = []
    try:
        for path in [first, *others]:
            opened.append(open_model(path, backend, device, threads))
        if len(opened) == 1:
            return opened[0]
        check_distinct([str(m.path) for m in opened], [model_digest(m.path) for m in opened])
        check_members([str(p) for p in [first, *others]], [m.metadata.preprocess for m in opened])
        warn_same_checkpoint([str(m.path) for m in opened], [m.metadata.checkpoint_sha256 for m in opened])
        head = opened[0]
        # the members' precisions, "fp32+int8" when they differ (the summary and a SEG said the first one's alone)
        precision = "+".join(dict.fromkeys(m.metadata.precision for m in opened))
        metas = [m.metadata for m in opened]  # (each member's own: what it was trained on, its threshold's tuning)
        meta = dataclasses.replace(head.metadata, threshold=ensemble_threshold([m.threshold for m in metas]),
                                   precision=precision)
        backends = sorted({m.backend for m in opened})
        return dataclasses.replace(head, runner=EnsembleRunner([m.runner for m in opened]), metadata=meta,
                                   backend="+".join(backends), members=tuple(Path(m.path) for m in opened[1:]),
                                   member_metadata=tuple(metas),
                                   reason=f"ensemble of {len(opened)}: {head.reason}")
    except BaseException:
        for m in opened:
            m.runner.close()
        raise
