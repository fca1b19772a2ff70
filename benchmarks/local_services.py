"""Real local services for benchmarks and tests: a throwaway PostgreSQL database, process groups."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from contextlib import contextmanager

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
