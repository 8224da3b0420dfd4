#!/usr/bin/env bash
# The GPU check of hemseg: every GPU measurement in one call that fits a 10-minute device budget.
#
#   bash benchmarks/gpu_check.sh OUT [--dry-run]        (from the repository root)
#
# Phases, in priority order, each under its own time cap (timeout), each writing OUT/<NN>_<phase>.json as soon as it
# ends (status ok / partial / skipped / failed / timeout, with the reasons); a phase that fails is recorded and the
# next one runs, and OUT/summary.md (each goal next to its figure) is rewritten after every phase:
#   0 machine     carried wheels (.whl/) installed, nvidia-smi, lscpu, versions, hemseg doctor      <= 60 s
#   1 gpu_tests   pytest -m gpu: CUDA preprocessing against OpenCV, phantom and real slices          <= 90 s
#   2 preprocess  preprocessing speed, CUDA vs OpenCV, batch 1 and 32 of 256 px slices                <= 60 s
#   3 inference   torch CUDA FP32/FP16/BF16, eager and CUDA graph, batch 1/64/16, TFLOP/s, end to end <= 150 s
#   4 train       phantom 12 x 200 (parallel synthesis), hemseg recipe with AMP, <= 4 min of training,
#                 held-out pooled Dice                                                                what is left
#   5 export      ONNX FP32 + FP16 with parity                                                        <= 120 s
# The whole script stops starting work at GPU_CHECK_DEADLINE_S seconds (default 580) so it ends inside a 600 s
# command limit; the training minutes shrink below 4 when earlier phases leave less. OUT holds 8 files at most
# (the six JSON files, summary.md and gpu_check.log); the data, checkpoints and exports go to GPU_CHECK_WORK (default
# a new folder under /tmp). Wheels in .whl/ (see README) are installed with pip --no-index into /tmp/site.
#
# --dry-run: every phase on the CPU at toy sizes (64 px, 4 training steps), GPU-only parts reported as skipped;
# tests/test_gpu_check.py runs it in CI.
set -uo pipefail

usage() { echo "usage: bash benchmarks/gpu_check.sh OUT [--dry-run]" >&2; exit 2; }
OUT=""
DRY=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY="--dry-run" ;;
    -h|--help) usage ;;
    -*) echo "gpu_check.sh: unknown option $arg" >&2; usage ;;
    *) [ -z "$OUT" ] || usage; OUT=$arg ;;
  esac
done
[ -n "$OUT" ] || usage
[ -f benchmarks/gpu_check/run.py ] || { echo "gpu_check.sh: run it from the hemseg repository root" >&2; exit 2; }

START=$(date +%s)
DEADLINE_S=${GPU_CHECK_DEADLINE_S:-580}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/hemseg_gpu_check.XXXXXX)}
mkdir -p "$WORK"
LOG="$OUT/gpu_check.log"
: >"$LOG"
export PYTHONUNBUFFERED=1
say() { echo "[gpu_check $(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

# -- phase 0, first part: the carried wheels (before any Python of hemseg runs) ---------------------------------------
SITE=${GPU_CHECK_SITE:-/tmp/site}
[ -z "$DRY" ] || SITE="$WORK/site"          # a dry run never installs outside its work folder
if ls .whl/*.whl >/dev/null 2>&1; then
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
      >>"$LOG" 2>&1; then
    export GPU_CHECK_WHEELS="installed into $SITE: $(cd .whl && ls *.whl | tr '\n' ' ')"
    export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  else
    export GPU_CHECK_WHEELS="FAILED to install .whl/*.whl (see gpu_check.log)"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
else
  export GPU_CHECK_WHEELS="none (.whl/ absent)"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
# real MR slices for the GPU parity tests, when carried (README: .carry/real)
if [ -d .carry/real ] && [ -z "${HEMSEG_REAL_DATA:-}" ]; then export HEMSEG_REAL_DATA="$PWD/.carry/real"; fi
say "OUT=$OUT WORK=$WORK deadline ${DEADLINE_S}s ${DRY:-(GPU run)}; wheels: $GPU_CHECK_WHEELS"

DRIVER=benchmarks/gpu_check/run.py
# run_phase NAME CAP_S [RESERVE_S]: run one phase under timeout, with at most CAP_S seconds and never past the
# deadline minus RESERVE_S (time kept for the phases after it); then record how it ended and rewrite summary.md.
run_phase() {
  local name=$1 cap=$2 reserve=${3:-0}
  local left=$(( DEADLINE_S - ($(date +%s) - START) - reserve ))
  if (( left < 10 )); then
    say "phase $name: skipped, ${left}s left before the deadline"
    "$PY" "$DRIVER" skip "$name" "$OUT" $DRY --reason "the script's ${DEADLINE_S} s deadline left no time" >>"$LOG" 2>&1
  else
    (( cap > left )) && cap=$left
    say "phase $name: start (cap ${cap}s)"
    timeout --kill-after=10 "$cap" "$PY" "$DRIVER" "$name" "$OUT" --work "$WORK" --cap "$cap" $DRY 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    "$PY" "$DRIVER" finalize "$name" "$OUT" --rc "$rc" --cap "$cap" --log "$LOG" $DRY >>"$LOG" 2>&1
    say "phase $name: exit $rc"
  fi
  "$PY" "$DRIVER" summary "$OUT" $DRY >>"$LOG" 2>&1 || say "summary.md could not be written"
}

run_phase machine 60
run_phase gpu_tests 90
run_phase preprocess 60
run_phase inference 150
run_phase train 100000 90         # all that is left but the export's share; it sizes --minutes to fit
run_phase export 120
say "done; summary: $OUT/summary.md"
cat "$OUT/summary.md"
