#!/usr/bin/env bash
# Rebuilds .whl/ (git-ignored), the wheels that scripts/gpu_orchestrated.sh installs with `pip install --no-index
# --no-deps --target /tmp/site` on a lent GPU machine that has no network: Python 3.12 on x86_64 Linux, with
# torch, transformers, numpy, pandas... already there (the device image's package list, DEVICE below).
#
#   bash scripts/gpu_wheels.sh      # here, with the project's .venv (or PYTHON=that venv's python)
#
# .whl/ gets the runtime dependencies of the project and of its celery and quantize extras, resolved transitively from the
# metadata in .venv at the versions installed there, downloaded as CPython 3.12 manylinux x86_64 or pure wheels,
# less what the device has and less what runs there need not (dagster-webserver, dagster-graphql, dagster-dg-cli,
# dagster-postgres, psycopg2-binary: the benchmark drives the daemon, a Celery worker and `dagster` commands).
# .whl/fallback/ holds newer protobuf, grpcio, click, typing-extensions and python-dateutil than the device may
# have; .whl/ also holds a metadata-only wheel of the project itself, so that the `random-diffusion` command and
# importlib.metadata.version('random_diffusion_dagster') work while the code is imported from the checkout.
# pins.txt in each folder lists what was taken. The folder travels with the working tree (64 MiB in all, where
# `run` names .whl in carry): the script prints its size, and adds /.whl/ to .git/info/exclude if not ignored.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
started=$(date +%s)

# Not needed there, with everything only they require.
SKIP="dagster-webserver dagster-graphql dagster-dg-cli dagster-postgres psycopg2-binary dagster-k8s"
# Carried in fallback/ although the device has them: newer than the device's (dagster's gRPC health check wants
# grpcio and protobuf as new as grpcio-health-checking; pydantic typing-extensions >= 4.16, celery
# python-dateutil == 2.9.0.post0 and click >= 8.3.1). grpcio is taken at grpcio-health-checking's version.
FALLBACK="grpcio protobuf typing-extensions click python-dateutil"
# The device image's Python packages (as listed for its 'cuda' image on 2026-11-17).
DEVICE="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec
patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server
tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3
uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"

if ! git check-ignore -q .whl/x.whl; then
    echo /.whl/ >>"$(git rev-parse --git-common-dir)/info/exclude"
fi
[ -x "$PYTHON" ] || { echo "no $PYTHON: install the project's .venv first, or set PYTHON" >&2; exit 1; }
new=$(mktemp -d)
trap 'rm -rf "$new"' EXIT
mkdir "$new/fallback"

# name==version lines into $new/pins.txt and $new/fallback/pins.txt.
SKIP=$SKIP FALLBACK=$FALLBACK DEVICE=$DEVICE "$PYTHON" - "$new" <<'EOF'
import importlib.metadata as md
import os
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "os_name": "posix"}
skip, fallback, device = ({canonicalize_name(n) for n in os.environ[k].split()} for k in ("SKIP", "FALLBACK", "DEVICE"))
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
todo = [
    Requirement(r)
    for r in project["dependencies"]
    + project["optional-dependencies"]["celery"]
    + project["optional-dependencies"]["quantize"]  # the engine steps' fp8 (scripts/gpu_cold_start.sh)
]
carried, visited = set(), set()
while todo:
    req = todo.pop()
    name = canonicalize_name(req.name)
    if name in skip or (name, frozenset(req.extras)) in visited:
        continue
    visited.add((name, frozenset(req.extras)))
    if name in device and name not in fallback:
        continue
    carried.add(name)
    for line in md.requires(name) or []:
        sub = Requirement(line)
        if sub.marker is None or any(sub.marker.evaluate({**ENV, "extra": e}) for e in ["", *req.extras]):
            todo.append(sub)
main = sorted(carried - fallback)
pins = {name: md.version(name) for name in carried | fallback}
pins["grpcio"] = md.version("grpcio-health-checking")
for path, names in (("pins.txt", main), ("fallback/pins.txt", sorted(fallback))):
    with open(f"{sys.argv[1]}/{path}", "w") as out:
        out.writelines(f"{name}=={pins[name]}\n" for name in names)
EOF

download() {
    "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --abi cp312 --platform manylinux2014_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_34_x86_64 "$@"
}
mapfile -t pins <"$new/pins.txt"
download -d "$new" "${pins[@]}"
mapfile -t pins <"$new/fallback/pins.txt"
download -d "$new/fallback" "${pins[@]}"

# The project's own metadata-only wheel: its console scripts and version, no code (that comes from the checkout).
"$PYTHON" - "$new" <<'EOF'
import base64
import hashlib
import sys
import tomllib
import zipfile

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
name, version = project["name"], project["version"]
info = f"{name}-{version}.dist-info"
scripts = "".join(f"{key} = {value}\n" for key, value in project["scripts"].items())
files = {
    f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: scripts/gpu_wheels.sh\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    f"{info}/entry_points.txt": f"[console_scripts]\n{scripts}",
}
record = []
with zipfile.ZipFile(f"{sys.argv[1]}/{name}-{version}-py3-none-any.whl", "w", zipfile.ZIP_DEFLATED) as wheel:
    for path, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}\n")
        wheel.writestr(path, data)
    wheel.writestr(f"{info}/RECORD", "".join(record) + f"{info}/RECORD,,\n")
EOF

rm -rf .whl
mv "$new" .whl
chmod 755 .whl
wheels=(.whl/*.whl) fallback=(.whl/fallback/*.whl)
echo "${#wheels[@]} wheels + ${#fallback[@]} in fallback/: $(du -sh .whl | cut -f1) in .whl/," \
    "$(($(date +%s) - started)) s"
