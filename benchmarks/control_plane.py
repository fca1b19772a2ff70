"""What Dagster's bookkeeping costs at large file counts, with no diffusion at all ("A million images").

    python benchmarks/control_plane.py --files 10000 --granularity image --storage sqlite --out cp-image-sqlite.json
    python benchmarks/control_plane.py --files 1000000 --granularity folder --folders 1000 --storage postgres \
        --out benchmarks/results/control-plane-1m-folder-postgres.json

One config per invocation, in a temporary folder with its own DAGSTER_HOME (the project's dagster.yaml: its SQLite
storage under that home, or with `--storage postgres` the project's BatchingPostgresStorage on a throwaway database of
the local server, RANDOM_DIFFUSION_TEST_POSTGRES, default postgres@127.0.0.1:5432; the database is dropped at the end).
The N source files are hard links to a few 8x8 PNG seeds (ext4 allows 65,000 links per inode; 50,000 each here), their
mtimes in the past so they count as settled: flat (`img000000.png`), or with `--granularity folder` spread over F
folders (`c0000/img000000.png`, `--folders`, default N // 1000; `--folders` also spreads an image-granularity tree).
The prompt list and catalog are the project's shipped data/prompts.txt and data/models.yaml.

Measured in this order (seconds unless named otherwise), written as one JSON object to --out:
- first_tick_s: `new_images_sensor`'s first evaluation on the empty instance (the sensor alone);
- register_s: applying that tick's dynamic-partition requests, as the daemon does (`apply_partition_requests`);
- quiet_tick_s: a second tick, nothing changed;
- new_files_tick_s: a tick after 100 new files (separate files, not links: a new link moves the change time of every
  file sharing its inode) were added, spread over 4 existing folders where there are folders; its requests are then
  applied, so the steps below cover those partitions too;
- plan_one_partition_s: `current_planner(instance, dataset)`, `dataset.files_for([key])` and `planner.plan(files)` for
  the first registered partition;
- staleness_pass_s: the catch-up schedule's pass, `out_of_date(instance, dataset, current_planner(...))` over every
  partition (nothing made yet: every image missing) and `run_requests(...)` on its result;
- backfill_launch_s: the UI's backfill of every partition of `image_draw` + `diffused_image` (the multi-asset is not
  subsettable), sent as the asset page's launch dialog sends it (GraphQL `launchPartitionBackfill` with the asset
  selection and every partition name) to a real `random-diffusion-webserver` (dagster-webserver behind the project's
  guard), until the backfill's runs exist and are all QUEUED, created by a real `random-diffusion daemon` (Dagster's
  daemon, backfills picked up every second); `concurrency: runs: max_concurrent_runs: 0` keeps the runs queued;
- ui_partition_status_s: the asset page's `PartitionHealthQuery` (partition keys and `assetPartitionStatuses`) for
  `diffused_image`, to that webserver: the second of two queries (warm);
- peak_rss_mb: peak resident memory (MB) of this process (getrusage), and of the webserver and the daemon, each the
  sum of VmHWM over its process tree (code servers included) read just before they are stopped.
The project's sensors are stopped over GraphQL before the daemon starts, so no sensor tick (a scan of every file)
runs beside the backfill; the catch-up schedule is left as it is (it fires at night).

Progress goes to stderr; everything started (webserver, daemon, their children, the database) ends on exit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))

from local_services import (  # noqa: E402  (standard library only at import)
    POSTGRES,
    apply_partition_requests,
    descendants,
    shipped_instance_config,
    stop_process_groups,
    throwaway_database,
    wait_for,
)

BIN = Path(sys.executable).parent
LINKS_PER_SEED = 50_000  # ext4: at most 65,000 links per inode
NEW_FILES = 100
NEW_FILE_FOLDERS = 4
SETTLED_AGE_S = 600  # past new_images_sensor.SETTLE_SECONDS
ASSET = "diffused_image"
BACKFILL_TAG = "dagster/backfill"
STARTED = time.perf_counter()

REPORTED_KEYS = (
    "files",
    "partitions",
    "granularity",
    "storage",
    "first_tick_s",
    "register_s",
    "quiet_tick_s",
    "new_files_tick_s",
    "plan_one_partition_s",
    "staleness_pass_s",
    "backfill_launch_s",
    "ui_partition_status_s",
    "peak_rss_mb",
)


def say(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:7.1f} s] {message}", file=sys.stderr, flush=True)


def tool(name: str) -> str:
    """A console script of this environment, else from PATH."""
    return str(BIN / name) if (BIN / name).exists() else shutil.which(name) or name


# ---------------------------------------------------------------------------------------------- the files
def _write_png(path: Path, color: tuple[int, int, int]) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8), color).save(path)
    past = time.time() - SETTLED_AGE_S
    os.utime(path, (past, past))


def make_tree(root: Path, files: int, folders: int) -> tuple[Path, list[str]]:
    """N hard links to settled 8x8 PNG seeds under root/images, flat or in `folders` folders: (images, folders)."""
    images, seeds_dir = root / "images", root / "seeds"
    images.mkdir()
    seeds_dir.mkdir()
    seeds = [seeds_dir / f"seed{number}.png" for number in range(files // LINKS_PER_SEED + 1)]
    for number, seed in enumerate(seeds):
        _write_png(seed, (120, 80, (40 + number) % 256))  # distinct contents: a seed per 50,000 links
    width = max(6, len(str(files - 1)))
    names = [f"c{index:0{max(4, len(str(folders - 1)))}d}" for index in range(folders)]
    for name in names:
        (images / name).mkdir()
    for index in range(files):
        folder = images / names[index * folders // files] if folders else images
        os.link(seeds[index // LINKS_PER_SEED], folder / f"img{index:0{width}d}.png")
    return images, names


def add_new_files(images: Path, folders: list[str]) -> None:
    """NEW_FILES separate settled PNGs (not links), spread over NEW_FILE_FOLDERS existing folders if there are any."""
    chosen = [folders[i * len(folders) // NEW_FILE_FOLDERS] for i in range(min(NEW_FILE_FOLDERS, len(folders)))]
    for number in range(NEW_FILES):
        folder = images / chosen[number % len(chosen)] if chosen else images
        _write_png(folder / f"new{number:03d}.png", (number, 200, 200))


# ---------------------------------------------------------------------------------------------- the instance
def instance_config(home: Path, postgres_url: str | None) -> dict:
    """The project's dagster.yaml under `home` (or its PostgreSQL storage on `postgres_url`), runs never dequeued."""
    config = shipped_instance_config(PROJECT_ROOT, home)
    if postgres_url:
        config["storage"] = {
            "custom": {
                "module": "random_diffusion_dagster.runtime.instance_storage.postgres",
                "class": "BatchingPostgresStorage",
                "config": {"postgres_url": postgres_url},
            }
        }
    # Dagster's schema: "Set to 0 to stop any runs from launching" (concurrency > runs; run_queue's would conflict).
    config.setdefault("concurrency", {}).setdefault("runs", {})["max_concurrent_runs"] = 0
    config["telemetry"] = {"enabled": False}
    return config


# ---------------------------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_service(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    """A process in a session of its own (stopped with its process group), its output in `log`."""
    with log.open("w") as out:
        return subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def peak_rss(pid: int) -> tuple[float, dict[str, float]]:
    """(sum of VmHWM over the process tree in MB, each process's "name pid" -> MB)."""
    each = {}
    for member in [pid, *descendants(pid)]:
        try:
            status = Path(f"/proc/{member}/status").read_text()
            cmdline = Path(f"/proc/{member}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if "VmHWM" not in fields:
            continue
        words = [part.decode(errors="replace") for part in cmdline if part]
        name = " ".join(Path(word).name for word in words[:4])[:80] or fields.get("Name", "?").strip()
        each[f"{name} [{member}]"] = round(int(fields["VmHWM"].split()[0]) / 1024, 1)
    return round(sum(each.values()), 1), each


# ---------------------------------------------------------------------------------------------- GraphQL
def graphql(port: int, query: str, variables: dict | None = None, timeout: float = 1800) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.loads(response.read())
    if answer.get("errors"):
        raise RuntimeError(f"GraphQL errors: {json.dumps(answer['errors'])[:3000]}")
    return answer["data"]


WORKSPACE_QUERY = """
query { workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""

SENSORS_QUERY = """
query { repositoriesOrError { __typename ... on RepositoryConnection { nodes { name
  sensors { id name sensorState { status } } } } } }
"""

STOP_SENSOR = """
mutation StopSensor($id: String!) { stopSensor(id: $id) { __typename
  ... on StopSensorMutationResult { instigationState { status } } ... on PythonError { message } } }
"""

# As the UI's launch dialog sends it (webapp: LaunchPartitionBackfill), less the error fragments it never gets here.
LAUNCH_BACKFILL = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PartitionSetNotFoundError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on UnauthorizedError { message }
    ... on PipelineNotFoundError { message }
    ... on PythonError { message stack }
  }
}
"""

# The asset page's partition status query, verbatim from dagster-webserver 1.13.27's webapp (PartitionHealthQuery).
PARTITION_HEALTH_QUERY = """
query PartitionHealthQuery($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      id
      partitionKeysByDimension { name type partitionKeys }
      assetPartitionStatuses {
        ... on TimePartitionStatuses { ranges { status startTime endTime startKey endKey } }
        ... on DefaultPartitionStatuses { materializedPartitions materializingPartitions failedPartitions }
        ... on MultiPartitionStatuses {
          primaryDimensionName
          ranges {
            primaryDimStartKey
            primaryDimEndKey
            primaryDimStartTime
            primaryDimEndTime
            secondaryDim {
              ... on TimePartitionStatuses { ranges { status startTime endTime startKey endKey } }
              ... on DefaultPartitionStatuses { materializedPartitions materializingPartitions failedPartitions }
            }
          }
        }
      }
    }
  }
}
"""


def workspace_loaded(port: int, webserver: subprocess.Popen, log: Path) -> bool:
    if webserver.poll() is not None:
        raise RuntimeError(f"the webserver exited ({webserver.returncode}):\n{log.read_text()[-3000:]}")
    try:
        data = graphql(port, WORKSPACE_QUERY, timeout=30)
    except (urllib.error.URLError, ConnectionError, TimeoutError, RuntimeError):
        return False
    entries = data["workspaceOrError"].get("locationEntries") or []
    for entry in entries:
        problem = entry.get("locationOrLoadError") or {}
        if problem.get("__typename") == "PythonError":
            raise RuntimeError(f"code location {entry['name']} failed to load: {problem.get('message')}")
    return bool(entries) and all(entry["loadStatus"] == "LOADED" for entry in entries)


def stop_sensors(port: int) -> list[str]:
    stopped = []
    for repository in graphql(port, SENSORS_QUERY)["repositoriesOrError"]["nodes"]:
        for sensor in repository["sensors"]:
            if sensor["sensorState"]["status"] != "STOPPED":
                result = graphql(port, STOP_SENSOR, {"id": sensor["id"]})["stopSensor"]
                if result["__typename"] != "StopSensorMutationResult":
                    raise RuntimeError(f"could not stop sensor {sensor['name']}: {result}")
                stopped.append(sensor["name"])
    return stopped


# ---------------------------------------------------------------------------------------------- the measures
def timed(function, *args):
    started = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - started


def tick(instance, dataset, cursor: str | None):
    """(result, seconds in the sensor): one evaluation, as the daemon makes it."""
    import dagster as dg

    from random_diffusion_dagster.defs.automation.new_images_sensor import new_images_sensor

    with dg.build_sensor_context(instance=instance, cursor=cursor, resources={"dataset": dataset}) as context:
        return timed(new_images_sensor, context)


def plan_one(instance, dataset, key: str) -> int:
    from random_diffusion_dagster.defs.out_of_date import current_planner

    planner = current_planner(instance, dataset)
    files, _ = dataset.files_for([key])
    tasks, _unplanned = planner.plan(files)
    return len(tasks)


def staleness_pass(instance, dataset) -> tuple[int, int]:
    from random_diffusion_dagster.defs.out_of_date import current_planner, out_of_date

    found = out_of_date(instance, dataset, current_planner(instance, dataset))
    requests = found.run_requests(lambda first: f"bench:{first}")
    return len(found.reasons), len(requests)


def backfill_runs_per_partition_limit() -> int | None:
    """Partitions per run of `diffused_image`'s backfill policy, as the daemon's definitions read it (None: one run)."""
    from random_diffusion_dagster.defs.assets.diffused_image import diffused_image

    policy = diffused_image.backfill_policy
    return policy.max_partitions_per_run if policy else 1


def covered_partitions(runs, ordered: list[str]) -> int:
    """How many partitions the runs cover: a range tag pair each, or one partition tag."""
    position = {key: index for index, key in enumerate(ordered)}
    covered = 0
    for run in runs:
        start, end = (
            run.tags.get("dagster/asset_partition_range_start"),
            run.tags.get("dagster/asset_partition_range_end"),
        )
        if start is not None and end is not None:
            covered += position[end] - position[start] + 1
        elif run.tags.get("dagster/partition") is not None:
            covered += 1
    return covered


def launch_backfill(instance, port: int, keys: list[str], timeout: float) -> tuple[float, dict]:
    """(seconds from the request to every run QUEUED, facts to check): the UI's request, the daemon's runs."""
    import dagster as dg

    per_run = backfill_runs_per_partition_limit()
    expected_runs = math.ceil(len(keys) / per_run) if per_run else 1
    params = {
        "assetSelection": [{"path": ["image_draw"]}, {"path": [ASSET]}],
        "partitionNames": keys,
        "fromFailure": False,
        "tags": [],
    }
    started = time.perf_counter()
    answer = graphql(port, LAUNCH_BACKFILL, {"backfillParams": params}, timeout=timeout)["launchPartitionBackfill"]
    request_s = time.perf_counter() - started
    if answer["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(f"launchPartitionBackfill: {json.dumps(answer)[:3000]}")
    backfill_id = answer["backfillId"]
    say(f"backfill {backfill_id} requested ({request_s:.2f} s); waiting for {expected_runs} queued runs")
    mine = dg.RunsFilter(tags={BACKFILL_TAG: backfill_id})
    not_queued = dg.RunsFilter(tags={BACKFILL_TAG: backfill_id}, statuses=[dg.DagsterRunStatus.NOT_STARTED])

    polls = [0]

    def all_queued() -> bool:
        polls[0] += 1
        if polls[0] % 20 == 0:  # every 5 s: reading the backfill deserializes its partition subsets
            backfill = instance.get_backfill(backfill_id)
            if backfill is not None and backfill.status.value in ("FAILED", "CANCELED"):
                raise RuntimeError(f"backfill {backfill_id} {backfill.status.value}: {backfill.error}")
        return instance.get_runs_count(mine) >= expected_runs and instance.get_runs_count(not_queued) == 0

    wait_for(all_queued, timeout, "the backfill's runs to be queued", interval=0.25)
    seconds = time.perf_counter() - started
    runs = instance.get_runs(mine)
    statuses = sorted({run.status.value for run in runs})
    covered = covered_partitions(runs, keys)
    if covered != len(keys) or len(runs) != expected_runs:
        raise RuntimeError(f"{len(runs)} backfill runs cover {covered} of {len(keys)} partitions")
    return seconds, {"runs": len(runs), "statuses": statuses, "request_s": round(request_s, 3), "per_run": per_run}


def ui_partition_status(port: int, timeout: float) -> tuple[float, dict]:
    """The second of two PartitionHealthQuery calls for diffused_image: (seconds, what it answered)."""
    variables = {"assetKey": {"path": [ASSET]}}
    graphql(port, PARTITION_HEALTH_QUERY, variables, timeout=timeout)
    data, seconds = timed(graphql, port, PARTITION_HEALTH_QUERY, variables, timeout)
    node = data["assetNodeOrError"]
    statuses = node.get("assetPartitionStatuses") or {}
    keys = sum(len(d["partitionKeys"]) for d in node.get("partitionKeysByDimension", []))
    return seconds, {
        "keys": keys,
        "materializing": len(statuses.get("materializingPartitions") or []),
        "materialized": len(statuses.get("materializedPartitions") or []),
    }


# ---------------------------------------------------------------------------------------------- the run
def measure(args, root: Path, postgres_url: str | None, stack: ExitStack) -> dict:
    home = root / "home"
    home.mkdir()
    import yaml

    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_config(home, postgres_url)))
    outputs = root / "outputs"
    outputs.mkdir()
    say(f"making {args.files:,} files ({args.folders} folders)")
    images, folders = make_tree(root, args.files, args.folders)
    say("files made")

    import dagster as dg

    from random_diffusion_dagster.defs.partitions import images_partitions
    from random_diffusion_dagster.defs.resources import DatasetResource

    extra = {} if args.granularity == "image" else {"partitions": args.granularity}  # before and after the field
    dataset = DatasetResource(
        images_dir=str(images),
        output_dir=str(outputs),
        prompts_file=str(PROJECT_ROOT / "data" / "prompts.txt"),
        models_file=str(PROJECT_ROOT / "data" / "models.yaml"),
        wildcards_dir=str(PROJECT_ROOT / "data" / "wildcards"),
        **extra,
    )
    instance = stack.enter_context(dg.DagsterInstance.from_config(str(home)))
    figures: dict = {"files": args.files, "granularity": args.granularity, "storage": args.storage}

    first, figures["first_tick_s"] = tick(instance, dataset, None)
    say(f"first tick {figures['first_tick_s']:.2f} s: {len(first.run_requests)} run requests")
    _, figures["register_s"] = timed(apply_partition_requests, instance, first)
    figures["partitions"] = len(instance.get_dynamic_partitions(images_partitions.name))
    say(f"{figures['partitions']:,} partitions registered in {figures['register_s']:.2f} s")
    quiet, figures["quiet_tick_s"] = tick(instance, dataset, first.cursor)
    if quiet.run_requests or quiet.dynamic_partitions_requests:
        raise RuntimeError(f"the quiet tick asked for {len(quiet.run_requests)} runs and partition changes")
    say(f"quiet tick {figures['quiet_tick_s']:.2f} s")
    add_new_files(images, folders)
    change, figures["new_files_tick_s"] = tick(instance, dataset, quiet.cursor)
    apply_partition_requests(instance, change)
    keys = instance.get_dynamic_partitions(images_partitions.name)
    say(
        f"new-files tick {figures['new_files_tick_s']:.2f} s: {len(change.run_requests)} run requests, "
        f"{len(keys):,} partitions"
    )

    tasks, figures["plan_one_partition_s"] = timed(plan_one, instance, dataset, keys[0])
    say(f"planned partition {keys[0]!r} ({tasks} tasks) in {figures['plan_one_partition_s']:.2f} s")
    (stale, catch_up_runs), figures["staleness_pass_s"] = timed(staleness_pass, instance, dataset)
    say(f"staleness pass {figures['staleness_pass_s']:.2f} s: {stale:,} out of date, {catch_up_runs} runs")

    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "RANDOM_DIFFUSION_IMAGES_DIR": str(images),
        "RANDOM_DIFFUSION_OUTPUT_DIR": str(outputs),
        "RANDOM_DIFFUSION_PROMPTS_FILE": dataset.prompts_file,
        "RANDOM_DIFFUSION_MODELS_FILE": dataset.models_file,
        "RANDOM_DIFFUSION_WILDCARDS_DIR": dataset.wildcards_dir,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    port = free_port()
    services: list[subprocess.Popen] = []
    stack.callback(stop_process_groups, services)  # and what they left running in sessions of their own
    webserver_log, daemon_log = root / "webserver.log", root / "daemon.log"
    webserver = start_service(
        [tool("random-diffusion-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        env,
        webserver_log,
    )
    services.append(webserver)
    wait_for(lambda: workspace_loaded(port, webserver, webserver_log), args.timeout, "the webserver", interval=0.5)
    stopped = stop_sensors(port)
    say(f"webserver up on port {port}; sensors stopped: {', '.join(stopped) or 'none'}")
    daemon = start_service([tool("random-diffusion"), "daemon", "-w", "workspace.yaml"], env, daemon_log)
    services.append(daemon)

    def daemon_up() -> bool:
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited ({daemon.returncode}):\n{daemon_log.read_text()[-3000:]}")
        return {"SENSOR", "BACKFILL", "QUEUED_RUN_COORDINATOR"} <= set(instance.get_daemon_heartbeats())

    wait_for(daemon_up, args.timeout, "the daemon's heartbeats", interval=0.5)
    say("daemon up")

    figures["backfill_launch_s"], backfill = launch_backfill(instance, port, keys, args.timeout)
    say(f"backfill: {backfill['runs']} runs {backfill['statuses']} in {figures['backfill_launch_s']:.2f} s")
    figures["ui_partition_status_s"], health = ui_partition_status(port, args.timeout)
    say(f"partition status query {figures['ui_partition_status_s']:.2f} s: {health}")

    webserver_mb, webserver_each = peak_rss(webserver.pid)
    daemon_mb, daemon_each = peak_rss(daemon.pid)
    figures["peak_rss_mb"] = {
        "benchmark": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "webserver": webserver_mb,
        "daemon": daemon_mb,
        "webserver_processes": webserver_each,
        "daemon_processes": daemon_each,
    }
    figures["_facts"] = {
        "folders": len(folders),
        "partitions_later": len(keys),
        "first_tick_run_requests": len(first.run_requests),
        "new_files_tick_run_requests": len(change.run_requests),
        "staleness_out_of_date": stale,
        "staleness_run_requests": catch_up_runs,
        "backfill": backfill,
        "ui": health,
        "sensors_stopped": stopped,
    }
    return figures


def storage_description(args, postgres_url: str | None) -> str:
    if not postgres_url:
        return "SQLite: the project's BatchingSqliteStorage (dagster.yaml) under a temporary DAGSTER_HOME"
    import psycopg2

    with psycopg2.connect(postgres_url.replace("postgresql+psycopg2://", "postgresql://")) as connection:
        version = connection.server_version
    major, minor = version // 10000, version % 10000
    return (
        f"PostgreSQL {major}.{minor} at {POSTGRES.split('@')[-1]}: the project's BatchingPostgresStorage, throwaway db"
    )


def report(args, figures: dict, storage: str, wall: float) -> dict:
    import dagster as dg

    facts = figures.pop("_facts")
    rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}
    result = {key: rounded[key] for key in REPORTED_KEYS}
    backfill = facts["backfill"]
    result["partitions_per_run"] = backfill["per_run"]  # RANDOM_DIFFUSION_MAX_PARTITIONS_PER_RUN as the daemon read it
    result["machine"] = {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "dagster": dg.__version__,
        "storage": storage,
        "platform": platform.platform(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    layout = f"flat folder of {args.files:,} files" if not facts["folders"] else f"{facts['folders']:,} folders"
    result["notes"] = (
        f"Files: {layout}, hard links to 8x8 PNG seeds, settled. new_files_tick_s: {NEW_FILES} new files; its "
        f"partition requests were applied, so the later steps cover {facts['partitions_later']:,} partitions. "
        f"Ticks asked for {facts['first_tick_run_requests']} runs (first) and {facts['new_files_tick_run_requests']} "
        f"(new files). Staleness pass: {facts['staleness_out_of_date']:,} images out of date, "
        f"{facts['staleness_run_requests']} run requests. Backfill: GraphQL launchPartitionBackfill to "
        "random-diffusion-webserver (dagster-webserver behind the project's guard) with assetSelection "
        "[image_draw, diffused_image] and every partition name, as the asset page's launch dialog sends it "
        f"(the request itself answered in {backfill['request_s']} s); runs created by random-diffusion daemon "
        f"(backfill loop every 1 s): {backfill['runs']} runs of up to {backfill['per_run']} partitions, statuses "
        f"{backfill['statuses']}, held by concurrency.runs.max_concurrent_runs 0; the time ends at the first poll "
        "(every 0.25 s) that saw every run QUEUED. Sensors stopped over GraphQL before the daemon started: "
        f"{', '.join(facts['sensors_stopped']) or 'none'}. ui_partition_status_s: PartitionHealthQuery, the second "
        f"of two, answering {facts['ui']['keys']:,} keys, {facts['ui']['materializing']:,} materializing (the queued "
        f"runs), {facts['ui']['materialized']:,} materialized. peak_rss_mb: webserver and daemon are sums of VmHWM "
        f"over their process trees (code servers included). Whole benchmark: {wall:.0f} s."
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, required=True)
    parser.add_argument("--granularity", default="image", help="image or folder (shard:N is passed on as well)")
    parser.add_argument("--storage", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--folders",
        type=int,
        default=None,
        help="folders the files are spread over (default: N // 1000 with --granularity folder, none (flat) otherwise)",
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed for each wait")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.granularity not in ("image", "folder") and not args.granularity.startswith("shard:"):
        parser.error("--granularity must be image or folder (or shard:N)")
    if args.files < 1:
        parser.error("--files must be at least 1")
    if args.folders is None:
        args.folders = max(1, args.files // 1000) if args.granularity == "folder" else 0
    if args.folders < 0 or args.folders > args.files:
        parser.error("--folders must be between 0 and --files")
    # Read by the project's settings when its modules load (backfill policy, sensors): this process and its children.
    os.environ.pop("RANDOM_DIFFUSION_PARTITIONS", None)
    if args.granularity != "image":
        os.environ["RANDOM_DIFFUSION_PARTITIONS"] = args.granularity
    for variable in ("RANDOM_DIFFUSION_MAX_PARTITIONS_PER_RUN", "RANDOM_DIFFUSION_SEED", "RANDOM_DIFFUSION_VARIANTS"):
        os.environ.pop(variable, None)  # the project's defaults
    os.environ["DAGSTER_TELEMETRY_DISABLED"] = "1"
    # A terminated or interrupted benchmark still cleans up. Dagster maps SIGTERM to SIGINT's handler in places
    # (dagster._utils.interrupts), and a shell's background job starts with SIGINT ignored: both raise here.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    root = Path(tempfile.mkdtemp(prefix="control-plane-"))
    try:
        with ExitStack() as stack:
            postgres_url = stack.enter_context(throwaway_database("rdd_cp")) if args.storage == "postgres" else None
            storage = storage_description(args, postgres_url)
            figures = measure(args, root, postgres_url, stack)
        result = report(args, figures, storage, time.perf_counter() - STARTED)
    finally:
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
