"""What the compile cache saves a process that compiles again (a restarted warm worker).

    python benchmarks/compile_cache.py --out benchmarks/results/compile-cache-cpu.json

Two fresh processes, one after the other, share one empty TORCHINDUCTOR_CACHE_DIR (as a worker's
`.dagster/torch-compile-cache`): each loads the demo model tiny-sd15 (data/models) with the engine's
`compile_unet` speedup and times pipeline calls at batch sizes 4, 3 and 2 (96 px, 10 steps, 1 torch thread).
The first size compiles one package for every batch size (the batch dimension is dynamic), the others reuse it;
the first process compiles from nothing, the second loads the first one's package from the cache (`compiled_graphs`
counts packages compiled, not loaded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH_SIZES = (4, 3, 2)


def child() -> None:
    """One process: load, compile by calling, print the seconds per call as JSON."""
    import torch
    from PIL import Image

    from random_diffusion_dagster.engine.catalog import load_catalog
    from random_diffusion_dagster.engine.pipelines import Speedups, compiled_graphs, load_pipeline

    torch.set_num_threads(1)
    spec = next(s for s in load_catalog(ROOT / "data" / "models.yaml") if s.name == "tiny-sd15")
    pipeline = load_pipeline(spec, "cpu", speedups=Speedups(compile_unet=True))
    pipeline.set_progress_bar_config(disable=True)
    image = Image.new("RGB", (96, 96), (120, 30, 200))
    seconds = {}
    for size in BATCH_SIZES:
        started = time.perf_counter()
        pipeline(
            ["a cat"] * size,
            image=[image] * size,
            strength=0.6,
            num_inference_steps=10,
            generator=[torch.Generator().manual_seed(i) for i in range(size)],
        )
        seconds[str(size)] = round(time.perf_counter() - started, 2)
    print("COMPILE " + json.dumps({"seconds_per_call_by_batch_size": seconds, "compiled_graphs": compiled_graphs()}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return 0
    with tempfile.TemporaryDirectory(prefix="compile-cache-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        passes = []
        for name in ("cold", "from_cache"):
            completed = subprocess.run(
                [sys.executable, __file__, "--child", "--out", str(args.out)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            figures = json.loads(completed.stdout.split("COMPILE ", 1)[1].splitlines()[0])
            passes.append({"process": name, **figures})
            print(name, json.dumps(figures), flush=True)
    result = {
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}",
        "model": "tiny-sd15 (data/models), 96 px, 10 steps, strength 0.6, fp32 CPU, 1 torch thread",
        "speedups": "compile_unet (fused QKV; an ahead-of-time package, the engine's default)",
        "passes": passes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
