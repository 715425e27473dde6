#!/usr/bin/env bash
# EfficientNetV2-S on an accelerator (GPU or TPU): train step and eval forward at 300 and 384 px
# in bfloat16 with XLA's convolutions, and timm side by side where PyTorch sees a GPU.
#
#   benchmarks/accelerator.sh OUT_DIR            # CSV + PNG per run in OUT_DIR, log in OUT_DIR/log
#
# Needs only the project's pinned environment (jax[cuda12] or jax[tpu]; the timm comparison also
# the `convert` extra); no network, no installs. Each run has its own time limit (the *_LIMIT
# variables, seconds) so the whole script ends within 8 minutes even if one run hangs; a run
# that fails or times out is logged and the rest go on. Environment overrides (all optional):
#   SIZES="300 384"  BATCH=64  DTYPE=bfloat16  STEPS=10  PEAK_SIZE=8192  PYTHON=python
# A CPU smoke test of the script itself:
#   SIZES=64 BATCH=4 STEPS=1 PEAK_SIZE=256 TRAIN_LIMIT=900 EVAL_LIMIT=600 benchmarks/accelerator.sh /tmp/accel
set -uo pipefail

OUT=${1:?usage: benchmarks/accelerator.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PYTHON=${PYTHON:-python}
SIZES=${SIZES:-"300 384"}
BATCH=${BATCH:-64}
DTYPE=${DTYPE:-bfloat16}
STEPS=${STEPS:-10}
PEAK_SIZE=${PEAK_SIZE:-8192}
TIMM=${TIMM:-1}
TRAIN_LIMIT=${TRAIN_LIMIT:-130}
EVAL_LIMIT=${EVAL_LIMIT:-60}
TIMM_LIMIT=${TIMM_LIMIT:-300}  # both libraries, each warmed up, at two sizes: 100 s was too little on an H200
export TF_CPP_MIN_LOG_LEVEL=2
LOG="$OUT/log"
: > "$LOG"
failures=0

run() {  # run LIMIT_SECONDS ARGS...: one benchmark, its output to the log and the terminal
  local limit=$1
  shift
  echo "== $(date +%T) $*" | tee -a "$LOG"
  if ! timeout --kill-after=10 "$limit" "$PYTHON" "$@" 2>&1 | grep -v -i warning | tee -a "$LOG"; then
    echo "!! failed or timed out after ${limit}s: $*" | tee -a "$LOG"
    failures=$((failures + 1))
  fi
}

"$PYTHON" -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee -a "$LOG"
for size in $SIZES; do
  common=(--image-size "$size" --batch "$BATCH" --dtype "$DTYPE" --conv-impl xla
          --steps "$STEPS" --peak-size "$PEAK_SIZE" --out "$OUT")
  run "$TRAIN_LIMIT" benchmarks/train_step.py "${common[@]}" --name "train_step_${size}"
  run "$EVAL_LIMIT" benchmarks/train_step.py "${common[@]}" --eval --name "eval_${size}"
done

if [ "$TIMM" = 1 ] && "$PYTHON" -c "import sys; sys.modules['triton'] = None; import timm, torch
assert torch.cuda.is_available()" 2>/dev/null; then
  sizes=($SIZES)
  run "$TIMM_LIMIT" benchmarks/vs_timm.py --device cuda --dtype "$DTYPE" --conv-impl xla \
    --train-size "${sizes[0]}" --eval-size "${sizes[-1]}" --batch "$BATCH" --repeats "$STEPS" \
    --out "$OUT" --name vs_timm_accelerator
else
  echo "== timm comparison skipped (TIMM=$TIMM, or no torch/timm with a CUDA device)" | tee -a "$LOG"
fi
echo "== done, $failures failed; results in $OUT" | tee -a "$LOG"
exit $((failures > 0))
