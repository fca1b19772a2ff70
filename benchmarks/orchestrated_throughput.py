"""Images per second along the path users take (a backfill, and the sensor, through a real daemon) against the engine.

    python benchmarks/orchestrated_throughput.py --out results.json             # CUDA: SD-1.5-sized models, 512 px
    python benchmarks/orchestrated_throughput.py --tiny --images 128 --out benchmarks/results/orchestrated-cpu.json
    bash scripts/gpu_orchestrated.sh                                            # a lent GPU's one call: the warm path

What it does, in a temporary folder with its own DAGSTER_HOME (the project's dagster.yaml: queued runs, the `gpu`
pool, run monitoring and retries; storage under that home, as tests/test_deployment.py does):
1. makes N source images (512 px; 128 px with --tiny) and a catalog: four SD-1.5-sized random-weight pipelines
   saved to disk as benchmarks/gpu_throughput.py builds them, or with --tiny the shipped demo catalog
   (data/models.yaml, data/models);
2. times the bare engine on the same images in a fresh process (`run_tasks`, `PipelineCache`, `Planner`),
   reported with and without that process's start and imports (--engine-compile: compiled; --warm-rerun: a
   second pass in the same process, everything loaded and compiled: the engine at its best);
3. registers the images (`dagster asset materialize --select source_images,prompt_list,model_catalog`), starts
   `random-diffusion daemon` (Dagster's daemon; new backfills picked up every second), and requests a backfill of
   every `diffused_image` partition (--warmup-images: the first N), as the UI's "Materialize all" does
   (`PartitionBackfill.from_asset_partitions` + `instance.add_backfill`, what the webserver's
   `launchPartitionBackfill` mutation calls); waits for the last materialization;
4. with --warm-rerun, deletes the outputs and backfills every partition again on the same daemon and worker:
   the headline figures then (what every later backfill on a warm worker gets, against the engine's second
   pass), the first backfill under `first_backfill`;
5. drops N more images into the folder and waits until `new_images_sensor` has had them all materialized.

Each variant (--variant, e.g. `executor=multiprocess,per_run=32,dequeue=5`) gets a fresh home, outputs and daemon;
the first is the headline (and the only one timed with the sensor). Children import the package from
--project-root (PYTHONPATH), default this checkout.
Time split per run from its event log: queue wait, process start and definition loading, torch import and
planning, model loads, inference, the rest of the step (waiting for PNG writes, metadata) and the run's end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_services import project_env, shipped_instance_config, wait_for  # noqa: E402  (standard library only)

DEFAULT_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A console script of this environment, else from PATH (a --target install keeps them apart)."""
    return str(BIN / name) if (BIN / name).exists() else shutil.which(name) or name


BATCH_LINE = re.compile(r"batch of (\d+) at \d+x\d+ in ([0-9.]+) s")
LOAD_LINE = re.compile(r"Loaded model (.*) on \S+ in ([0-9.]+) s")
ASSET = "diffused_image"
STARTED = time.time()


def say(message: str) -> None:
    """A timestamped progress line: a run stopped at a lease's limit still shows where its time went."""
    print(f"[{time.time() - STARTED:7.1f} s] {message}", flush=True)


# ---------------------------------------------------------------------------------------------- the workload
def make_images(folder: Path, count: int, size: int, prefix: str, seed: int) -> list[Path]:
    """Distinct images (each picks its own prompt, model and seed from its content hash)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bases = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(count)]
    paths = [folder / f"{prefix}{index:04d}.png" for index in range(count)]
    past = time.time() - 600

    def save(base, path: Path) -> None:
        Image.fromarray(base).resize((size, size), Image.BILINEAR).save(path)
        os.utime(path, (past, past))  # settled: the sensor takes it on its first look

    with ThreadPoolExecutor(os.cpu_count()) as pool:  # PNG encoding releases the GIL: 512 took 41 s on one thread
        list(pool.map(save, bases, paths))
    return paths


def gpu_catalog(folder: Path, shapes_name: str) -> Path:
    """Four SD-1.5-shaped pipelines (random weights) and a catalog naming them: gpu_throughput.py's models."""
    import gpu_throughput
    import torch
    import yaml

    shapes = gpu_throughput.FULL if shapes_name == "full" else gpu_throughput.TINY
    device = "cuda" if torch.cuda.is_available() else "cpu"
    folders = gpu_throughput.build_models(shapes, folder / "models", device, count=4)
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump(gpu_throughput.catalog_document(folders, shapes, "auto")))
    return path


# ---------------------------------------------------------------------------------------------- the bare engine
def engine_worker(args) -> int:
    """Runs in a fresh process: plan and make every image with the engine alone; prints its figures as JSON."""
    started = time.perf_counter()
    import torch

    from random_diffusion_dagster.defs.resources import DiffusionEngineResource
    from random_diffusion_dagster.engine.catalog import load_catalog
    from random_diffusion_dagster.engine.images import scan_images
    from random_diffusion_dagster.engine.pipelines import PipelineCache, Speedups
    from random_diffusion_dagster.engine.plan import Planner
    from random_diffusion_dagster.engine.prompts import load_prompts
    from random_diffusion_dagster.engine.runner import run_tasks

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    imported = time.perf_counter()
    wildcards = str(Path(args.prompts).parent / "wildcards")  # the prompts' templates read data/wildcards
    catalog = load_catalog(args.models)
    planner = Planner(load_prompts(args.prompts), catalog, 0, args.engine_worker, wildcards)
    tasks, unplanned = planner.plan(scan_images(args.images_dir).files[: args.engine_images or None])
    assert not unplanned, unplanned
    batches, loads = [], []

    def log(message: str) -> None:
        if match := BATCH_LINE.search(message):
            batches.append((int(match.group(1)), float(match.group(2))))
        if match := LOAD_LINE.search(message):
            loads.append(float(match.group(2)))

    # Compiled as the workers compile (ahead of time unless RANDOM_DIFFUSION_COMPILE_AHEAD_OF_TIME=0), so what this
    # pass puts in the shared cache is what they read.
    ahead_of_time = DiffusionEngineResource().compile_ahead_of_time
    speedups = (
        Speedups(compile_unet=True, compile_vae=True, ahead_of_time=ahead_of_time)
        if args.engine_compile
        else Speedups()
    )
    # The resource's default residency (every model for a second pass, as a warm worker keeps them); its load
    # lines as a run logs them.
    cache = PipelineCache(max_models=len(catalog) if args.warm_rerun else 2, log=log, speedups=speedups)
    batch_size = DiffusionEngineResource().batch_size_on(cache.device)  # the resource's default, as runs use
    summary = run_tasks(tasks, cache, batch_size, log)
    assert all(r.status == "generated" for r in summary.results), [r.error for r in summary.results if r.error]
    first_pass_end = time.perf_counter()
    figures = {
        "images": len(tasks),
        "imports_seconds": imported - started,
        "run_seconds": first_pass_end - imported,
        "pipeline_loads": summary.pipeline_loads,
        "batch_size": batch_size,
        "batches": [b for b, _ in batches],
        "inference_seconds": sum(s for _, s in batches),
        "load_seconds": sum(loads),
        "device": cache.device,
        "compiled": args.engine_compile,
        "compile_events": summary.compiled_graphs,
        "graphs_from_cache": summary.graphs_from_cache,
    }
    if args.warm_rerun:  # every image again with the pipelines loaded (and compiled): the engine at its best
        shutil.rmtree(args.engine_worker)
        again = run_tasks(tasks, cache, batch_size, log)
        assert all(r.status == "generated" for r in again.results), [r.error for r in again.results if r.error]
        figures.update(
            {
                "warm_rerun_seconds": again.seconds,
                "warm_rerun_images_per_s": len(tasks) / again.seconds,
                "warm_rerun_pipeline_loads": again.pipeline_loads,
                "warm_rerun_compile_events": again.compiled_graphs,
                "seconds_after_first_pass": time.perf_counter() - first_pass_end,  # not in the first pass's wall
            }
        )
    print("ENGINE " + json.dumps(figures))
    return 0


def run_engine(env: dict, project: dict, root: Path, threads: int | None, args) -> dict:
    out = root / "engine-outputs"
    started = time.perf_counter()
    completed = subprocess.run(
        [
            sys.executable,
            __file__,
            "--engine-worker",
            str(out),
            "--images-dir",
            project["images"],
            "--prompts",
            project["prompts"],
            "--models",
            project["models"],
            "--torch-threads",
            str(threads or 0),
            "--engine-images",
            str(args.engine_images or 0),
            *(["--engine-compile"] if args.engine_compile else []),
            *(["--warm-rerun"] if args.warm_rerun else []),
        ],
        cwd=project["root"],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError("engine run failed:\n" + completed.stderr[-4000:])
    figures = json.loads(completed.stdout.split("ENGINE ", 1)[1].splitlines()[0])
    figures["wall_seconds_with_process_start"] = wall - figures.pop("seconds_after_first_pass", 0.0)
    figures["images_per_s_with_imports"] = figures["images"] / figures["wall_seconds_with_process_start"]
    figures["images_per_s_without_imports"] = figures["images"] / figures["run_seconds"]
    figures["mean_batch_fill"] = sum(figures["batches"]) / len(figures["batches"]) / figures["batch_size"]
    return figures


# ---------------------------------------------------------------------------------------------- Dagster
def instance_home(home: Path, project_root: Path, dequeue: int | None) -> None:
    """The project's dagster.yaml with storage under `home` (as tests/test_deployment.py makes it)."""
    import yaml

    config = shipped_instance_config(project_root, home)
    if dequeue is not None:
        config["run_coordinator"].setdefault("config", {})["dequeue_interval_seconds"] = dequeue
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))


def launch_backfill(instance, keys: list[str]) -> tuple[str, float]:
    """What the UI's backfill dialog does for "all partitions" of one asset (launchPartitionBackfill)."""
    import dagster as dg
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    from random_diffusion_dagster.definitions import defs

    requested = time.time()
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(),
        asset_graph=defs.resolve_asset_graph(),
        partition_names=keys,
        asset_selection=[dg.AssetKey("image_draw"), dg.AssetKey(ASSET)],  # made in one step: selected together
        backfill_timestamp=requested,
        tags={},
        dynamic_partitions_store=instance,
        all_partitions=False,
        title="orchestrated_throughput",
        description=None,
        run_config=None,
    )
    instance.add_backfill(backfill)
    say(f"backfill of {len(keys)} partitions requested")
    return backfill.backfill_id, requested


def materialized_since(instance, keys: set[str], since: float) -> set[str]:
    """Which of `keys` have a materialization recorded after `since` (a rerun's, not the first backfill's)."""
    import dagster as dg

    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(dg.AssetKey(ASSET), asset_partitions=sorted(keys), after_timestamp=since),
        limit=10 * len(keys),
    ).records
    return keys & {r.partition_key for r in records}


def materialized(instance, keys: set[str]) -> bool:
    return keys <= materialized_since(instance, keys, 0.0)


_last_progress = [0.0, -1]


def progress(instance, keys: set[str], since: float) -> bool:
    """Whether every key has materialized since `since`, saying every 15 s how many have."""
    done = len(materialized_since(instance, keys, since))
    if time.time() - _last_progress[0] > 15 and done != _last_progress[1]:
        say(f"{done}/{len(keys)} materialized")
        _last_progress[:] = [time.time(), done]
    return done == len(keys)


def runs_where(instance, tag: str, value: str | None = None):
    import dagster as dg

    runs = instance.get_runs(dg.RunsFilter(tags={tag: value} if value else {}))
    return [r for r in runs if value is not None or tag in r.tags]


def failed_runs(runs) -> list[str]:
    return [r.run_id for r in runs if r.status.value in ("FAILURE", "CANCELED")]


def run_timeline(instance, run) -> dict:
    """One run's split, from its event log timestamps and its log lines."""
    from dagster import DagsterEventType as T

    events = instance.all_logs(run.run_id)
    first: dict[str, float] = {}
    batches, loads, materializations, step_processes = [], [], [], 0
    first_load_line = None
    for entry in events:
        event = entry.dagster_event
        if event is None:
            message = entry.user_message or ""
            if match := BATCH_LINE.search(message):
                batches.append((int(match.group(1)), float(match.group(2))))
            if match := LOAD_LINE.search(message):
                loads.append((match.group(1).strip("'\""), float(match.group(2))))
                first_load_line = first_load_line or entry.timestamp
            continue
        kind = event.event_type
        if kind == T.STEP_WORKER_STARTING:
            step_processes += 1
        if kind == T.ASSET_MATERIALIZATION and event.asset_key.path == [ASSET]:
            materializations.append(entry.timestamp)
        step = event.step_key if kind in (T.STEP_START, T.STEP_SUCCESS) else None
        name = f"{kind.value}:{step}" if step else kind.value
        first.setdefault(name, entry.timestamp)
    get = first.get
    enqueued, starting = get("PIPELINE_ENQUEUED"), get("PIPELINE_STARTING")
    step_start, step_success = get(f"STEP_START:{ASSET}"), get(f"STEP_SUCCESS:{ASSET}")
    ended = get("PIPELINE_SUCCESS") or get("PIPELINE_FAILURE")
    inference, load = sum(s for _, s in batches), sum(s for _, s in loads)
    before_load = (first_load_line - load_first(loads) - step_start) if first_load_line and step_start else None
    return {
        "run_id": run.run_id,
        "status": run.status.value,
        "images": len(materializations),
        "pipeline_loads": int(run.tags.get("random_diffusion/pipeline_loads", len(loads))),
        "compile_events": int(run.tags.get("random_diffusion/compiled_graphs", 0)),
        "graphs_from_cache": int(run.tags.get("random_diffusion/graphs_from_cache", 0)),
        "load_seconds_per_model": dict(loads),
        "batches": [b for b, _ in batches],
        "step_processes": step_processes,
        "created": enqueued,
        "starting": starting,
        "ended": ended,
        "last_materialization": max(materializations, default=None),
        "split": {
            "queue_wait": diff(starting, enqueued),
            "process_start_and_definitions": diff(step_start, starting),
            "torch_import_and_planning": before_load,
            "model_loads": load,
            "inference": inference,
            "rest_of_step_writes_and_metadata": (diff(step_success, step_start) or 0)
            - load
            - inference
            - (before_load or 0),
            "after_step": diff(ended, step_success),
        },
    }


def load_first(loads: list[tuple[str, float]]) -> float:
    return loads[0][1] if loads else 0.0


def diff(later: float | None, earlier: float | None) -> float | None:
    return later - earlier if later is not None and earlier is not None else None


def summarize(runs: list[dict], images: int, requested: float, batch_size: int) -> dict:
    last = max(r["last_materialization"] for r in runs)
    wall = last - requested
    batches = [b for r in runs for b in r["batches"]]
    split = {}
    for name in runs[0]["split"]:
        values = [r["split"][name] for r in runs if r["split"][name] is not None]
        split[name] = round(sum(values), 2)
    first_created = min(r["created"] for r in runs if r["created"])
    # Seconds from one run's end to the next one's launch: the queue daemon's pickup (the pool holds one run).
    spans = sorted((r["starting"], r["ended"]) for r in runs if r["starting"] and r["ended"])
    gaps = [later[0] - earlier[1] for earlier, later in zip(spans, spans[1:], strict=False)]
    return {
        "images": images,
        "runs": len(runs),
        "wall_seconds_request_to_last_materialization": round(wall, 2),
        "orchestrated_images_per_s": round(images / wall, 3),
        "pipeline_loads": sum(r["pipeline_loads"] for r in runs),
        "compile_events": sum(r["compile_events"] for r in runs),
        "graphs_from_cache": sum(r["graphs_from_cache"] for r in runs),
        "load_seconds_per_model": {name: s for r in runs for name, s in r["load_seconds_per_model"].items()},
        "mean_batch_fill": round(sum(batches) / len(batches) / batch_size, 3) if batches else None,
        "pipeline_calls": len(batches),
        "step_processes": sum(r["step_processes"] for r in runs),
        "seconds_to_first_run": round(first_created - requested, 2),
        "wall_seconds_first_run_to_last_materialization": round(last - first_created, 2),
        "split_seconds_summed_over_runs": split,
        "gaps_between_runs_seconds": [round(g, 2) for g in gaps],
        "overlapping_runs": sum(g < 0 for g in gaps),  # the gpu pool should make this 0
        "per_run": [
            {k: v for k, v in r.items() if k not in ("created", "starting", "ended", "last_materialization")}
            for r in runs
        ],
    }


def start_service(command: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    """A long-lived process of its own session (stopped with its children), its output in `log`."""
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def start_daemon(env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    return start_service([tool("random-diffusion"), "daemon", "-w", "workspace.yaml"], env, cwd, log)


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def start_worker(env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    """`random-diffusion worker`, as the README's warm path starts it; returns once Celery says it is ready."""
    worker = start_service([tool("random-diffusion"), "worker", "--loglevel", "INFO"], env, cwd, log)
    wait_for(lambda: " ready." in log.read_text() or worker.poll() is not None, 120, "the celery worker")
    if worker.poll() is not None:
        raise RuntimeError("celery worker did not start:\n" + log.read_text()[-3000:])
    return worker


VARIANT_SETTINGS = ("executor", "per_run", "dequeue", "resident", "backfill_interval")


def parse_variant(text: str) -> dict:
    settings = dict.fromkeys(VARIANT_SETTINGS)  # None: the project's own setting
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        if name not in settings:
            raise SystemExit(f"--variant {text!r}: unknown setting {name!r} ({', '.join(VARIANT_SETTINGS)})")
        settings[name] = value if name == "executor" else int(value)
    settings["name"] = text
    return settings


def run_variant(
    variant: dict, base_env: dict, project: dict, root: Path, args, batch_size: int, with_sensor: bool
) -> dict:
    """A fresh home, image folder, outputs and daemon; a backfill of every partition, then the sensor's figure."""

    import dagster as dg

    work = root / re.sub(r"[^a-z0-9]+", "-", variant["name"].lower() or "default")
    home = work / "home"
    instance_home(home, args.project_root, variant["dequeue"])
    shutil.copytree(project["images"], work / "images", copy_function=os.link)  # the same files, hard-linked
    env = {
        **base_env,
        "DAGSTER_HOME": str(home),
        "RANDOM_DIFFUSION_OUTPUT_DIR": str(work / "outputs"),
        "RANDOM_DIFFUSION_IMAGES_DIR": str(work / "images"),
    }
    env.pop("RANDOM_DIFFUSION_EXECUTOR", None)
    if variant["executor"]:
        env["RANDOM_DIFFUSION_EXECUTOR"] = variant["executor"]
    if variant["per_run"]:
        env["RANDOM_DIFFUSION_MAX_PARTITIONS_PER_RUN"] = str(variant["per_run"])
    if variant["resident"]:
        env["RANDOM_DIFFUSION_RESIDENT_MODELS"] = str(variant["resident"])
    if variant["backfill_interval"]:
        env["RANDOM_DIFFUSION_BACKFILL_INTERVAL_SECONDS"] = str(variant["backfill_interval"])
    # The warm path: the worker starts before anything runs (with celery, registering runs on it too).
    worker = start_worker(env, args.project_root, work / "worker.log") if variant["executor"] == "celery" else None
    started = time.perf_counter()
    subprocess.run(
        [
            tool("dagster"),
            "asset",
            "materialize",
            "-m",
            "random_diffusion_dagster.definitions",
            "--select",
            "source_images,prompt_list,model_catalog",
        ],
        cwd=args.project_root,
        env=env,
        check=True,
        capture_output=True,
    )
    register_seconds = time.perf_counter() - started
    say(f"{variant['name'] or 'default'}: images registered in {register_seconds:.1f} s")
    os.environ.pop("RANDOM_DIFFUSION_EXECUTOR", None)
    os.environ.update(env)  # this process's instance and definitions: the same home and settings
    with dg.DagsterInstance.get() as instance:
        keys = instance.get_dynamic_partitions("images")
        assert len(keys) == args.images, (len(keys), args.images)
        daemon, drop = None, None
        try:
            if not args.quick:
                daemon = start_daemon(env, args.project_root, work / "daemon.log")
                wait_for(
                    lambda: {"SENSOR", "BACKFILL", "QUEUED_RUN_COORDINATOR"} <= set(instance.get_daemon_heartbeats()),
                    180,
                    "the daemon's heartbeats",
                )
                time.sleep(args.settle_seconds)  # the code server is up and the first sensor ticks are behind us
            load = os.getloadavg()
            first_keys = keys[: args.warmup_images or None]
            backfill = launch_backfill(instance, first_keys)
            if args.quick:  # both requests before the daemon starts: neither waits for a daemon loop
                drop = drop_images(instance, args) if with_sensor and args.sensor_images else None
                daemon = start_daemon(env, args.project_root, work / "daemon.log")
            result = finish_backfill(instance, first_keys, backfill, args, batch_size, work)
            result.update(
                {
                    "variant": variant["name"] or "default",
                    "executor": variant["executor"] or "project default",
                    "load_average_at_request": [round(x, 2) for x in load],
                    "register_seconds": round(register_seconds, 2),
                }
            )
            result["other_runs_meanwhile"] = sorted(
                r.job_name
                for r in instance.get_runs()
                if "dagster/backfill" not in r.tags
                and instance.get_run_record_by_id(r.run_id).create_timestamp.timestamp() > backfill[1]
            )
            if args.warm_rerun and not (args.deadline and time.time() > args.deadline):
                shutil.rmtree(env["RANDOM_DIFFUSION_OUTPUT_DIR"])  # every image made again, on the same processes
                result["warm_rerun"] = finish_backfill(
                    instance, keys, launch_backfill(instance, keys), args, batch_size, work
                )
            if with_sensor and args.sensor_images and not (args.deadline and time.time() > args.deadline):
                result["sensor"] = sensor_figure(instance, drop or drop_images(instance, args), args, batch_size)
            return result
        finally:
            for process in (daemon, worker):
                if process:
                    stop(process)


def finish_backfill(instance, keys: list[str], backfill: tuple[str, float], args, batch_size: int, work: Path) -> dict:
    """Waits for a requested backfill (id, request time): timed to the last of its keys' new materializations."""
    backfill_id, requested = backfill

    def backfill_runs():
        return runs_where(instance, "dagster/backfill", backfill_id)

    wait_for(
        lambda: progress(instance, set(keys), requested) or failed_runs(backfill_runs()), args.timeout, "the backfill"
    )
    runs = wait_for(
        lambda: all(r.is_finished for r in backfill_runs()) and backfill_runs(), 120, "the backfill's runs to end"
    )
    if failed_runs(runs):
        raise RuntimeError(f"backfill runs failed: {failed_runs(runs)}; see {work / 'daemon.log'}")
    result = summarize([run_timeline(instance, r) for r in runs], len(keys), requested, batch_size)
    say(
        "backfill: "
        + json.dumps({k: v for k, v in result.items() if k not in ("per_run", "split_seconds_summed_over_runs")})
    )
    return result


def drop_images(instance, args) -> tuple[set[str], set[str], float]:
    """New files in the folder, as a user copies them in: (their keys, runs before, when)."""
    before = {r.run_id for r in instance.get_runs()}
    dropped = time.time()
    paths = make_images(Path(os.environ["RANDOM_DIFFUSION_IMAGES_DIR"]), args.sensor_images, args.size, "new", 2)
    return {p.name for p in paths}, before, dropped


def sensor_figure(instance, drop: tuple[set[str], set[str], float], args, batch_size: int) -> dict:
    """Time from the files' arrival until new_images_sensor's runs have materialized them all."""
    from random_diffusion_dagster.settings import sensor_interval_seconds

    keys, before, dropped = drop
    wait_for(lambda: materialized(instance, keys), args.timeout, "the sensor's runs")

    def sensor_runs():
        return [
            r
            for r in instance.get_runs()
            if r.run_id not in before and r.tags.get("dagster/sensor_name") == "new_images_sensor"
        ]

    runs = wait_for(
        lambda: all(r.is_finished for r in sensor_runs()) and sensor_runs(), 120, "the sensor's runs to end"
    )
    if failed_runs(runs):
        raise RuntimeError(f"sensor runs failed: {failed_runs(runs)}")
    result = summarize([run_timeline(instance, r) for r in runs], len(keys), dropped, batch_size)
    result["note"] = (
        f"from the files' arrival: includes waiting for the sensor's next tick (every {sensor_interval_seconds()} s)"
    )
    return result


# ---------------------------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU: the demo catalog, small images, minutes")
    parser.add_argument("--images", type=int, default=None, help="source images (default 128)")
    parser.add_argument(
        "--sensor-images",
        type=int,
        default=None,
        help="new files for the sensor figure (default: as many as --images; 0 skips it)",
    )
    parser.add_argument("--size", type=int, default=None, help="source image side in px (512; 128 with --tiny)")
    parser.add_argument(
        "--model-shapes",
        choices=("full", "tiny"),
        default="full",
        help="without --tiny: SD-1.5 shapes, or gpu_throughput.py's tiny ones (the path, on a CPU)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        help="executor=in_process|multiprocess|celery,per_run=N,dequeue=S,resident=N,backfill_interval=S "
        "(celery: a `random-diffusion worker` started before the request; resident: models kept loaded); "
        "repeatable; the first is the headline, the only one with the sensor figure (default: the "
        "project's settings)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="CPU threads for torch, engine and runs alike (default 1 on a CPU, the device's on CUDA)",
    )
    parser.add_argument("--settle-seconds", type=float, default=10.0, help="wait after the daemon is up")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="checks the path, not the timing: the backfill and "
        "the sensor's files come before the daemon starts, so neither waits for a daemon loop",
    )
    parser.add_argument(
        "--engine-images",
        type=int,
        default=None,
        help="time the bare engine on the first N of the images (default: all); saves a lent GPU's minutes",
    )
    parser.add_argument(
        "--engine-compile",
        action="store_true",
        help="the bare engine with compile_unet and compile_vae, as a warm worker on a CUDA GPU runs by default",
    )
    parser.add_argument(
        "--engine-last",
        action="store_true",
        help="time the engine after the variants (its compilation then reads what the worker compiled); the "
        "backfill figures come back even when a lent GPU's time ends during the engine",
    )
    parser.add_argument(
        "--warm-rerun",
        action="store_true",
        help="after the first backfill, delete the outputs and backfill every partition again on the same "
        "daemon and worker: what every later backfill on a warm worker gets (the headline figures; the first "
        "backfill under first_backfill)",
    )
    parser.add_argument(
        "--warmup-images",
        type=int,
        default=None,
        help="with --warm-rerun: the first backfill covers only the first N partitions (it pays the loads and "
        "compilation); saves a lent GPU's minutes",
    )
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=None,
        help="start no further variant (nor the sensor figure) once this many seconds have passed; "
        "the JSON is written after every variant",
    )
    parser.add_argument("--project-root", type=Path, default=DEFAULT_ROOT, help="the checkout children import")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--engine-worker", help=argparse.SUPPRESS)
    parser.add_argument("--images-dir", help=argparse.SUPPRESS)
    parser.add_argument("--prompts", help=argparse.SUPPRESS)
    parser.add_argument("--models", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_worker:
        args.torch_threads = args.torch_threads or None
        return engine_worker(args)
    if not args.out:
        parser.error("--out is required")
    args.project_root = args.project_root.resolve()
    sys.path.insert(0, str(args.project_root))
    args.images = args.images or 128
    args.size = args.size or (128 if args.tiny else 512)
    args.sensor_images = args.images if args.sensor_images is None else args.sensor_images
    variants = [parse_variant(v) for v in (args.variant or [""])]
    args.deadline = time.time() + args.budget_seconds if args.budget_seconds else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="orchestrated-"))
    try:
        result = measure(args, variants, root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "variants"}, indent=2))
    print(f"wrote {args.out}")
    return 0


def measure(args, variants: list[dict], root: Path) -> dict:
    from random_diffusion_dagster.defs.resources import DiffusionEngineResource

    images = root / "images"
    make_images(images, args.images, args.size, "img", seed=1)
    say(f"{args.images} source images made")
    if args.tiny:
        project = {"models": str(args.project_root / "data" / "models.yaml")}
    else:
        project = {"models": str(gpu_catalog(root, args.model_shapes))}
        say("models built and saved")
    project.update(
        images=str(images), prompts=str(args.project_root / "data" / "prompts.txt"), root=str(args.project_root)
    )
    cuda = not args.tiny and _cuda_available()
    threads = args.torch_threads or (None if cuda else 1)
    env = {
        **os.environ,
        **project_env(root, root / "unused-home"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(args.project_root), os.environ.get("PYTHONPATH")])),
        # One compile cache for the invocation (engine first, then the worker), unless one is given (a lent GPU's
        # second call reusing the first's kernels): no kernels from unnamed earlier runs.
        "TORCHINDUCTOR_CACHE_DIR": os.environ.get("TORCHINDUCTOR_CACHE_DIR") or str(root / "torch-compile-cache"),
        "RANDOM_DIFFUSION_MODELS_FILE": project["models"],
        "RANDOM_DIFFUSION_PROMPTS_FILE": project["prompts"],
    }
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), RANDOM_DIFFUSION_TORCH_THREADS=str(threads))
    load_before = os.getloadavg()

    def time_engine() -> dict:
        figures = run_engine(env, project, root, threads, args)
        say("engine: " + json.dumps({k: v for k, v in figures.items() if k != "batches"}))
        return figures

    engine = None if args.engine_last else time_engine()
    batch_size = DiffusionEngineResource().batch_size_on("cuda" if cuda else "cpu")  # runs' default, as the engine's
    results, skipped = [], []
    for variant in variants:
        if results and args.deadline and time.time() > args.deadline:
            skipped.append(variant["name"])  # a lent GPU's minutes are counted: the figures so far come back
            continue
        results.append(run_variant(variant, env, project, root, args, batch_size, with_sensor=not results))
        say(
            f"{variant['name'] or 'default'}: "
            + json.dumps({k: v for k, v in results[-1].items() if k not in ("per_run", "sensor")})
        )
        args.out.write_text(json.dumps(report(args, project, threads, engine, results, load_before), indent=2) + "\n")
    engine = engine or time_engine()
    result = report(args, project, threads, engine, results, load_before)
    result["variants_skipped_at_deadline"] = skipped
    return result


TIMED_KEYS = (
    "images",
    "orchestrated_images_per_s",
    "wall_seconds_request_to_last_materialization",
    "seconds_to_first_run",
    "runs",
    "pipeline_loads",
    "compile_events",
    "graphs_from_cache",
    "load_seconds_per_model",
    "mean_batch_fill",
)


def report(args, project: dict, threads: int | None, engine: dict | None, results: list[dict], load_before) -> dict:
    """The timed backfill beside the engine at the same stage (engine keys absent until it has run: --engine-last).

    With --warm-rerun the timed backfill is the second one, on the warm worker, against the engine's second pass
    in its process (both with everything loaded and compiled); the first backfill, which pays the loads and the
    compilation, is under `first_backfill`. Without it, the one backfill against the engine's whole process."""
    head = results[0]
    rerun = head.get("warm_rerun")
    timed = rerun or head
    figures = {
        "device": _device_name(engine["device"] if engine else "cuda" if _cuda_available() else "cpu"),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}",
        "image_size": args.size,
        "catalog": project["models"],
        "torch_threads": threads,
        **{key: timed[key] for key in TIMED_KEYS},
        "orchestrated_images_per_s_from_first_run": round(
            timed["images"] / timed["wall_seconds_first_run_to_last_materialization"], 3
        ),
    }
    if rerun:
        figures["first_backfill"] = {key: head[key] for key in TIMED_KEYS}
        figures["worker_pipeline_loads"] = head["pipeline_loads"] + rerun["pipeline_loads"]  # both backfills
    if engine:
        if rerun:
            engine_rate, engine_seconds = engine["warm_rerun_images_per_s"], engine["warm_rerun_seconds"]
        else:
            engine_rate, engine_seconds = engine["images_per_s_with_imports"], engine["wall_seconds_with_process_start"]
        engine_wall = engine_seconds * timed["images"] / engine["images"]  # scaled when --engine-images timed fewer
        figures.update(
            {
                "engine_images_per_s": round(engine_rate, 3),
                "engine_images_per_s_with_imports": round(engine["images_per_s_with_imports"], 3),
                "engine_images_per_s_without_imports": round(engine["images_per_s_without_imports"], 3),
                "ratio": round(engine_rate / timed["orchestrated_images_per_s"], 2),
                "orchestrated_fraction_of_engine": round(timed["orchestrated_images_per_s"] / engine_rate, 3),
                "engine_wall_seconds": round(engine_wall, 2),
                "dagster_seconds_per_run_above_engine": round(
                    (timed["wall_seconds_request_to_last_materialization"] - engine_wall) / timed["runs"], 2
                ),
                "engine": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in engine.items()},
            }
        )
    figures.update(
        {
            "load_average_before": [round(x, 2) for x in load_before],
            "variants": results,
            "notes": "ratio = engine / orchestrated images per second (orchestrated_fraction_of_engine its inverse); "
            "with --warm-rerun both are second passes (the backfill on the same daemon and worker with the outputs "
            "deleted, the engine in its own process), else the engine counts its process's start and imports (a "
            "run pays those too); dagster_seconds_per_run_above_engine = (orchestrated wall - engine wall) / runs, "
            "the engine's wall scaled to the backfill's images when --engine-images timed fewer; "
            "split_seconds_summed_over_runs from event-log timestamps.",
        }
    )
    return figures


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


if __name__ == "__main__":
    raise SystemExit(main())
