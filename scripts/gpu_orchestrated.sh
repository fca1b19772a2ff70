#!/usr/bin/env bash
# One lent-GPU session of benchmarks/orchestrated_throughput.py (no network there): install the carried
# wheels, then the warm path on four SD-1.5-sized models: a Celery worker that keeps its pipelines loaded and,
# on a CUDA GPU, compiles them by default. A first backfill on the fresh worker (WARMUP_IMAGES: it pays the loads
# and the compilation), then a second backfill of all IMAGES on the same worker (the headline: what every later
# backfill gets), then the bare engine, compiled, two passes over ENGINE_IMAGES in one process (the second is its
# best; its compilation reads the worker's kernels: on the same first images as the first backfill its batches
# have the same shapes (run 3: 12, 5, 6, 9 in both), so every graph comes from the cache; there the engine's first
# pass spent about 29 s compiling, the worker's first backfill about 147 s). Results and logs go to $RESULTS
# (default $OUT).
#
#   bash scripts/gpu_orchestrated.sh            # on the GPU machine, from the repository root, .whl carried
#   IMAGES=16 WARMUP_IMAGES=8 ENGINE_IMAGES=8 SHAPES=tiny bash scripts/gpu_orchestrated.sh   # the path, on a CPU
# Knobs (environment): IMAGES (512: the timed second backfill), WARMUP_IMAGES (64: the first backfill),
# ENGINE_IMAGES (64: keep it equal to WARMUP_IMAGES), SENSOR_IMAGES (0), BUDGET_SECONDS (400: no variant or later
# figure starts after), BENCH_SECONDS (560: the benchmark is stopped then), SHAPES (full), RESULTS,
# TORCHINDUCTOR_CACHE_DIR (/tmp/rd-compile-cache: kept on the machine, so a second call on it compiles from the
# first's kernels).
#
# The wheels (.whl/, git-ignored) are the project's dependencies for Python 3.12 minus what the machine
# has (torch, transformers, numpy...); .whl/fallback holds newer protobuf, grpcio, click, typing-extensions
# and python-dateutil than the machine may have (dagster's gRPC health check needs grpcio >= 1.81.1).
# scripts/gpu_wheels.sh rebuilds them here, at the versions in .venv.
set -u
RESULTS=${RESULTS:-${OUT:-/tmp/gpu-results}}
IMAGES=${IMAGES:-512}
SHAPES=${SHAPES:-full}
PYTHON=${PYTHON:-python3}
mkdir -p "$RESULTS"
# shellcheck source=scripts/gpu_setup.sh
. scripts/gpu_setup.sh
# The warm path as README "The warm path on one GPU" sets it up, with no speed flags: compilation is its default.
timeout "${BENCH_SECONDS:-560}" $PYTHON benchmarks/orchestrated_throughput.py \
    --model-shapes "$SHAPES" --images "$IMAGES" --sensor-images "${SENSOR_IMAGES:-0}" \
    --engine-images "${ENGINE_IMAGES:-64}" --engine-compile --engine-last --warm-rerun \
    --warmup-images "${WARMUP_IMAGES:-64}" \
    --budget-seconds "${BUDGET_SECONDS:-400}" --settle-seconds 5 \
    --variant executor=celery,resident=4 \
    --out "$RESULTS/orchestrated-gpu.json" >"$RESULTS/orchestrated-gpu.log" 2>&1
echo "benchmark exit $? after $(($(date +%s) - started)) s"
grep -v "^ \|Writing model shards\|should be kept in float32" "$RESULTS/orchestrated-gpu.log" | tail -20
