"""Failing runs whose process is gone, so they stop holding the `gpu` pool.

Dagster's run monitoring asks the run launcher whether a run's worker is alive; the default run launcher (a process
per run, started by a code server) cannot say, and `random-diffusion run` and `compare` execute their runs in their
own process, with no launcher to ask. Killed (`kill -9`, an out-of-memory kill, a machine that went down with
`random-diffusion ui`), such a run stays STARTED for good and every run queued after it waits forever. The daemon
(`random-diffusion daemon` and `ui`) and every CLI command fail the ones whose process is gone: a CLI run is tagged
with its process; a launched run's worker names its pid in Dagster's "Started process for run" event.
"""

from __future__ import annotations

import os
import socket

import dagster as dg

IN_PROGRESS = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED)
PROCESS_TAG = "random_diffusion/process"  # "<host>:<pid>:<start time>" of the process executing the run


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state first); empty where /proc has none."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not taken for the same process;
    empty where /proc has none."""
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else ""


def _alive(pid: int) -> bool:
    """Whether a process holds the pid (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def process_tags() -> dict[str, str]:
    """Tags for a run this process executes."""
    return {PROCESS_TAG: f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"}


def _gone(owner: str) -> bool:
    """Whether the process a PROCESS_TAG value names has ended; False for another machine's (it cannot be seen)."""
    host, pid, started = owner.rsplit(":", 2) if owner.count(":") >= 2 else ("", "", "")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if not _alive(int(pid)):
        return True
    return bool(started) and _start_time(int(pid)) not in ("", started)


def fail_runs_whose_process_is_gone(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed each in-progress run of this machine whose process has ended; their run ids.

    A CLI run is one its process executed itself, so it has no code location. A run the UI re-executes carries its
    parent's tags, a CLI run's PROCESS_TAG among them, but a run launcher executes it (it has the code location it
    was launched from): that one is judged by its own worker process, and only once it has started one."""
    records = instance.get_run_records(filters=dg.RunsFilter(statuses=list(IN_PROGRESS)))
    failed = []
    for record in records:
        run = record.dagster_run
        if run.remote_job_origin is None:
            owner = run.tags.get(PROCESS_TAG)
            gone = bool(owner) and _gone(owner)
        else:
            owner, gone = _run_worker_gone(instance, run)
        if gone and instance.get_run_by_id(run.run_id).status in IN_PROGRESS:  # not ended as its process did
            instance.report_run_failed(
                run,
                f"The process that executed this run ({owner}) is gone: marked failed so the run no longer holds "
                "the gpu pool. Its finished images are kept; run it again to make the rest.",
            )
            failed.append(run.run_id)
    return failed


RUN_WORKER_STARTED = "Started process for run (pid: "  # dagster/_grpc/impl.py and dagster/_cli/api.py log it


def _run_worker_gone(instance: dg.DagsterInstance, run: dg.DagsterRun) -> tuple[str, bool]:
    """(the run worker, whether it has ended) for a run the default run launcher started, where that process can
    only be on this machine: the instance is the default SQLite one, which one machine uses (a PostgreSQL one may be
    shared by machines whose processes cannot be seen from here). Not ended where it cannot be told."""
    from dagster._core.launcher import DefaultRunLauncher
    from dagster._core.storage.runs import SqliteRunStorage

    if not isinstance(instance.run_launcher, DefaultRunLauncher) or not isinstance(
        instance.run_storage, SqliteRunStorage
    ):
        return "", False
    events = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
    started = [event for event in events if (event.dagster_event.message or "").startswith(RUN_WORKER_STARTED)]
    if not started:
        return "", False  # no worker yet: Dagster's run monitoring times out a start that never comes
    entry = started[-1]
    pid = int(entry.dagster_event.engine_event_data.metadata["pid"].value)
    worker = f"run worker, pid {pid}"
    fields = _stat(pid)
    if not _alive(pid) or fields[:1] == ["Z"]:  # ended (a zombie has too)
        return worker, True
    if len(fields) <= 19:
        return worker, False  # no /proc to tell a reused pid by
    # A process that started well after the worker said it started holds a reused pid (pids wrap after millions of
    # processes; the margin covers a clock stepped since boot, which moves /proc's start times against the event's).
    started = _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return worker, started > entry.timestamp + REUSED_PID_MARGIN_SECONDS


REUSED_PID_MARGIN_SECONDS = 600


def _boot_time() -> float:
    """When this machine booted, in seconds since the epoch (what /proc's process start times count from)."""
    with open("/proc/stat") as handle:
        return next(float(line.split()[1]) for line in handle if line.startswith("btime "))
