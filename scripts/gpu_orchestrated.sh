#!/usr/bin/env bash
# One lent-GPU session of benchmarks/orchestrated_throughput.py (no network there): install the carried
# wheels, then a 512-image backfill over four SD-1.5-sized models through a real daemon on the warm path
# (celery worker that keeps pipelines loaded), the bare engine on the same images, and the project's
# default settings if time is left. Results and logs go to $RESULTS (default $OUT).
#
#   bash scripts/gpu_orchestrated.sh            # on the GPU machine, from the repository root, .whl carried
#   IMAGES=16 SHAPES=tiny bash scripts/gpu_orchestrated.sh   # the same path on a CPU, in minutes
# Knobs (environment): IMAGES (512), ENGINE_IMAGES (all), SENSOR_IMAGES (128), BUDGET_SECONDS (380: no variant
# or sensor figure starts later), BENCH_SECONDS (540: the benchmark is stopped then), SHAPES (full), RESULTS.
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
started=$(date +%s)
if [ -d .whl ]; then
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl .whl/fallback/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
echo "installed in $(($(date +%s) - started)) s"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,temperature.gpu --format=csv \
    >"$RESULTS/smi.txt" 2>&1
$PYTHON -c "import torch, diffusers, transformers, dagster, dagster_celery, celery, sys
print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'diffusers',
      diffusers.__version__, 'transformers', transformers.__version__, 'dagster', dagster.__version__)" \
    2>&1 | tee "$RESULTS/versions.txt" | tail -1
# The headline: the warm path (README "One GPU, warm"); then the project's defaults while time is left.
timeout "${BENCH_SECONDS:-540}" $PYTHON benchmarks/orchestrated_throughput.py \
    --model-shapes "$SHAPES" --images "$IMAGES" --sensor-images "${SENSOR_IMAGES:-128}" \
    ${ENGINE_IMAGES:+--engine-images "$ENGINE_IMAGES"} \
    --budget-seconds "${BUDGET_SECONDS:-380}" --settle-seconds 5 \
    --variant executor=celery,resident=4,per_run=128 --variant "" \
    --out "$RESULTS/orchestrated-gpu.json" >"$RESULTS/orchestrated-gpu.log" 2>&1
echo "benchmark exit $? after $(($(date +%s) - started)) s"
grep -v "^ \|Writing model shards\|should be kept in float32" "$RESULTS/orchestrated-gpu.log" | tail -20
