#!/usr/bin/env bash
# GPU recipe: run every GPU measurement of hemseg on a CUDA machine that has torch (CUDA), CuPy, onnxruntime (CPU
# build), onnx/onnxscript and OpenCV but no TensorRT and no network, and write the results into OUT_DIR.
#
#   bash benchmarks/gpu_recipe.sh OUT_DIR [PER_CATEGORY] [EPOCHS]
#
# pydicom, nibabel and onnxconverter-common are pure-Python wheels; if the machine lacks them, put their wheels in
# ./.whl (pip download --no-deps ...) and this script installs them into /tmp/site without network.
# Steps: GPU parity tests of the CUDA preprocessing -> preprocessing speed (OpenCV vs CUDA) -> paper-scale training
# (phantom, 200 per category, 256 px, 20 epochs, FCN-ResNet50, mixed precision) -> held-out evaluation -> ONNX FP32 +
# FP16 export -> hemseg-bench over every path with batch sizes 1,4,16.
set -euo pipefail
OUT=${1:?usage: gpu_recipe.sh OUT_DIR [PER_CATEGORY] [EPOCHS]}
PER=${2:-200}
EPOCHS=${3:-20}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=python3
$py -m hemseg doctor | tee "$OUT/doctor.txt"
$py -m pytest -q -m gpu tests/test_cuda_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" || true
$py benchmarks/gpu_preprocess_bench.py --json "$OUT/gpu_preprocess.json" 2>&1 | tee "$OUT/gpu_preprocess.log" || true
W=/tmp/hemseg_gpu
rm -rf "$W"; mkdir -p "$W"
$py -m hemseg data synth "$W/phantom" --per-category "$PER" --seed 0
$py -m hemseg data synth "$W/heldout" --per-category 20 --seed 1000
/usr/bin/time -v $py -m hemseg train "$W/phantom" --out "$W/run" --epochs "$EPOCHS" --image-size 256 --batch-size 16 \
  --device cuda --workers 4 2>&1 | tee "$OUT/train.log"
cp "$W/run/metrics.json" "$OUT/train_metrics.json"; cp "$W/run/history.csv" "$OUT/train_history.csv"
$py -m hemseg eval "$W/run/best.pt" "$W/heldout" --out "$W/eval" --device cuda
cp "$W/eval/summary.json" "$OUT/heldout_summary.json"
$py -m hemseg.cli.export_cmd "$W/run/best.pt" --out "$W/export" --format onnx,onnx-fp16
cp "$W/export/export_report.json" "$OUT/export_report.json"
$py -m hemseg.cli.bench_cmd "$W/export" --batch-sizes 1,4,16 --seconds 5 --json "$OUT/bench_gpu.json" \
  --markdown "$OUT/bench_gpu.md" --plot "$OUT/bench_gpu.png"
echo "results in $OUT"
