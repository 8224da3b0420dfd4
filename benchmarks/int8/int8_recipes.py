#!/usr/bin/env python
"""INT8 recipe study: ONNX Runtime static quantization variants of one FP32 model, scored against it.

    python benchmarks/int8/int8_recipes.py EXPORT/model.onnx DATA --json OUT.json [--variants a,b,...]

DATA is a hemseg dataset (the one the model was trained on is fine: calibration and verification files are split
exactly as ``hemseg-export --calib DATA`` splits them, with 16 verification images). Each variant is built with
``quantize_static`` on the same pre-processed graph and calibration images, then scored on the verification images:
pooled mask Dice vs the FP32 model (the export gate's measure), the smallest per-image Dice, and the relative L2 error
of the logits. The FP32 model's margin (fraction of its foreground within 0.5 logit of the threshold) and the Dice
that random logit noise of a given relative size would cost are reported beside them, to tell a quantizer's error
from a model's lack of margin. Latency is not measured here (use ``hemseg-bench``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
from onnxruntime import __version__ as ort_version
from onnxruntime import quantization as q
from onnxruntime.quantization.shape_inference import quant_pre_process

from hemseg.export import calib
from hemseg.export.onnx_int8 import float_nodes, make_reader
from hemseg.export.parity import dice_stats, masks_of, near_threshold_fraction, rel_l2_per_image, run_onnx
from hemseg.runtime.model_meta import ModelMetadata

BASE = dict(quant_format=q.QuantFormat.QDQ, per_channel=True, activation_type=q.QuantType.QInt8,
            weight_type=q.QuantType.QInt8, calibrate_method=q.CalibrationMethod.MinMax, reduce_range=False)
PCT = dict(calibrate_method=q.CalibrationMethod.Percentile, extra_options={"CalibPercentile": 99.999})


def variants(pre: onnx.ModelProto) -> dict[str, dict]:
    keep = float_nodes(pre)
    return {
        "all_quantized_8bit": {},
        "all_quantized_7bit": dict(reduce_range=True),
        "hemseg_default_8bit (stem+head float)": dict(nodes_to_exclude=keep),
        "hemseg_default_7bit (stem+head float)": dict(nodes_to_exclude=keep, reduce_range=True),
        "percentile_99.999": dict(PCT),
        "percentile_99.999 + stem/head float": dict(PCT, nodes_to_exclude=keep),
        "entropy": dict(calibrate_method=q.CalibrationMethod.Entropy),
        "u8_activations_7bit": dict(activation_type=q.QuantType.QUInt8, reduce_range=True),
        "u8_activations_8bit": dict(activation_type=q.QuantType.QUInt8),
        "conv_only": dict(op_types_to_quantize=["Conv"]),
        "conv_only + stem/head float": dict(op_types_to_quantize=["Conv"], nodes_to_exclude=keep),
        "qoperator_u8s8_7bit": dict(quant_format=q.QuantFormat.QOperator, activation_type=q.QuantType.QUInt8,
                                    reduce_range=True),
    }


def noise_dice(ref: np.ndarray, threshold: float, rel: float, seed: int = 0) -> float:
    noise = np.random.default_rng(seed).standard_normal(ref.shape).astype(np.float32)
    noise *= rel * np.linalg.norm(ref) / np.linalg.norm(noise)
    return dice_stats(masks_of(ref + noise, threshold), masks_of(ref, threshold))[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("int8_work"))
    ap.add_argument("--variants", default="", help="comma-separated names (default: all)")
    args = ap.parse_args()

    model = onnx.load(str(args.model))
    meta = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})
    cal, ver = calib.dataset_sets(args.data, meta.preprocess, 64, 16)
    args.work.mkdir(parents=True, exist_ok=True)
    pre = args.work / "pre.onnx"
    quant_pre_process(str(args.model), str(pre))
    table = variants(onnx.load(str(pre)))
    names = [n for n in args.variants.split(",") if n] or list(table)
    ref = run_onnx(args.model, ver.images)
    results = []
    for name in names:
        out = args.work / "variant.onnx"
        t0 = time.perf_counter()
        q.quantize_static(str(pre), str(out), make_reader(cal.images), **{**BASE, **table[name]})
        seconds = time.perf_counter() - t0
        got = run_onnx(out, ver.images)
        dice, dice_min = dice_stats(masks_of(got, meta.threshold), masks_of(ref, meta.threshold))
        rel = float(rel_l2_per_image(got.reshape(1, -1), ref.reshape(1, -1))[0])
        results.append({"variant": name, "dice_vs_fp32": dice, "dice_vs_fp32_min_image": dice_min,
                        "rel_l2_vs_fp32": rel, "quantize_seconds": seconds})
        print(json.dumps(results[-1]), flush=True)
    doc = {
        "what": "INT8 post-training quantization recipes vs the FP32 model (mask Dice at the model's threshold)",
        "command": f"python benchmarks/int8/int8_recipes.py {args.model} {args.data} --json {args.json}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "onnxruntime": ort_version},
        "model": {"name": meta.model,
                  "image_size": meta.image_size, "threshold": meta.threshold},
        "calibration": cal.description, "verification": ver.description,
        "fp32_foreground_near_threshold": near_threshold_fraction(ref, meta.threshold),
        "fp32_max_probability": float(1 / (1 + np.exp(-ref.max()))),
        "dice_under_random_logit_noise": {str(r): noise_dice(ref, meta.threshold, r) for r in (0.005, 0.01, 0.02)},
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
