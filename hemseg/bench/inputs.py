"""What the benchmark feeds every path: phantom slices by default, or the images of a dataset (``--data``)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np

from hemseg.errors import ModelError, UsageError
from hemseg.runtime.io.regular import read_regular_text
from hemseg.runtime.model_meta import MetadataError, ModelMetadata


def phantom_pool(n: int, seed: int = 1234) -> list[np.ndarray]:
    """``n`` phantom slices, cycling through the 12 categories (non-square sizes, so the resize is exercised)."""
    from hemseg.phantom import CATEGORIES, render_case

    return [render_case(CATEGORIES[i % len(CATEGORIES)], seed + i)[0] for i in range(n)]


def dataset_pool(data: Path, n: int) -> list[np.ndarray]:
    """The first ``n`` slices of a hemseg dataset's images, mapped to uint8 by the runtime's documented rule."""
    from hemseg.runtime.dataset import discover, load_pair

    index = discover(data)
    pool: list[np.ndarray] = []
    for sample in index.samples:
        image, _ = load_pair(sample)
        pool.extend(image[i] for i in range(image.shape[0]))
        if len(pool) >= n:
            break
    if not pool:
        raise UsageError(f"{data}: no usable image/mask pairs to benchmark on")
    return pool[:n]


def read_export_metadata(export_dir: Path) -> tuple[ModelMetadata, dict[str, str]]:
    """The hemseg metadata of ``EXPORT_DIR/model.onnx`` (or of the TensorRT sidecar when only an engine is there)."""
    onnx_path = export_dir / "model.onnx"
    sidecar = export_dir / "model.plan.json"
    try:
        if onnx_path.is_file():
            from hemseg.runtime.backends.ort import import_ort

            props = dict(import_ort().InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
                         .get_modelmeta().custom_metadata_map)
            return ModelMetadata.from_props(props), props
        if sidecar.is_file():
            props = json.loads(read_regular_text(sidecar))["metadata"]
            return ModelMetadata.from_props(props), props
    except MetadataError as exc:
        raise ModelError(onnx_path if onnx_path.is_file() else sidecar, str(exc)) from None
    except Exception as exc:
        raise ModelError(onnx_path, f"cannot be read: {str(exc).splitlines()[0][:200]}") from None
    for p in (onnx_path, sidecar):
        if os.path.lexists(p):  # a folder, a link to nothing, a pipe under the model's name: said as such
            raise ModelError(p, "not a regular file; give the folder hemseg-export wrote")
    folds = sorted(p.name for p in export_dir.glob("fold_*") if (p / "model.onnx").is_file())
    if folds:
        raise UsageError(f"{export_dir}: a K-fold export ({len(folds)} fold folders); benchmark one fold's model: "
                         f"hemseg-bench {export_dir / folds[0]}")
    raise UsageError(f"{export_dir}: no model.onnx or model.plan.json; give the folder hemseg-export wrote")


def count_gflop(model, size: int) -> float | None:
    """FLOPs of one forward pass at ``size`` px (torch's FlopCounterMode: 2 per multiply-add), in GFLOP."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9
