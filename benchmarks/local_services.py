"""Real local services for benchmarks and tests: a throwaway PostgreSQL database, process groups."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from contextlib import contextmanager
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
    """SIGTERM each process's group (they were started with start_new_session), then SIGKILL laggards."""
    for process in processes:
        os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


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
