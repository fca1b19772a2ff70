#!/usr/bin/env bash
# Issue 41's figures on a lent GPU (no network there), one part per 10-minute device call
# (benchmarks/gpu_cold_start.py): PART=cold_start, a fresh warm-path worker's first backfill of IMAGES
# SD-1.5-sized images from a compile cache an earlier process filled, against its warm rerun, with its loads and
# compile events (about 8 minutes on an H100 when parts compiled just in time; compiling them into ahead-of-time
# packages, now the default, has not been timed on a GPU: on the CPU it took twice as long, 58 s against 27 s for the
# tiny SD shapes' three parts, so this part may pass BENCH_SECONDS there; RANDOM_DIFFUSION_COMPILE_AHEAD_OF_TIME=0
# gives the just-in-time path); PART=engine_steps, the engine's images/s per optimisation step and
# its fraction of the floor (about 5 minutes). Results and logs go to $RESULTS (default $OUT); merge the two here:
#
#   bash scripts/gpu_wheels.sh                                  # here, once: the wheels the machine lacks (.whl/)
#   device run, carry [".whl"]: PART=cold_start bash scripts/gpu_cold_start.sh
#   device run, carry [".whl"]: PART=engine_steps bash scripts/gpu_cold_start.sh
#   python benchmarks/gpu_cold_start.py --merge cold_start.json engine_steps.json --out benchmarks/results/<card>-cold-start.json
#   PART=cold_start SHAPES=tiny IMAGES=16 bash scripts/gpu_cold_start.sh   # the path, on a CPU (minutes)
# Knobs (environment): PART (cold_start), IMAGES (512), ENGINE_IMAGES (64: the cache-filling engine pass),
# STEPS (engine,compiled_vae,compiled_jit,cuda_graphs,fp8), BATCH (32), BENCH_SECONDS (560: the benchmark is stopped then), SHAPES.
set -u
RESULTS=${RESULTS:-${OUT:-/tmp/gpu-results}}
PART=${PART:-cold_start}
PYTHON=${PYTHON:-python3}
mkdir -p "$RESULTS"
# shellcheck source=scripts/gpu_setup.sh
. scripts/gpu_setup.sh
shapes=(--model-shapes "${SHAPES:-full}")
timeout "${BENCH_SECONDS:-560}" $PYTHON benchmarks/gpu_cold_start.py --parts "$PART" "${shapes[@]}" \
    --images "${IMAGES:-512}" --engine-images "${ENGINE_IMAGES:-64}" \
    --engine-steps "${STEPS:-engine,compiled_vae,compiled_jit,cuda_graphs,fp8}" --batch-size "${BATCH:-32}" \
    --out "$RESULTS/$PART.json" >"$RESULTS/$PART.log" 2>&1
echo "benchmark exit $? after $(($(date +%s) - started)) s"
grep -v "^ \|Writing model shards\|should be kept in float32" "$RESULTS/$PART.log" | tail -12
