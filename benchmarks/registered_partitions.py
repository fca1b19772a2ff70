"""What a run of 128 images pays for the images registered beside it (Dagster's bookkeeping, not the engine's).

    python benchmarks/registered_partitions.py --registered 0 10000 100000 \
        --out benchmarks/results/registered-partitions-cpu.json

For each count, in a fresh process (the definitions read the folders once): a fresh SQLite instance
(DAGSTER_HOME in a temporary folder), 128 generated images registered by `source_images`, that many more
`images` partitions registered after them (no file behind them), then one ranged run of `diffused_image` over
the 128 in this process with the demo catalog (data/models.yaml, 128 px).
From the run's event log: the step's seconds before the first model load (inputs, reading sources, version
events), after the last batch until its output (waiting for PNG writes, per-partition metadata), recording the
128 materializations (the step's output to its success) and, at the run's creation, the 128 planned ones, and the
run's wall; then the same for a re-roll of the 128 (run seed 1), whose sources' versions are already on record.
The instance is the shipped SQLite storage, which writes both kinds in batches (DAGSTER_EVENT_BATCH_SIZE=0 in the
environment: one by one, as Dagster's own SQLite storage does); `--postgres-url` runs it on the shipped PostgreSQL
storage instead (the database is wiped), which batches likewise.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import yaml  # noqa: E402
from orchestrated_throughput import BATCH_LINE, LOAD_LINE, make_images  # noqa: E402

from local_services import shipped_instance_config  # noqa: E402

IMAGES = 128


def instance_yaml(home: Path, postgres_url: str | None) -> str:
    if not postgres_url:  # the shipped SQLite storage
        storage = shipped_instance_config(Path(__file__).resolve().parent.parent, home)["storage"]
        return yaml.safe_dump({"storage": storage, "telemetry": {"enabled": False}})
    return (
        "storage:\n  custom:\n    module: random_diffusion_dagster.runtime.instance_storage.postgres\n"
        f"    class: BatchingPostgresStorage\n    config:\n      postgres_url: {postgres_url}\n"
        "telemetry:\n  enabled: false\n"
    )


def measure(registered: int, root: Path, postgres_url: str | None) -> dict:
    import dagster as dg

    home = root / f"home-{registered}"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(home, postgres_url))
    make_images(root / f"images-{registered}", IMAGES, 128, "img", seed=1)
    os.environ.update(
        {
            "DAGSTER_HOME": str(home),
            "RANDOM_DIFFUSION_IMAGES_DIR": str(root / f"images-{registered}"),
            "RANDOM_DIFFUSION_OUTPUT_DIR": str(root / f"outputs-{registered}"),
        }
    )
    from random_diffusion_dagster.definitions import defs

    job = defs.resolve_implicit_global_asset_job_def()
    with dg.DagsterInstance.get() as instance:
        instance.wipe()  # a PostgreSQL database is reused from one count to the next
        inputs = {dg.AssetKey(name) for name in ("source_images", "prompt_list", "model_catalog")}
        job.get_subset(asset_selection=inputs).execute_in_process(instance=instance)
        keys = instance.get_dynamic_partitions("images")
        assert len(keys) == IMAGES, len(keys)
        # Registered after the run's images (source_images would drop partitions whose file is missing).
        instance.add_dynamic_partitions("images", [f"elsewhere-{i:06d}.png" for i in range(registered)])
        diffuse = job.get_subset(
            asset_selection={dg.AssetKey("image_draw"), dg.AssetKey("diffused_image")}, asset_check_selection=set()
        )
        first = run_split(instance, diffuse, keys)
        reroll = run_split(instance, diffuse, keys, {"resources": {"dataset": {"config": {"seed": 1}}}})
    return {
        "storage": "postgresql" if postgres_url else "sqlite",
        "DAGSTER_EVENT_BATCH_SIZE": os.environ.get("DAGSTER_EVENT_BATCH_SIZE", ""),
        "registered_elsewhere": registered,
        "images": IMAGES,
        **first,
        **{f"reroll_{name}": value for name, value in reroll.items()},
    }


def run_split(instance, job, keys: list[str], run_config: dict | None = None) -> dict:
    """One ranged run over `keys` in this process, and where its step's time went (from its event log)."""
    import dagster as dg

    from random_diffusion_dagster.defs.run_ranges import partition_range_tags

    started = time.perf_counter()
    result = job.execute_in_process(
        instance=instance, tags=partition_range_tags(keys[0], keys[-1]), run_config=run_config
    )
    wall = time.perf_counter() - started
    assert result.success
    step_start = first_load = last_batch = output = success = planned = after_planned = None
    materialized, observed = 0, 0
    for entry in instance.all_logs(result.run_id):
        event, message = entry.dagster_event, entry.user_message or ""
        if event and event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED:
            planned = planned or entry.timestamp
        elif planned and not after_planned:
            after_planned = entry.timestamp
        if event is None:
            if LOAD_LINE.search(message) and first_load is None:
                first_load = entry.timestamp - float(LOAD_LINE.search(message).group(2))
            if BATCH_LINE.search(message):
                last_batch = entry.timestamp
        elif event.event_type == dg.DagsterEventType.STEP_START:
            step_start = entry.timestamp
        elif event.event_type == dg.DagsterEventType.STEP_OUTPUT:
            output = entry.timestamp
        elif event.event_type == dg.DagsterEventType.STEP_SUCCESS:
            success = entry.timestamp
        elif event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            materialized += 1
        elif event.event_type == dg.DagsterEventType.ASSET_OBSERVATION:
            observed += 1
    assert materialized == len(keys), materialized
    return {
        # The run's creation writing its 128 planned materializations (the first stamp to the next other event).
        "recording_planned_seconds": round(after_planned - planned, 2),
        "source_versions_written": observed,
        "step_start_to_first_load_seconds": round(first_load - step_start, 2),
        "last_batch_to_output_seconds": round(output - last_batch, 2),
        # Written, not only made: a batch's events carry the time each was made, before the batch is written.
        "recording_materializations_seconds": round(success - output, 2),
        "run_wall_seconds": round(wall, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registered", type=int, nargs="+", default=[0, 10_000, 100_000])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--postgres-url", help="an empty PostgreSQL database to use instead of SQLite (it is wiped)")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # child: measure --registered[0] under this root
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.registered[0], args.one, args.postgres_url)))
        return 0
    env = {**os.environ, "RANDOM_DIFFUSION_TORCH_THREADS": os.environ.get("RANDOM_DIFFUSION_TORCH_THREADS", "1")}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for registered in args.registered:
            child = [sys.executable, __file__, "--registered", str(registered), "--one", folder]
            child += ["--postgres-url", args.postgres_url] if args.postgres_url else []
            done = subprocess.run(child, env=env, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"--registered {registered} failed:\n{done.stderr[-4000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"machine": f"{os.cpu_count()} CPUs", "runs": rows}, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
