"""The project's Dagster instance, and the file locks that keep processes sharing it from racing.

What stops the instance from opening (a dagster.yaml that is not YAML, a database another process keeps locked) is
an InstanceError: one line naming the file and the fix, which the commands print as their error.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from ..settings import PROJECT_ROOT, SettingError, dagster_home

# How long opening the instance waits for another process to release its SQLite database before it gives up.
LOCKED_DATABASE_WAIT_SECONDS = 30


class InstanceError(SettingError):
    """The instance's dagster.yaml or database cannot be used; the message names the file and the fix.

    A SettingError, so `random-diffusion`'s commands print it as one line and exit with status 2."""


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

    Its dagster.yaml is read as YAML first, so a syntax error is an InstanceError naming the file and line rather
    than Dagster's traceback. A SQLite database another process keeps locked (a write lock, which would fail this
    process's first write after SQLite's 5 s, or an exclusive one, which fails every read) is waited for, saying so,
    up to LOCKED_DATABASE_WAIT_SECONDS; then it is an InstanceError naming the database.
    """
    home = instance_home()
    check_instance_yaml(home / "dagster.yaml")
    with exclusive(home / ".dagster" / "instance-init.lock", "Waiting for another process to set up storage..."):
        deadline = time.monotonic() + LOCKED_DATABASE_WAIT_SECONDS
        said = False
        while True:
            try:
                instance = _open_instance(home)
            except Exception as error:
                if not _database_locked(error):
                    raise
                locked = f"under {home}"  # an exclusive lock: even reading failed, and SQLite does not say which
            else:
                locked = next((str(path) for path in _sqlite_databases(instance) if _write_locked(path)), None)
                if locked is None:
                    return instance
                instance.dispose()
            if time.monotonic() >= deadline:
                raise InstanceError(
                    f"another process holds the Dagster instance's database {locked} for more than "
                    f"{LOCKED_DATABASE_WAIT_SECONDS} s: let it finish or stop it, then try again."
                )
            if not said:
                print(
                    f"Another process holds the Dagster instance's database {locked}; waiting up to "
                    f"{LOCKED_DATABASE_WAIT_SECONDS} s for it...",
                    file=sys.stderr,
                    flush=True,
                )
                said = True
            time.sleep(1)


def _open_instance(home: Path) -> dg.DagsterInstance:
    if dagster_home() is not None:
        instance = dg.DagsterInstance.get()
    else:
        os.chdir(home)  # dagster.yaml's storage paths are relative to the project root
        instance = dg.DagsterInstance.from_config(str(home))
    try:
        instance.get_runs(limit=1)  # touch each storage while holding the lock
        instance.get_dynamic_partitions("images")
        list(instance.all_instigator_state())
    except BaseException:
        instance.dispose()
        raise
    return instance


def check_instance_yaml(path: Path) -> None:
    """An InstanceError naming the file, the line and the fix if `path` exists and is not a YAML mapping."""
    import yaml

    try:
        config = yaml.safe_load(path.read_bytes())
    except FileNotFoundError:
        return  # Dagster's defaults
    except OSError as error:
        raise InstanceError(f"cannot read the Dagster instance's settings {path}: {error.strerror}.") from None
    except yaml.YAMLError as error:
        mark, context_mark = getattr(error, "problem_mark", None), getattr(error, "context_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = str(getattr(error, "problem", None) or error)
        context = getattr(error, "context", None)
        if context and context_mark is not None and mark is not None and context_mark.line != mark.line:
            problem += f", {context} that started on line {context_mark.line + 1}"  # an unclosed [ or {
        raise InstanceError(
            f"{path}{where}: not valid YAML ({' '.join(problem.split())}). Correct it there: it holds the Dagster "
            "instance's settings (https://docs.dagster.io/deployment/oss/dagster-yaml)."
        ) from None
    if config is not None and not isinstance(config, dict):
        raise InstanceError(
            f"{path} holds a YAML {type(config).__name__}, not the mapping of settings (storage:, run_coordinator:, "
            "...) Dagster reads from an instance's dagster.yaml: correct it "
            "(https://docs.dagster.io/deployment/oss/dagster-yaml)."
        )


def _sqlite_folders(instance: dg.DagsterInstance) -> list[Path]:
    """The base_dir of each of the instance's storages that is Dagster's SQLite storage (or this project's)."""
    import yaml

    ref = instance.get_ref()
    folders = []
    for data in (ref.storage_data, ref.run_storage_data, ref.event_storage_data, ref.schedule_storage_data):
        if data is None or "Sqlite" not in data.class_name:
            continue
        config = yaml.safe_load(data.config_yaml) or {}
        base_dir = config.get("base_dir") if isinstance(config, dict) else None
        if isinstance(base_dir, str) and Path(base_dir).resolve() not in folders:
            folders.append(Path(base_dir).resolve())
    return folders


def _sqlite_databases(instance: dg.DagsterInstance) -> list[Path]:
    """The SQLite files every process using the instance writes: runs, the event index, schedules (the layout of
    Dagster's SQLite storage, under a storage's base_dir or a run, event or schedule storage's own)."""
    names = (
        "history/runs.db",
        "history/runs/index.db",
        "schedules/schedules.db",
        "runs.db",
        "index.db",
        "schedules.db",
    )
    found = [folder / name for folder in _sqlite_folders(instance) for name in names if (folder / name).is_file()]
    return list(dict.fromkeys(found))


def _write_locked(path: Path) -> bool:
    """Whether another connection holds a write (or exclusive) lock on this SQLite database now. Anything else that
    stops a write here (a read-only file) is left for Dagster to report when it writes."""
    try:
        connection = sqlite3.connect(path, timeout=1, isolation_level=None)
    except sqlite3.Error:
        return False
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
    except sqlite3.OperationalError as error:
        return _database_locked(error)
    finally:
        connection.close()
    return False


def _database_locked(error: BaseException) -> bool:
    """SQLite's "database is locked" (busy), raw or as SQLAlchemy's OperationalError."""
    import sqlalchemy.exc

    return isinstance(error, sqlite3.OperationalError | sqlalchemy.exc.OperationalError) and (
        "database is locked" in str(error)
    )
