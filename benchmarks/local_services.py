"""Real local services for benchmarks and tests: a throwaway PostgreSQL database, process groups."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path

POSTGRES = os.environ.get("RANDOM_DIFFUSION_TEST_POSTGRES", "postgres@127.0.0.1:5432")


@contextmanager
def throwaway_database(prefix: str = "rdd"):
    """Yield the URL of a new, empty database on the local server; drop it afterwards."""
    import psycopg2

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(f"postgresql://{POSTGRES}/postgres")
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://{POSTGRES}/{name}"
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def stop_process_groups(processes: list[subprocess.Popen], grace_seconds: float = 30) -> None:
    """SIGTERM each process's group (they were started with start_new_session), then SIGKILL laggards.
    A group that has ended already (its processes stopped on their own) is skipped. What they started in sessions
    of their own (`ui`'s webserver and daemon) and left running is killed too: orphans would load every later test."""
    started = [(pid, start_time(pid)) for process in processes for pid in descendants(process.pid)]
    for process in processes:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    for pid, start in started:
        if start is not None and start_time(pid) == start:  # still the process seen before, not a new one
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """The processes `pid` started, and theirs, as /proc shows them now (one pass over /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # ended while we looked
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def start_time(pid: int) -> str | None:
    """When the process `pid` started (clock ticks after boot, from /proc), or None once it has ended."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def project_env(root: Path, home: Path) -> dict[str, str]:
    """Environment for a project laid out under `root` (images/, prompts.txt, models.yaml) and an instance at `home`."""
    return {
        "DAGSTER_HOME": str(home),
        "RANDOM_DIFFUSION_IMAGES_DIR": str(root / "images"),
        "RANDOM_DIFFUSION_OUTPUT_DIR": str(root / "outputs"),
        "RANDOM_DIFFUSION_PROMPTS_FILE": str(root / "prompts.txt"),
        "RANDOM_DIFFUSION_MODELS_FILE": str(root / "models.yaml"),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }


def shipped_instance_config(project_root: Path, home: Path) -> dict:
    """The project's dagster.yaml (its storage class, queue, `gpu` pool, monitoring) storing everything under `home`."""
    import yaml

    config = yaml.safe_load((project_root / "dagster.yaml").read_text())
    config["storage"]["custom"]["config"]["base_dir"] = str(home / "storage")
    for key in ("local_artifact_storage", "compute_logs"):
        config.pop(key, None)  # Dagster's defaults: under DAGSTER_HOME
    return config


def wait_for(predicate, timeout: float, what: str, interval: float = 1.0):
    """Poll until `predicate()` is truthy and return its value; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def apply_partition_requests(instance, result) -> None:
    """Apply a sensor result's dynamic-partition requests to `instance`, as the daemon does."""
    import dagster as dg

    for request in result.dynamic_partitions_requests:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
