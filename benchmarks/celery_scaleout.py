"""A backfill spread over Celery workers: throughput with two workers against one; and two
"machines" that share nothing but the broker, PostgreSQL and the declared shared storage.

    python benchmarks/celery_scaleout.py --partitions 64 --out benchmarks/results/celery-cpu.json
    python benchmarks/celery_scaleout.py --multinode --out benchmarks/results/celery-multinode-cpu.json

Real parts on one machine: Redis as the broker (127.0.0.1:6379), a throwaway PostgreSQL
database as the shared instance (127.0.0.1:5432), `dagster-celery` workers as processes,
each with its own CUDA_VISIBLE_DEVICES (meaningless on a CPU box, the pattern on a GPU one),
listening on the `gpu` queue with one task at a time. The backfill is what
BackfillPolicy.multi_run(32) launches: one ranged run per 32 partitions, all at once.
The tiny demo models are built in a temporary folder.

`multinode` gives each worker a machine of its own (DAGSTER_HOME, working directory, TMPDIR,
CUDA_VISIBLE_DEVICES): one consumes the `dagster` queue (prompt_list, model_catalog), the other
the `gpu` queue (diffused_image), so step values must cross machines through
RANDOM_DIFFUSION_STEP_STORAGE.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from local_services import project_env, stop_process_groups, throwaway_database

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from random_diffusion_dagster.defs.run_ranges import partition_range_tags  # noqa: E402

BIN = Path(sys.executable).parent
REDIS = os.environ.get("RANDOM_DIFFUSION_TEST_REDIS", "redis://127.0.0.1:6379")


def make_project(root: Path, partitions: int, models_dir: Path, steps: int) -> dict[str, str]:
    """Images, prompts, a two-model catalog, a DAGSTER_HOME; returns the environment for every process."""
    import yaml
    from PIL import Image

    images = root / "images"
    images.mkdir(parents=True)
    for index in range(partitions):
        Image.new("RGB", (64, 64), ((index * 37) % 256, (index * 91) % 256, 120)).save(images / f"img{index:04d}.png")
    (root / "prompts.txt").write_text("a lighthouse\na forest\na city at night\n")
    catalog = {
        "defaults": {"resolution": 64, "num_inference_steps": steps, "strength": 0.5},
        "models": [{"name": n, "path": str(models_dir / n)} for n in ("tiny-sd15", "tiny-sd2")],
    }
    (root / "models.yaml").write_text(yaml.safe_dump(catalog))
    home = root / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((PROJECT_ROOT / "deploy" / "celery" / "dagster.yaml").read_text())
    # One box: its own folder is shared by every worker. PYTHONPATH: the CLIs run this checkout's code.
    return {
        **project_env(root, home),
        "RANDOM_DIFFUSION_EXECUTOR": "celery",
        "PYTHONPATH": str(PROJECT_ROOT),
        "RANDOM_DIFFUSION_STEP_STORAGE": str(root / "step-values"),
    }


@dataclass
class Worker:
    """One `dagster-celery` worker: its name, the queues it consumes, and what differs on its machine."""

    name: str
    queues: str = "gpu,dagster"
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = PROJECT_ROOT


def own_machine(root: Path, name: str, gpu: str) -> tuple[dict[str, str], Path]:
    """What a separate box has of its own: a DAGSTER_HOME (its copy of deploy/celery/dagster.yaml, so
    its local storage is its own), a working directory, a TMPDIR and its GPU setting. Returns (env, cwd)."""
    box = root / name
    for folder in ("home", "work", "tmp"):
        (box / folder).mkdir(parents=True)
    (box / "home" / "dagster.yaml").write_text((PROJECT_ROOT / "deploy" / "celery" / "dagster.yaml").read_text())
    return {"DAGSTER_HOME": str(box / "home"), "TMPDIR": str(box / "tmp"), "CUDA_VISIBLE_DEVICES": gpu}, box / "work"


@contextmanager
def celery_workers(workers: int | list[Worker], env: dict[str, str], log_dir: Path, broker_db: int):
    """Start the workers (a count: alike, one GPU each) on a clean Redis database; stop them afterwards."""
    import redis

    if isinstance(workers, int):
        workers = [
            Worker(f"gpu{index}-{broker_db}", env={"CUDA_VISIBLE_DEVICES": str(index)}) for index in range(workers)
        ]
    for db in (broker_db, broker_db + 1):
        redis.Redis.from_url(f"{REDIS}/{db}").flushdb()
    env = {
        **env,
        "RANDOM_DIFFUSION_CELERY_BROKER": f"{REDIS}/{broker_db}",
        "RANDOM_DIFFUSION_CELERY_BACKEND": f"{REDIS}/{broker_db + 1}",
    }
    processes, logs = [], []
    for worker in workers:
        logs.append(log_dir / f"worker-{worker.name}.log")
        processes.append(
            subprocess.Popen(
                [
                    str(BIN / "dagster-celery"),
                    "worker",
                    "start",
                    "-A",
                    "dagster_celery.app",
                    "-y",
                    str(PROJECT_ROOT / "deploy" / "celery" / "celery.yaml"),
                    "-q",
                    worker.queues,
                    "-n",
                    worker.name,
                    "--",
                    "-c",
                    "1",
                ],
                # `dagster-celery worker start` runs `celery` from PATH: this environment's.
                cwd=worker.cwd,
                env={**os.environ, **env, **worker.env, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
                stdout=logs[-1].open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    try:
        deadline = time.monotonic() + 120
        while not all("ready." in log.read_text() for log in logs):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "celery workers did not start:\n" + "\n".join(log.read_text()[-2000:] for log in logs)
                )
            time.sleep(0.5)
        yield env
    finally:
        stop_process_groups(processes)


def register_partitions(env: dict[str, str]) -> list[str]:
    """What the sensor or `source_images` does: one `images` partition per file."""
    code = (
        "import dagster as dg\nfrom random_diffusion_dagster.engine.images import scan_folder\n"
        "import os\nkeys=[f.partition_key for f in scan_folder(os.environ['RANDOM_DIFFUSION_IMAGES_DIR'])]\n"
        "with dg.DagsterInstance.get() as i:\n    i.add_dynamic_partitions('images', keys)\nprint(len(keys))"
    )
    subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, check=True, capture_output=True)
    return sorted(p.name for p in Path(env["RANDOM_DIFFUSION_IMAGES_DIR"]).iterdir())


def launch_runs(keys: list[str], env: dict[str, str], per_run: int, cwd: Path = PROJECT_ROOT) -> list[tuple[int, str]]:
    """Launch one ranged run per `per_run` partitions, all at once; (exit code, output) of each."""
    launches = []
    for start in range(0, len(keys), per_run):
        chunk = keys[start : start + per_run]
        tags = json.dumps(partition_range_tags(chunk[0], chunk[-1]))
        launches.append(
            subprocess.Popen(
                [
                    str(BIN / "dagster"),
                    "job",
                    "execute",
                    "-m",
                    "random_diffusion_dagster.definitions",
                    "-a",
                    "defs",
                    "-j",
                    "diffuse_images",
                    "--tags",
                    tags,
                ],
                cwd=cwd,
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [launch.communicate(timeout=900)[0] for launch in launches]
    return [(launch.returncode, out) for launch, out in zip(launches, outputs, strict=True)]


def backfill(keys: list[str], env: dict[str, str], per_run: int) -> float:
    """Launch one ranged run per `per_run` partitions, all at once; return the wall time."""
    started = time.perf_counter()
    failed = [out[-3000:] for code, out in launch_runs(keys, env, per_run) if code != 0]
    if failed:
        raise RuntimeError("a run failed:\n" + "\n".join(failed))
    return time.perf_counter() - started


def step_report(env: dict[str, str]) -> dict:
    """Per run: the worker that ran its diffusion step, the step's seconds, and pipeline loads."""
    code = r"""
import json, dagster as dg
from dagster import DagsterEventType as T
out = {"runs": [], "materializations": {}}
with dg.DagsterInstance.get() as instance:
    for record in instance.get_run_records():
        run_id = record.dagster_run.run_id
        events = instance.all_logs(run_id)
        worker, start, end = None, None, None
        step_workers, failures = {}, {}
        for e in events:
            if not e.dagster_event:
                continue
            if e.dagster_event.event_type == T.ENGINE_EVENT and "celery worker" in (e.message or ""):
                step_workers[e.step_key] = e.dagster_event.engine_event_data.metadata["Celery worker"].value
            elif e.dagster_event.event_type == T.STEP_FAILURE:
                failures[e.step_key] = e.dagster_event.step_failure_data.error.to_string()
            if e.step_key != "diffused_image":
                continue
            if e.dagster_event.event_type == T.ENGINE_EVENT and "celery worker" in (e.message or ""):
                worker = e.dagster_event.engine_event_data.metadata["Celery worker"].value
            elif e.dagster_event.event_type == T.STEP_START:
                start = e.timestamp
            elif e.dagster_event.event_type == T.STEP_SUCCESS:
                end = e.timestamp
            elif e.dagster_event.event_type == T.ASSET_MATERIALIZATION:
                m = e.dagster_event.step_materialization_data.materialization
                if m.asset_key.path != ["diffused_image"]:  # the step records each image's draw (image_draw) too
                    continue
                out["materializations"][m.partition] = out["materializations"].get(m.partition, 0) + 1
        loads = record.dagster_run.tags.get("random_diffusion/pipeline_loads")  # the run's figures are its tags
        loads = int(loads) if loads is not None else None
        out["runs"].append({"run_id": run_id, "status": record.dagster_run.status.value, "worker": worker,
                            "step_seconds": round(end - start, 2) if start and end else None, "pipeline_loads": loads,
                            "step_workers": step_workers, "failures": failures})
print(json.dumps(out))
"""
    completed = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, check=True, capture_output=True, text=True
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def measure(
    workers: int, partitions: int, per_run: int, root: Path, models_dir: Path, broker_db: int, steps: int = 8
) -> dict:
    with throwaway_database() as url:
        env = {**make_project(root, partitions, models_dir, steps), "DAGSTER_POSTGRES_URL": url}
        keys = register_partitions(env)
        with celery_workers(workers, env, root, broker_db) as env:
            seconds = backfill(keys, env, per_run)
            report = step_report(env)
    busy: dict[str, float] = {}
    for run in report["runs"]:
        if run["worker"]:
            busy[run["worker"]] = round(busy.get(run["worker"], 0) + (run["step_seconds"] or 0), 2)
    return {
        "workers": workers,
        "partitions": partitions,
        "runs": report["runs"],
        "wall_seconds": round(seconds, 2),
        "images_per_s": round(partitions / seconds, 3),
        "busy_seconds_per_worker": busy,
        "materializations_per_partition": sorted(set(report["materializations"].values())),
        "partitions_materialized": len(report["materializations"]),
    }


STEP_STORAGE = "RANDOM_DIFFUSION_STEP_STORAGE"


def multinode(
    root: Path, models_dir: Path, broker_db: int, step_storage: str = "shared", images: int = 3, steps: int = 4
) -> dict:
    """One run whose steps land on two machines: box A consumes the `dagster` queue (prompt_list, model_catalog),
    box B the `gpu` queue (diffused_image). Shared: Redis, PostgreSQL, the project's folders (images, outputs,
    prompts, catalog, models) and, with step_storage="shared", the step values. "per-machine": each box sets
    RANDOM_DIFFUSION_STEP_STORAGE to a local folder of its own (the value cannot cross); "unset": not at all."""
    with throwaway_database() as url:
        shared = {**make_project(root / "shared", images, models_dir, steps), "DAGSTER_POSTGRES_URL": url}
        shared_step_values = shared.pop(STEP_STORAGE)
        launcher, launcher_cwd = own_machine(root, "launcher", gpu="")
        box_a, a_cwd = own_machine(root, "box-a", gpu="")
        box_b, b_cwd = own_machine(root, "box-b", gpu="0")
        for machine in (launcher, box_a, box_b):
            if step_storage == "shared":
                machine[STEP_STORAGE] = shared_step_values
            elif step_storage == "per-machine":
                machine[STEP_STORAGE] = str(Path(machine["TMPDIR"]) / "step-values")
        keys = register_partitions({**shared, **launcher})
        result = {"step_storage": step_storage, "images": len(keys)}
        if step_storage == "unset":  # the run fails as definitions load: no worker needed
            several_boxes = {"RANDOM_DIFFUSION_CELERY_BROKER": f"{REDIS}/{broker_db}"}  # a broker the boxes share
            ((code, output),) = launch_runs(keys, {**shared, **launcher, **several_boxes}, len(keys), cwd=launcher_cwd)
            return {**result, "exit_code": code, "output": output[-4000:]}
        workers = [
            Worker(f"box-a-{broker_db}", "dagster", box_a, a_cwd),
            Worker(f"box-b-{broker_db}", "gpu", box_b, b_cwd),
        ]
        started = time.perf_counter()
        with celery_workers(workers, shared, root, broker_db) as env:
            ready = time.perf_counter()
            ((code, output),) = launch_runs(keys, {**env, **launcher}, len(keys), cwd=launcher_cwd)
            finished = time.perf_counter()
            (run,) = step_report({**env, **launcher})["runs"]
        results = sorted(path.name for path in Path(shared["RANDOM_DIFFUSION_OUTPUT_DIR"]).glob("*.png"))
        step_values = {
            name: sorted(str(p.relative_to(root)) for p in root.glob(f"{name}/**/*_*.pickle"))
            for name in ("shared", "launcher", "box-a", "box-b")
        }
    return {
        **result,
        "exit_code": code,
        "output": output[-4000:],
        "run": run,
        "result_files": results,
        "step_value_files": step_values,
        "workers_start_seconds": round(ready - started, 2),
        "run_seconds": round(finished - ready, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partitions", type=int, default=64)
    parser.add_argument("--per-run", type=int, default=32)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--multinode", action="store_true", help="two machines, shared step storage or not")
    args = parser.parse_args()
    from random_diffusion_dagster.demo.models import build_demo_models

    if args.multinode:
        with tempfile.TemporaryDirectory() as tmp:
            models_dir = Path(tmp) / "models"
            build_demo_models(models_dir)
            result = {
                mode: multinode(Path(tmp) / mode, models_dir, broker_db=7, step_storage=mode)
                for mode in ("shared", "per-machine", "unset")
            }
        for mode, run in result.items():
            run.pop("output")
            print(mode, json.dumps(run))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": f"{os.cpu_count()} CPUs", **result}, indent=2) + "\n")
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        models_dir = Path(tmp) / "models"
        build_demo_models(models_dir)
        one = measure(1, args.partitions, args.per_run, Path(tmp) / "one", models_dir, broker_db=11)
        two = measure(2, args.partitions, args.per_run, Path(tmp) / "two", models_dir, broker_db=13)
    result = {
        "machine": f"{os.cpu_count()} CPUs",
        "one_worker": one,
        "two_workers": two,
        "throughput_ratio_two_over_one": round(two["images_per_s"] / one["images_per_s"], 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for label, run in (("1 worker", one), ("2 workers", two)):
        print(
            f"{label}: {run['wall_seconds']} s for {run['partitions']} images ({run['images_per_s']} img/s), "
            f"busy per worker {run['busy_seconds_per_worker']}"
        )
    print(f"ratio two/one: {result['throughput_ratio_two_over_one']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
