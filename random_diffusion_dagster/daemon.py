"""`random-diffusion daemon`: Dagster's daemon (`dagster-daemon run`), picking up new backfills within seconds.

Dagster 1.13's backfill daemon looks for requested backfills every 30 s, a constant of its daemon controller that
no instance setting reaches (dagster-io/dagster#11649), so a backfill launched from the UI waited 0-30 s before
its first run existed: 20 s in the CPU benchmark, as long as the engine takes for all 128 of its images. This
sets that constant to RANDOM_DIFFUSION_BACKFILL_INTERVAL_SECONDS (default 1) and then runs Dagster's own daemon
command unchanged; a pass with no backfill to work on is one query for requested ones. The same constant is the
auto-materialize interval of code locations without an automation sensor; this project's automation has one.
"""

from __future__ import annotations

import sys

from .settings import backfill_interval_seconds


def main(argv: list[str] | None = None) -> None:
    """Run `dagster-daemon run` with these arguments (`-w workspace.yaml`, ...) and the shorter backfill loop."""
    seconds = backfill_interval_seconds()  # a bad value fails here, before any daemon starts

    from dagster._daemon import controller
    from dagster._daemon.cli import cli

    from .cli import project_instance

    # A fresh SQLite instance gets its tables from one process at a time: a webserver started beside the daemon
    # may be making them now, and the daemon's code server opening them halfway fails to load for good
    # ("alembic_version has more than one head").
    project_instance().dispose()

    controller.DEFAULT_DAEMON_INTERVAL_SECONDS = seconds  # read by the backfill loop when its thread starts
    cli(["run", *(sys.argv[1:] if argv is None else argv)], prog_name="random-diffusion daemon", obj={})


if __name__ == "__main__":
    main()
