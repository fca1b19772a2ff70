"""`random-diffusion ui` killed with everything it started (`kill -9`, as when the machine goes down) mid-run: the run
stays STARTED and holds the `gpu` pool until the next start fails it, and the runs after it go ahead.

Its own file, so the test runner puts it beside test_ui_stop.py's two starts rather than after them.
"""

import os
import signal
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef
from test_ui_stop import (
    _add_images,
    _pids_with_home,
    _running_with_home,
    _sensor_run,
    _slow_project,
    _start_ui,
    _stop_mid_run,
)

from random_diffusion_dagster.engine.results import output_file_name

from local_services import stop_process_groups, wait_for

pytestmark = pytest.mark.timeout(600)


def _run_status(home: Path, run_id: str) -> dg.DagsterRunStatus:
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        return instance.get_run_by_id(run_id).status


def test_a_run_whose_processes_were_killed_is_failed_at_the_next_start_and_frees_the_gpu_pool(tmp_path, models_dir):
    """`kill -9` of everything `ui` started (as when the machine goes down) mid-run leaves its run STARTED, holding the
    `gpu` pool; the next `ui` start fails it (its run worker's pid is gone), so the runs after it are not held."""
    root, home, outputs = _slow_project(tmp_path, models_dir)

    first = _add_images(root / "images", "a")
    process, _ = _start_ui(root, home, root / "ui-1.log")

    def kill_everything() -> None:
        for pid in _pids_with_home(home):
            os.kill(pid, signal.SIGKILL)

    _stop_mid_run(process, outputs, first, kill_everything)
    killed = _sensor_run(home, first)
    assert killed.status == dg.DagsterRunStatus.STARTED and _running_with_home(home) == []

    second = _add_images(root / "images", "b")
    process, _ = _start_ui(root, home, root / "ui-2.log")
    try:
        wait_for(lambda: _run_status(home, killed.run_id) == dg.DagsterRunStatus.FAILURE, 60, "the killed run to fail")
        results = [outputs / output_file_name(name) for name in second]
        wait_for(lambda: any(path.is_file() for path in results), 240, "a run after it to make an image")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        finally:
            stop_process_groups([process])
    console = (root / "ui-2.log").read_text()
    assert f"Run {killed.run_id}: its process is gone; marked failed, the gpu pool is free." in console, console
