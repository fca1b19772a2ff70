"""The project's Dagster instance, and the file locks that keep processes sharing it from racing."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from ..settings import PROJECT_ROOT, dagster_home


def instance_home() -> Path:
    """DAGSTER_HOME if set, else the project folder holding dagster.yaml (its storage is under ./.dagster)."""
    home = dagster_home()
    if home is not None:
        return home
    return Path.cwd() if (Path.cwd() / "dagster.yaml").is_file() else PROJECT_ROOT


@contextlib.contextmanager
def exclusive(lock_path: Path, waiting: str) -> Iterator[None]:
    """Hold an advisory file lock; say what we wait for when another process holds it."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(waiting, file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def diffusing_alone(waiting: str) -> contextlib.AbstractContextManager[None]:
    """The lock `random-diffusion run` and `compare` hold while they diffuse: one at a time on this instance."""
    return exclusive(instance_home() / ".dagster" / "cli-run.lock", waiting)


def project_instance() -> dg.DagsterInstance:
    """The instance `dagster dev` uses: DAGSTER_HOME if set, else ./dagster.yaml with storage under ./.dagster.

    Creating a fresh SQLite instance creates its tables; processes starting together take
    turns, so two cannot both create them (one would fail with "table ... already exists").
    """
    home = instance_home()
    with exclusive(home / ".dagster" / "instance-init.lock", "Waiting for another process to set up storage..."):
        if dagster_home() is not None:
            instance = dg.DagsterInstance.get()
        else:
            os.chdir(home)  # dagster.yaml's storage paths are relative to the project root
            instance = dg.DagsterInstance.from_config(str(home))
        instance.get_runs(limit=1)  # touch each storage while holding the lock
        instance.get_dynamic_partitions("images")
        list(instance.all_instigator_state())
    return instance
