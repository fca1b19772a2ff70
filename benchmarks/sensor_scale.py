"""How `new_images_sensor` scales with the number of files in the images folder.

    python benchmarks/sensor_scale.py --files 100000 --out benchmarks/results/sensor-scale-cpu.json

N files are hard links to a few copies of one small PNG (ext4 allows 65,000 links per file; a folder of
100,000 distinct files would cost the same to scan and far more disk), in a temporary folder, against a
real temporary Dagster instance. The sensor is evaluated as the daemon does: a first tick with every file
settled, its partition requests applied (timed apart: that is Dagster's `add_dynamic_partitions`, not the
sensor), a quiet tick, then a tick after 10 files were replaced (new content, mtime set into the past as
`cp -p` does) and 10 added.
The 10 replaced files are separate files, not links: replacing a link changes the link count, and so
the change time, of the inode the other links share.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))

import dagster as dg  # noqa: E402
from PIL import Image  # noqa: E402

from random_diffusion_dagster.defs.automation.new_images_sensor import SETTLE_SECONDS, new_images_sensor  # noqa: E402
from random_diffusion_dagster.defs.resources import DatasetResource  # noqa: E402

from local_services import apply_partition_requests  # noqa: E402

CHANGED = 10
LINKS_PER_SEED = 50_000


def _write_png(path: Path, color: tuple[int, int, int], age_s: float = SETTLE_SECONDS + 60) -> None:
    Image.new("RGB", (8, 8), color).save(path)
    past = time.time() - age_s
    os.utime(path, (past, past))


def _tick(instance: dg.DagsterInstance, folder: Path, cursor: str | None) -> tuple[dg.SensorResult, float, float]:
    """(result, seconds in the sensor, seconds applying its partition requests as the daemon does)."""
    resources = {"dataset": DatasetResource(images_dir=str(folder))}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        started = time.perf_counter()
        result = new_images_sensor(context)
        sensor_s = time.perf_counter() - started
    started = time.perf_counter()
    apply_partition_requests(instance, result)
    return result, sensor_s, time.perf_counter() - started


def run(files: int) -> dict:
    replaced = [index * (files // CHANGED) for index in range(CHANGED)]
    with tempfile.TemporaryDirectory() as tmp, dg.instance_for_test() as instance:
        folder = Path(tmp) / "images"
        folder.mkdir()
        seeds = [Path(tmp) / f"seed{number}.png" for number in range(files // LINKS_PER_SEED + 1)]
        for seed in seeds:
            _write_png(seed, (120, 80, 40))
        for index in range(files):
            name = folder / f"img{index:06d}.png"
            if index in replaced:
                _write_png(name, (120, 80, 40))
            else:
                os.link(seeds[index // LINKS_PER_SEED], name)

        first, first_s, apply_s = _tick(instance, folder, None)
        quiet, quiet_s, _ = _tick(instance, folder, first.cursor)
        for number, index in enumerate(replaced):
            _write_png(folder / f"img{index:06d}.png", (number, 200, 200), age_s=3600)  # like `cp -p`
            _write_png(folder / f"new{number:02d}.png", (number, 10, 10))
        change, change_s, _ = _tick(instance, folder, quiet.cursor)

        partitions = instance.get_dynamic_partitions("images")
        replaced_keys = sorted(r.partition_key for r in change.run_requests if r.partition_key)
        assert len(partitions) == files + CHANGED, len(partitions)
        assert quiet.run_requests == [] and quiet.dynamic_partitions_requests == []
        assert replaced_keys == sorted(f"img{index:06d}.png" for index in replaced), replaced_keys
        cursors = [first.cursor, quiet.cursor, change.cursor]
        return {
            "files": files,
            "first_tick_s": round(first_s, 3),
            "first_tick_add_partitions_s": round(apply_s, 3),
            "quiet_tick_s": round(quiet_s, 3),
            "change_tick_s": round(change_s, 3),
            "cursor_bytes": max(len(c.encode()) for c in cursors),
            "cursor_bytes_per_tick": [len(c.encode()) for c in cursors],
            "run_requests": {
                "first": len(first.run_requests),
                "quiet": len(quiet.run_requests),
                "change": len(change.run_requests),
            },
            "machine": {
                "cpu_count": os.cpu_count(),
                "python": sys.version.split()[0],
                "dagster": dg.__version__,
                "storage": "SQLite (dg.instance_for_test)",
            },
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.files < 10 * CHANGED:
        parser.error(f"--files must be at least {10 * CHANGED}")
    results = run(args.files)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
