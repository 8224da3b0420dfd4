"""The hemseg metadata every exported model carries, built from the checkpoint config.

ONNX ``metadata_props`` = :meth:`ModelMetadata.to_props` (preprocessing spec JSON, image size, threshold, labels,
hemseg version, checkpoint SHA-256, model name, precision, producer versions) plus ``hemseg.checkpoint_path``: the
absolute path of the checkpoint, so the benchmark can find the PyTorch model the file came from.

``version`` is the hemseg version that *exported* the file; ``producer_versions`` names the packages that shaped it
(torch, onnx, onnxruntime, onnxscript, hemseg; onnxconverter_common for FP16).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

import onnx

import hemseg
from hemseg.errors import ModelError, UsageError
from hemseg.runtime.io.images import checked_labels
from hemseg.runtime.model_meta import PREFIX, ModelMetadata
from hemseg.runtime.preprocess import PreprocessSpec

CHECKPOINT_PATH_KEY = PREFIX + "checkpoint_path"
PRECISIONS = ("fp32", "fp16", "int8")
#: distributions whose versions go into ``producer_versions`` of every export
PRODUCERS = ("torch", "onnx", "onnxruntime", "onnxscript")


def package_version(dist: str) -> str:
    """Installed version of a distribution, or ``"not installed"``."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def producer_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """``{package: version}`` of :data:`PRODUCERS`, ``extra`` distributions and hemseg itself."""
    out = {name: package_version(name) for name in (*PRODUCERS, *extra)}
    out["hemseg"] = hemseg.__version__
    return out


def metadata_from_config(config: Mapping[str, Any], checkpoint_path: str | Path, checkpoint_sha256: str,
                         precision: str = "fp32") -> ModelMetadata:
    """The :class:`ModelMetadata` of a checkpoint config (see the checkpoint contract); ModelError when inconsistent."""
    path = Path(checkpoint_path)
    try:
        spec = PreprocessSpec.from_dict(dict(config["preprocess"]))
    except (UsageError, TypeError, KeyError) as exc:
        raise ModelError(path, f"checkpoint config has an unusable preprocessing spec: {exc}") from None
    from hemseg.train.checkpoint import check_config_consistency, threshold_was_tuned

    check_config_consistency(path, config)
    threshold = float(config["threshold"])
    try:  # 'x' and 255 were tracebacks, [0] an ONNX whose lesion is the background
        labels = checked_labels(config.get("labels"))
    except UsageError as exc:
        raise ModelError(path, f"checkpoint config labels {config.get('labels')!r:.60} are not usable: {exc}") from None

    return ModelMetadata(
        preprocess=spec,
        threshold=threshold,
        labels=labels,
        model=str(config["model"]),
        version=hemseg.__version__,
        checkpoint_sha256=checkpoint_sha256,
        precision=_precision(precision),
        producer_versions=producer_versions(),
        data_fingerprint=str(config.get("data_fingerprint") or ""),
        pixel_digests=tuple(str(d) for d in config.get("pixel_digests") or ()),
        threshold_tuned=threshold_was_tuned(config),
    )


def with_precision(meta: ModelMetadata, precision: str, extra_producers: Iterable[str] = ()) -> ModelMetadata:
    """The same metadata for another precision (and with ``extra_producers`` added to the producer versions)."""
    producers = dict(meta.producer_versions)
    producers.update({name: package_version(name) for name in extra_producers})
    return dataclasses.replace(meta, precision=_precision(precision), producer_versions=producers)


def model_props(meta: ModelMetadata, checkpoint_path: str | Path) -> dict[str, str]:
    """All ``metadata_props`` hemseg writes: :meth:`ModelMetadata.to_props` plus the absolute checkpoint path."""
    props = meta.to_props()
    props[CHECKPOINT_PATH_KEY] = str(Path(checkpoint_path).resolve())
    return props


def write_props(model: onnx.ModelProto, props: Mapping[str, str]) -> onnx.ModelProto:
    """Replace every ``hemseg.*`` entry of ``model.metadata_props`` with ``props`` (other entries are kept)."""
    kept = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    for key, value in kept:
        model.metadata_props.add(key=key, value=value)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=str(value))
    return model


def read_props(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def _precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision
