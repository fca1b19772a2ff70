"""`random-diffusion daemon`: Dagster's daemon (`dagster-daemon run`), picking up new backfills within seconds.

Dagster 1.13's backfill daemon looks for requested backfills every 30 s, a constant of its daemon controller that no
instance setting reaches (dagster-io/dagster#11649), so a backfill launched from the UI waits up to 30 s before its
first run exists, while the GPU idles. This sets that constant to RANDOM_DIFFUSION_BACKFILL_INTERVAL_SECONDS (default 1)
and then runs Dagster's own daemon command unchanged; a pass with no backfill to work on is one query for requested
ones. The same constant is the auto-materialize interval of code locations without an automation sensor; this project's
automation has one.

Each pass over a backfill in progress logs a summary of it, and the runs the daemon launches print every Dagster
event of theirs (a line per image) to its terminal: `random-diffusion daemon` and `ui` run the daemon in a child and
pass on what a person watching needs (DaemonOutput), as the UI's pages show the rest.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time

from ..settings import backfill_interval_seconds
from .dead_runs import fail_runs_whose_process_is_gone
from .instance import check_instance_yaml, instance_home, project_instance


def main(argv: list[str] | None = None) -> None:
    """Run `dagster-daemon run` with these arguments (`-w workspace.yaml`, ...) and the shorter backfill loop."""
    seconds = backfill_interval_seconds()  # a bad value fails here, before any daemon starts

    from dagster._daemon import controller
    from dagster._daemon.cli import cli

    # A fresh SQLite instance gets its tables from one process at a time: a webserver started beside the daemon
    # may be making them now, and the daemon's code server opening them halfway fails to load for good
    # ("alembic_version has more than one head").
    instance = project_instance()
    threading.Thread(target=_fail_dead_runs, args=(instance,), daemon=True, name="dead-runs").start()

    controller.DEFAULT_DAEMON_INTERVAL_SECONDS = seconds  # read by the backfill loop when its thread starts
    cli(["run", *(sys.argv[1:] if argv is None else argv)], prog_name="random-diffusion daemon", obj={})


def _fail_dead_runs(instance) -> None:
    """Beside Dagster's run monitoring, as often: fail runs whose process is gone (dead_runs), so they free the gpu
    pool."""
    import sqlalchemy.exc

    while True:
        try:
            for run_id in fail_runs_whose_process_is_gone(instance):
                print(f"Run {run_id}: its process is gone; marked failed, the gpu pool is free.", flush=True)
        except sqlalchemy.exc.OperationalError as error:  # a busy database: the next pass tries again
            print(f"Looking for runs of ended processes failed ({error.orig}); trying again.", flush=True)
        time.sleep(instance.run_monitoring_poll_interval_seconds)


def run_with_quiet_console(workspace: str) -> int:
    """`random-diffusion daemon`: the daemon in a child process whose output reaches the terminal as `random-diffusion
    ui` shows it (DaemonOutput). SIGTERM or Ctrl-C stops it as Ctrl-C stops Dagster's daemon; returns its exit code."""
    backfill_interval_seconds()  # a bad value fails here, with the command's own message
    check_instance_yaml(instance_home() / "dagster.yaml")  # and a broken dagster.yaml, before the child's traceback
    for signum in (signal.SIGINT, signal.SIGTERM):  # also where started with SIGINT ignored; the child then takes it
        signal.signal(signum, interrupt)
    child = start_child(workspace)
    output = DaemonOutput()
    while True:
        try:
            output.forward(child.stdout, sys.stderr)  # until the child's output ends
            break
        except KeyboardInterrupt:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)  # its daemons stop cleanly; their last lines still come through
    try:
        return child.wait(timeout=30)
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait()


def start_child(workspace: str, env: dict[str, str] | None = None, own_session: bool = False) -> subprocess.Popen:
    """Dagster's daemon (`main`) in a child process, its output on one pipe for DaemonOutput; with `own_session`, in a
    session and process group of its own (with its code servers and runs), which a terminal's Ctrl-C does not reach."""
    return subprocess.Popen(
        [sys.executable, "-m", "random_diffusion_dagster.runtime.daemon", "-w", workspace],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=own_session,
    )


def interrupt(signum, frame):
    """A SIGTERM handler: stop as on Ctrl-C."""
    raise KeyboardInterrupt


# What the daemon prints on every pass of its loops (each sensor and automation tick, each second the
# run queue is checked, each monitoring pass), a warning every fresh instance gets once per start, and
# the warning its code server prints each minute when the daemon replaces it (the daemon reloads the
# workspace every 60 s by starting a new code server; the old one stops after 20 s without heartbeats), and
# the runs' own DEBUG events, which the runs the daemon launches print to its terminal (step start, inputs,
# outputs, a materialization per image: the UI's run page shows them).
# `random-diffusion daemon` and `ui` drop these lines and pass everything else on: warnings, errors, tracebacks (less
# the stack trace of a failure a step raises on purpose), what the project's sensors log, and the runs' INFO lines (a
# model load, a line per batch).
ROUTINE_DAEMON_LINE = re.compile(
    r" - dagster - DEBUG - "
    r"| - dagster\.code_server - WARNING - No heartbeat received in 20 seconds, shutting down"
    r"| - dagster\.daemon\.(?:"
    r"SensorDaemon - INFO - (?:Checking for new runs for sensor: |Sensor \S+ skipped: |No run requests returned for )"
    r"|SchedulerDaemon - INFO - (?:Schedule \S+ skipped: |No run requests returned for )"
    r"|AssetDaemon - INFO - (?:Checking \d+ assets/checks and |Prefetching asset records |Done prefetching asset "
    r"records|Adding \d+ asset evaluations |Tick produced \d+ runs? |Submitting \d+ runs? |Finished "
    r"auto-materialization tick|Renaming any states corresponding to the legacy default name|\S+ evaluation result: )"
    r"|QueuedRunCoordinatorDaemon - INFO - (?:Priority sorting and checking tag concurrency limits"
    r"|Launched \d+ runs?\.)"
    r"|MonitoringDaemon - INFO - (?:Collected \d+ runs for monitoring|Checking run )"
    r"|BackfillDaemon - INFO - (?:Evaluating asset backfill |Assets targeted by backfill \S+ are valid|Backfill has "
    r"in progress runs|Asset backfill \S+ completed iteration with status |Candidate subset is empty|No asset "
    r"partitions to request|No relevant assets materialized since last tick)"
    r"|EventLogConsumerDaemon - WARNING - No cursor for event type \S+, ignoring older events"
    r")"
    # Said when the daemon stops while a thread waits on a code server that Ctrl-C stopped first: nothing is lost.
    r"| - dagster\.daemon - ERROR - Thread for \S+ did not shut down gracefully"
)
# The backfill daemon's markdown summaries and subsets, a header line and the lines under it, each iteration (about 60
# lines for a 5-image backfill): the UI's backfill page shows the same. Dropped with the lines that follow them.
SUMMARY_HEADER = re.compile(
    r" - dagster\.daemon\.BackfillDaemon - INFO - "
    r"(?:Backfill iteration summary|Overall backfill status|Assets materialized since last tick|Root assets that have "
    r"not yet been requested|Considering the following candidate subset|Asset partitions to request):\s*$"
)
# The failure a step raises on purpose (dg.Failure) names the images and why in its message; its stack trace, which
# Dagster prints after it, says nothing more (the UI keeps it). Other errors keep theirs.
INTENDED_FAILURE = re.compile(r"^dagster\._core\.definitions\.events\.Failure: ")
STACK_TRACE = re.compile(r"^Stack Trace:\s*$")
# A run canceled on request (the UI's Terminate button, `ui` stopping): Dagster logs it as an ERROR with the stack trace
# of the interrupt that stopped it, shown as its one line, at INFO. The step it interrupted fails the same way: where
# the canceling process says so (DaemonOutput.canceled_runs), that failure is dropped, as the run's line says it all.
CANCELED_RUN_ERROR = re.compile(r" - dagster - ERROR - .* - RUN_CANCELED - ")
STEP_FAILURE_ERROR = re.compile(r" - dagster - ERROR - \S+ - (\S+) - .* - STEP_FAILURE - ")
# Sensor log lines carry the code location's internal repository name: `__repository__ - new_images_sensor - ...`.
REPOSITORY_PREFIX = re.compile(r" - __repository__(?= - )")
LOG_LINE_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} - ")
# Repeated every second while a run waits for the `gpu` pool: shown once per run.
BLOCKED_RUN_LINE = re.compile(
    r" - dagster\.daemon\.QueuedRunCoordinatorDaemon - INFO - Run (\S+) is blocked by global concurrency limits"
)
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


class DaemonOutput:
    """Decides which of the daemon's output lines reach the terminal, and how (see ROUTINE_DAEMON_LINE)."""

    def __init__(self):
        self.blocked_runs: set[str] = set()
        self.canceled_runs: set[str] = set()  # ids of runs this process canceled: their interrupted steps go unshown
        self.in_summary = False
        self.after_intended_failure = False
        self.in_stack_trace = False
        self.rest_of_entry_dropped = False

    def shown(self, line: str, colour: bool = True) -> str | None:
        """The line as the terminal shows it (its colour codes only with `colour`), or None to drop it."""
        plain = ANSI_ESCAPE.sub("", line)
        starts_entry = bool(LOG_LINE_START.match(plain))
        if starts_entry:
            self.after_intended_failure = self.in_stack_trace = False
            self.rest_of_entry_dropped = bool(CANCELED_RUN_ERROR.search(plain))
            if self.rest_of_entry_dropped:
                line = plain = plain.replace(" - ERROR - ", " - INFO - ", 1)
            step_failure = STEP_FAILURE_ERROR.search(plain)
            if step_failure and step_failure.group(1) in self.canceled_runs:
                self.rest_of_entry_dropped = True
                return None
        elif self.rest_of_entry_dropped or self.in_summary:
            return None  # a line of an entry shown as its first line, or of a dropped summary
        self.in_summary = bool(SUMMARY_HEADER.search(plain))
        if self.in_summary or ROUTINE_DAEMON_LINE.search(plain) or self._in_intended_stack_trace(plain):
            return None
        blocked = BLOCKED_RUN_LINE.search(plain)
        if blocked:
            if blocked.group(1) in self.blocked_runs:
                return None
            self.blocked_runs.add(blocked.group(1))
        return REPOSITORY_PREFIX.sub("", line if colour else plain)

    def _in_intended_stack_trace(self, plain: str) -> bool:
        if INTENDED_FAILURE.match(plain):
            self.after_intended_failure = True
        elif self.after_intended_failure and STACK_TRACE.match(plain):
            self.in_stack_trace = True
        return self.in_stack_trace

    def forward(self, stream, out) -> None:
        """Copy `stream` (bytes, line by line) to `out` (text), dropping routine lines, until EOF; colour codes only
        where `out` is a terminal."""
        colour = out.isatty()
        for raw in iter(stream.readline, b""):
            line = self.shown(raw.decode(errors="replace"), colour)
            if line is not None:
                out.write(line)
                out.flush()


if __name__ == "__main__":
    main()
