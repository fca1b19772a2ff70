# Sourced by the scripts/gpu_*.sh runs on a lent GPU machine (no network there), from the repository root, with
# RESULTS and PYTHON set: installs the carried wheels (.whl/, scripts/gpu_wheels.sh) into /tmp/site, exports the
# paths, and records the GPU (smi.txt) and the versions (versions.txt) in $RESULTS. Sets `started`.
started=$(date +%s)
# Bytecode as a pip install leaves it: the device's image sets PYTHONDONTWRITEBYTECODE=1, and without .pyc files
# every run process there compiled dagster's sources again (its imports: 2.5-3.3 s instead of 1.8-2.1 s,
# benchmarks/results/h100-imports-probe.txt).
unset PYTHONDONTWRITEBYTECODE
if [ -d .whl ]; then
    $PYTHON -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl .whl/fallback/*.whl || exit 1
fi
$PYTHON -m compileall -q -j 0 random_diffusion_dagster benchmarks >/dev/null
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/rd-compile-cache}
echo "installed in $(($(date +%s) - started)) s"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,temperature.gpu --format=csv \
    >"$RESULTS/smi.txt" 2>&1
$PYTHON -c "import importlib.metadata as md, sys, torch
wanted = ('diffusers', 'transformers', 'dagster', 'celery', 'peft')
versions = {d.metadata['Name'].lower(): d.version for d in md.distributions() if d.metadata['Name'].lower() in wanted}
print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), versions)" \
    2>&1 | tee "$RESULTS/versions.txt" | tail -1
