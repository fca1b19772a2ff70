"""One run per image against one ranged run for all of them, on the CPU with the demo models.

    python benchmarks/batching.py --out benchmarks/results/batching-cpu.json

(a) what a backfill without a policy does: one `dagster asset materialize --partition K`
process per image; (b) what this project's BackfillPolicy, sensor and schedule do: one
`dagster job execute` run covering the whole range. Both against a fresh SQLite instance,
both with the shipped sample images, prompts and demo catalog; outputs go to a temporary
folder, so (b) reuses nothing that (a) made.
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

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from random_diffusion_dagster.defs.run_ranges import partition_range_tags  # noqa: E402

BIN = Path(sys.executable).parent


def dagster(args: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(
        [str(BIN / "dagster"), *args, "-m", "random_diffusion_dagster.definitions"],
        cwd=PROJECT_ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("one_run_per_image", "one_ranged_run"):
            home = Path(tmp) / mode
            home.mkdir()
            env = {
                **os.environ,
                "DAGSTER_HOME": str(home),
                "RANDOM_DIFFUSION_OUTPUT_DIR": str(home / "outputs"),
                "RANDOM_DIFFUSION_TORCH_THREADS": "2",
            }
            dagster(["asset", "materialize", "--select", "source_images,prompt_list,model_catalog"], env)
            keys = sorted(p.name for p in (PROJECT_ROOT / "data" / "images").iterdir())
            if mode == "one_run_per_image":
                seconds = sum(
                    dagster(["asset", "materialize", "--select", "image_draw,diffused_image", "--partition", key], env)
                    for key in keys
                )
            else:
                tags = json.dumps(partition_range_tags(keys[0], keys[-1]))
                seconds = dagster(["job", "execute", "-j", "diffuse_images", "--tags", tags], env)
            assert len(list((home / "outputs").glob("*.png"))) == len(keys)
            results[mode] = {
                "images": len(keys),
                "seconds": round(seconds, 2),
                "seconds_per_image": round(seconds / len(keys), 2),
            }
            print(mode, results[mode], flush=True)
    results["ratio"] = round(results["one_run_per_image"]["seconds"] / results["one_ranged_run"]["seconds"], 2)
    results["machine"] = f"{os.cpu_count()} CPUs"
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("ratio", results["ratio"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
