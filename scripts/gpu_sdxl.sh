#!/usr/bin/env bash
# Issue 35's SDXL figure on a lent GPU (no network there): an SDXL-sized random-weight pipeline at 1024 px, 30 steps,
# strength 0.6, batched through the engine against plain diffusers one image per call, and the peak GPU memory with
# it and two SD-1.5-sized pipelines resident (benchmarks/gpu_throughput.py --family sdxl). Results and logs go to
# $RESULTS (default $OUT).
#
#   bash scripts/gpu_wheels.sh                       # here, once: the wheels the machine lacks (.whl/)
#   device run, carry [".whl"]: bash scripts/gpu_sdxl.sh
#   SHAPES=tiny bash scripts/gpu_sdxl.sh             # the path, on a CPU (seconds)
# Knobs (environment): BATCH (8), REPEATS (3), BENCH_SECONDS (540: the benchmark is stopped then), SHAPES (full).
set -u
RESULTS=${RESULTS:-${OUT:-/tmp/gpu-results}}
PYTHON=${PYTHON:-python3}
mkdir -p "$RESULTS"
# shellcheck source=scripts/gpu_setup.sh
. scripts/gpu_setup.sh
tiny=()
[ "${SHAPES:-full}" = tiny ] && tiny=(--tiny)
timeout "${BENCH_SECONDS:-540}" $PYTHON benchmarks/gpu_throughput.py --family sdxl "${tiny[@]}" \
    --batch-size "${BATCH:-8}" --repeats "${REPEATS:-3}" --out "$RESULTS/sdxl-gpu.json" >"$RESULTS/sdxl-gpu.log" 2>&1
echo "benchmark exit $? after $(($(date +%s) - started)) s"
grep -v "^ \|Writing model shards\|should be kept in float32" "$RESULTS/sdxl-gpu.log" | tail -12
