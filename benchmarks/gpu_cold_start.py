"""A fresh worker's first backfill against its warm rerun, and the engine's images/s per optimisation step.

    python benchmarks/gpu_cold_start.py --out benchmarks/results/h100-cold-start.json     # CUDA: SD-1.5 sizes
    python benchmarks/gpu_cold_start.py --tiny --out benchmarks/results/cold-start-cpu.json  # CPU: the demo catalog
    bash scripts/gpu_cold_start.sh                                                        # a lent GPU's one call

Cold start, one invocation of benchmarks/orchestrated_throughput.py (its own DAGSTER_HOME, daemon and Celery
worker; every figure from the request to the last materialization):
1. the bare engine runs first, compiled, in a process of its own: the earlier worker whose compiled graphs a
   deployment keeps in its shared compile cache (the step storage's torch-compile-cache). Its compile events are
   what a cold deployment pays once per architecture (`cache_filling_compile_events`);
2. a fresh `random-diffusion worker` (the warm path: Celery, every model kept loaded, compiled) takes a backfill of
   all N images: imports, loads, reading the compiled graphs and inference (`first_backfill_images_per_s`, its
   `compile_events` and `graphs_from_cache`, `load_seconds_per_model`);
3. the same worker backfills all N again (`warm_images_per_s`); `first_to_warm_ratio` = first / warm.
Four models of one architecture (SD-1.5-sized random weights, 512 px, 50 steps, strength 0.75) on CUDA; with
--tiny the shipped demo catalog (five models, two architectures, 128 px, 10 steps) on the CPU.

Engine steps, benchmarks/gpu_throughput.py in a process of its own (--engine-steps, comma-separated groups):
`engine` (batched, channels-last, the default eager path), `compiled` (fused QKV, UNet compiled),
`compiled_vae` (the VAE too; both through ahead-of-time packages), `compiled_jit` (the same compiled just in
time), `cuda_graphs` (mode reduce-overhead), `max_autotune`, and the lossy `int8` and `fp8` (catalog `quantize`,
torchao); each with its images/s and fraction of the floor (FLOPs per image over the measured bf16 matrix rate),
and each lossy one with `fidelity_ssim`: its outputs against the default path's on the same images, prompts and
seeds. A lossy mode may be on by default only where that reaches 0.98.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = Path(__file__).resolve().parent
TARGETS = {"first_to_warm_ratio": 0.8, "load_seconds_per_model": 1.5, "engine_images_per_s": 7.0, "fidelity_ssim": 0.98}


def measured(script: str, arguments: list[str], work: Path, env: dict | None = None) -> dict:
    """Another benchmark of this folder in a process of its own: its JSON, its output kept in `work`."""
    out, log = work / f"{Path(script).stem}.json", work / f"{Path(script).stem}.log"
    with log.open("w") as handle:
        command = [sys.executable, str(BENCHMARKS / script), *arguments, "--out", str(out)]
        completed = subprocess.run(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if completed.returncode != 0:
        raise RuntimeError(f"{script} failed ({completed.returncode}):\n{log.read_text()[-4000:]}")
    return json.loads(out.read_text())


def cold_start(args, work: Path) -> dict:
    """The orchestrated benchmark's engine pass (filling the cache), then a fresh worker's two backfills."""
    arguments = [
        *(["--tiny"] if args.tiny else ["--model-shapes", args.model_shapes]),
        *("--images", str(args.images), "--sensor-images", "0", "--engine-compile", "--warm-rerun"),
        *("--variant", f"executor=celery,resident={args.resident}", "--settle-seconds", "5"),
        *(["--engine-images", str(args.engine_images)] if args.engine_images else []),
    ]
    env = {
        **os.environ,
        # Compiled on any device (a warm worker compiles by default on CUDA only), and one cache for the engine
        # pass and the worker: the shared cache a deployment keeps, empty before the engine pass.
        "RANDOM_DIFFUSION_COMPILE": "unet,vae",
        "TORCHINDUCTOR_CACHE_DIR": str(work / "shared-compile-cache"),
    }
    result = measured("orchestrated_throughput.py", arguments, work, env)
    first, warm = result["first_backfill"], result
    loads = first["load_seconds_per_model"]
    return {
        "device": result["device"],
        "machine": result["machine"],
        "images": args.images,
        "image_size": result["image_size"],
        "catalog": result["catalog"],
        "first_backfill_images_per_s": first["orchestrated_images_per_s"],
        "warm_images_per_s": warm["orchestrated_images_per_s"],
        "first_to_warm_ratio": round(first["orchestrated_images_per_s"] / warm["orchestrated_images_per_s"], 3),
        "compile_events": first["compile_events"],
        "graphs_from_cache": first["graphs_from_cache"],
        "cache_filling_compile_events": result["engine"]["compile_events"],
        "load_seconds_per_model": loads,
        "max_load_seconds": max(loads.values(), default=None),
        "first_backfill": {**first, "split_seconds": result["variants"][0]["split_seconds_summed_over_runs"]},
        "warm_rerun": {
            **{key: warm[key] for key in first},
            "split_seconds": result["variants"][0]["warm_rerun"]["split_seconds_summed_over_runs"],
        },
        "cache_filling_engine_pass": result["engine"],
    }


def engine_steps(args, work: Path) -> dict:
    """gpu_throughput.py's groups: images/s and fraction of the floor per step, at one batch size."""
    arguments = [
        *(["--tiny"] if args.tiny or args.model_shapes == "tiny" else []),
        *("--only", args.engine_steps, "--batch-size", str(args.batch_size)),
        *("--compile-batch-sizes", str(args.batch_size), "--repeats", str(args.repeats), "--plain-repeats", "2"),
    ]
    result = measured("gpu_throughput.py", arguments, work)
    steps = {v["variant"]: v for v in result["variants"] if not v["variant"].startswith("plain")}
    best = max(steps.values(), key=lambda v: v["images_per_s"])
    return {
        "device": result["device"],
        "engine_images_per_s": {name: v["images_per_s"] for name, v in steps.items()},
        "fraction_of_floor": {name: v["fraction_of_floor"] for name, v in steps.items()},
        "engine_best": {"variant": best["variant"], "images_per_s": best["images_per_s"]},
        "fidelity_ssim": result.get("fidelity_ssim", {}),
        "floor": result["floor"],
        "engine_warmup_seconds": {name: v["warmup_seconds"] for name, v in steps.items()},
        "compile_errors": result.get("compile_errors", []),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU: the demo catalog, 128 px")
    parser.add_argument("--model-shapes", choices=("full", "tiny"), default="full", help="without --tiny (CUDA)")
    parser.add_argument("--images", type=int, default=512, help="images per backfill (default 512)")
    parser.add_argument("--resident", type=int, default=5, help="models the worker keeps loaded")
    parser.add_argument("--engine-images", type=int, default=None, help="the cache-filling engine pass's images")
    parser.add_argument("--parts", default="cold_start,engine_steps", help="cold_start, engine_steps or both")
    parser.add_argument("--engine-steps", default=None, help="gpu_throughput.py groups (default: per device)")
    parser.add_argument("--batch-size", type=int, default=None, help="engine steps' batch (32 on CUDA, 4 on a CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="write the union of these results (one per part, as a lent GPU's "
        "10-minute calls make them) to --out, and run nothing",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.merge:
        merged = {}
        for path in args.merge:
            part = json.loads(path.read_text())
            merged |= {**part, "command": merged.get("command", []) + part["command"]}
        args.out.write_text(json.dumps(merged, indent=2) + "\n")
        return 0
    args.engine_steps = args.engine_steps or (
        "engine,compiled_vae,compiled_jit,int8" if args.tiny else "engine,compiled_vae,compiled_jit,cuda_graphs,fp8"
    )
    args.batch_size = args.batch_size or (4 if args.tiny else 32)
    parts = set(args.parts.split(","))
    started = time.perf_counter()
    result: dict = {"command": [" ".join(["python", "benchmarks/gpu_cold_start.py", *sys.argv[1:]])]}
    with tempfile.TemporaryDirectory(prefix="cold-start-") as folder:
        work = Path(folder)
        for name, part in (("cold_start", cold_start), ("engine_steps", engine_steps)):
            if name in parts:
                part_started = time.perf_counter()
                try:
                    result.update(part(args, work))
                except RuntimeError as exc:  # the other part's figures still come back
                    result.setdefault("errors", []).append(f"{name}: {exc}")
                result.setdefault("part_seconds", {})[name] = round(time.perf_counter() - part_started, 1)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(result, indent=2) + "\n")  # each part's figures as they come
                print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}), flush=True)
    result["targets"] = TARGETS
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 1 if result.get("errors") else 0


if __name__ == "__main__":
    raise SystemExit(main())
