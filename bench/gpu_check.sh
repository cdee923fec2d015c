#!/usr/bin/env bash
# Issue 14's GPU targets in one prepared run, for a session lent a device (about 8 minutes on
# one H200; each step has a time limit, 600 s in all). From the repository root, with the device tool:
#
#     run  command="bash bench/gpu_check.sh"  timeout_s=600
#
# It needs no install there: the device image's python3 has jax (CUDA), flax, optax, h5py,
# pillow and tqdm; jaxviz runs from the tree (PYTHONPATH=.). Everything it prints goes to
# $OUT/gpu-check.log, and bench/gpu.py's table to $OUT/gpu.md:
#   1. the four seed grids per precision, and the full atlas's ascent (4,224 filters, 64 px,
#      40 steps) cold and warm in one process, with TFLOP/s in direct-conv equivalents;
#   2. `python -m jaxviz.atlas` (PNGs and site included) cold, then warm from the persistent
#      compilation cache in a fresh process and a fresh folder: the "<= 5 s warm" target;
#      then the same in bfloat16;
#   3. the quality atlas (--recipe lucid, 128 px, 512 steps) on 64 filters of three layers with
#      --estimate: its projected time for all 4,224 filters, float32 and bfloat16 (the
#      "<= 5 minutes" target; run it in full in a second call if the estimate is near).
# SMOKE=1 shrinks every step to seconds (a check of the script itself, on a CPU).
set -u
OUT=${OUT:-/tmp/gpu-check-out}
mkdir -p "$OUT"
LOG=$OUT/gpu-check.log
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PY:-python3}
if [ "${SMOKE:-0}" = 1 ]; then
    GPU=(--size 16 --steps 1 --rounds 1 --modes float32:auto)
    ATLAS=(--layers block1_conv1,block2_conv1 --filters 0-3 --size 16 --steps 1)
    QUALITY=(--layers block1_conv1,block2_conv1 --filters 0-1 --size 32 --steps 2)
else
    GPU=(--atlas --rounds 3 --modes float32:auto,bfloat16:auto)
    ATLAS=()
    QUALITY=(--layers block1_conv1,block3_conv1,block5_conv3 --filters 0-63 --size 128 --steps 512)
fi
W=/tmp/gpu-check-work
rm -rf "$W" && mkdir -p "$W"
export JAXVIZ_CACHE=$W/cache  # the persistent compilation cache: empty at the start, kept between the steps

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, its output and wall time in the log
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*" | tee -a "$LOG"
    local t0=$(date +%s%N)
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc, wall $(( ($(date +%s%N) - t0) / 1000000 )) ms" | tee -a "$LOG"
}

{
    date -u
    nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
    $PY -c 'import jax, jaxlib; print("jax", jax.__version__, "jaxlib", jaxlib.__version__, jax.devices())'
} 2>&1 | tee "$LOG"
step "gpu.py" 150 $PY bench/gpu.py "${GPU[@]}" --markdown-out "$OUT/gpu.md"
step "atlas float32 cold" 90 $PY -m jaxviz.atlas "${ATLAS[@]}" --out "$W/a1"
step "atlas float32 warm" 45 $PY -m jaxviz.atlas "${ATLAS[@]}" --out "$W/a2"
step "atlas bfloat16 cold" 90 $PY -m jaxviz.atlas "${ATLAS[@]}" --precision bfloat16 --out "$W/a3"
step "atlas bfloat16 warm" 45 $PY -m jaxviz.atlas "${ATLAS[@]}" --precision bfloat16 --out "$W/a4"
step "quality float32 estimate" 90 $PY -m jaxviz.atlas --recipe lucid "${QUALITY[@]}" --estimate --out "$W/q1"
step "quality bfloat16 estimate" 90 $PY -m jaxviz.atlas --recipe lucid "${QUALITY[@]}" --precision bfloat16 \
    --estimate --out "$W/q2"
ls "$W"/a2/block1_conv1 | head -3 | tee -a "$LOG"
