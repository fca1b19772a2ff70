"""Runs the CLI executes in its own process, and failing those whose process is gone.

Dagster's run monitoring checks the health of runs its run launcher started; `random-diffusion run` and `compare`
execute their runs in their own process, with no launcher to ask. Killed, such a run stays STARTED for good and
holds the `gpu` pool, so every run queued after it waits forever. Each CLI run is tagged with its process; the daemon
(`random-diffusion daemon` and `ui`) and every CLI command fail the ones whose process is gone.
"""

from __future__ import annotations

import os
import socket

import dagster as dg

PROCESS_TAG = "random_diffusion/process"  # "<host>:<pid>:<start time>" of the process executing the run


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not taken for the same process;
    empty where /proc has none."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_tags() -> dict[str, str]:
    """Tags for a run this process executes."""
    return {PROCESS_TAG: f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"}


def _gone(owner: str) -> bool:
    """Whether the process a PROCESS_TAG value names has ended; False for another machine's (it cannot be seen)."""
    host, pid, started = owner.rsplit(":", 2) if owner.count(":") >= 2 else ("", "", "")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # another user's process
    return bool(started) and _start_time(int(pid)) not in ("", started)


def fail_runs_whose_process_is_gone(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed each in-progress CLI run of this machine whose process has ended; their run ids.

    A CLI run is one its process executed itself, so it has no code location. A run the UI re-executes carries its
    parent's tags, a CLI run's PROCESS_TAG among them, but a run launcher executes it (it has the code location it
    was launched from): Dagster's run monitoring watches that one, and failing it here would mark a running run
    failed (and, before it starts, give it an end before its start)."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED])
    )
    failed = []
    for record in records:
        run = record.dagster_run
        owner = run.tags.get(PROCESS_TAG)
        if owner and run.remote_job_origin is None and _gone(owner):
            instance.report_run_failed(
                run,
                f"The process that executed this run ({owner}) is gone: marked failed so the run no longer holds "
                "the gpu pool. Its finished images are kept; run it again to make the rest.",
            )
            failed.append(run.run_id)
    return failed
