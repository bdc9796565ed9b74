#!/usr/bin/env bash
# Issue 7's GPU checks in one call on a lent H200 (under 10 minutes; every step has its own time limit, so one
# that hangs or runs out of memory costs only its slot). Prepare here once: bash benchmarks/device_wheels.sh.
# Then, with the device tool:  run(command="bash benchmarks/device_suite.sh", carry=[".whl"], timeout_s=600)
# Writes $OUT/suite.log (everything printed), $OUT/gpu.txt and one JSON per step (at most 8 files come back).
set -u
OUT=${OUT:-device_out}
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="$OUT/suite.log"

step() {  # step NAME LIMIT_S ARGS...: one benchmark, its JSON in $OUT/NAME.json, its output in suite.log
    local name=$1 limit=$2
    shift 2
    echo "=== $name: python3 $* ($(date -u +%T), limit ${limit} s)" | tee -a "$LOG"
    timeout "$limit" python3 "$@" --json "$OUT/$name.json" 2>&1 | grep -v "UserWarning\|warnings.warn" | tee -a "$LOG"
    echo "=== $name: exit ${PIPESTATUS[0]} ($(date -u +%T))" | tee -a "$LOG"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

# 1. bf16 / compile correctness: ours fp32 = reference, ours bf16 ~ fp32, compiled ~ eager
step fast_path 100 benchmarks/fast_path_check.py --device cuda --compile
# 2. The headline: the release's way (fp32, RAFT-large every step, per-crop loop) vs ours (cached flow), full recipe
step full_release 150 benchmarks/train_step.py --config full --device cuda --steps 5 --flow release --roofline
# 3. Ours compiled, fed by the engine's loader from prepared shards: MFU, pairs/s, peak memory, data wait, syncs
step full_ours_shards 220 benchmarks/train_step.py --config full --device cuda --paths ours --compile --data shards \
    --steps 10
# 4. The full-resolution dense loss alone, eager vs compiled: the roofline's bottleneck (143 of 215 ms eager)
step dense_loss 90 benchmarks/dense_loss_compile.py --device cuda --images 16 --size 512 1024
# (in a second call if time is left: the ablation config, 256x512, and the composed dense-loss resampling:
#  python3 benchmarks/train_step.py --config ablation --device cuda --steps 5
#  python3 benchmarks/train_step.py --config full --device cuda --paths ours --steps 5 objective.dense_resample=composed
#  python3 benchmarks/dense_loss_compile.py --device cuda --images 16 --size 512 1024 --resample composed)
