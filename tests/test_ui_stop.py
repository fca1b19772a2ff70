"""`random-diffusion ui` stops within seconds on Ctrl-C or SIGTERM while a run is in flight: the run is recorded
CANCELED with its finished images kept, nothing the UI started is left running, and the terminal shows no error.

Two starts of a real UI on one project, in one test: Ctrl-C at a terminal (SIGINT to the foreground process group)
stops the first while the sensor's run diffuses; the second start finds that run CANCELED, runs the sensor on new
images, and `kill` (SIGTERM) stops it mid-run too. Then the daemon's lines for a canceled run, as the terminal shows
them.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.instance.ref import InstanceRef

from random_diffusion_dagster.engine.results import output_file_name
from random_diffusion_dagster.runtime.daemon import DaemonOutput
from random_diffusion_dagster.runtime.remote import Deployment

from helpers import make_image, write_catalog
from local_services import descendants, project_env, shipped_instance_config, stop_process_groups, wait_for

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# About 3 s per batch of 4 images here: a run of 12 is caught between its first result and its last.
SLOW_DEFAULTS = {"resolution": 128, "num_inference_steps": 200, "strength": 0.5}
IMAGES_PER_RUN = 12
STOP_LIMIT_SECONDS = 10
PROBLEM_LINE = re.compile(r"\bERROR\b|Traceback")
RUNS_QUERY = "query { runsOrError { ... on Runs { results { runId status creationTime startTime endTime } } } }"

pytestmark = pytest.mark.timeout(600)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _add_images(images: Path, prefix: str) -> list[str]:
    names = [f"{prefix}{index:02d}.png" for index in range(IMAGES_PER_RUN)]
    for index, name in enumerate(names):
        make_image(images / name, size=(96, 64), color=(20 * index, 120, 200 - 10 * index))
        past = time.time() - 120
        os.utime(images / name, (past, past))  # settled: the sensor takes it on its first look
    return names


def _command_line(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")).decode()
    except OSError:
        return ""


def _pids_with_home(home: Path) -> list[int]:
    """Live processes whose environment names this DAGSTER_HOME: everything the UI started, its runs included."""
    marker = f"\0DAGSTER_HOME={home}\0".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z" and marker in b"\0" + (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except (OSError, IndexError):
            continue  # ended while we looked, or another user's
    return found


def _running_with_home(home: Path) -> list[str]:
    return [_command_line(pid) for pid in _pids_with_home(home)]


def _slow_project(root: Path, models_dir: Path) -> tuple[Path, Path, Path]:
    """A project in `root` whose runs are slow enough to be caught part way: (root, its DAGSTER_HOME, outputs)."""
    home = (root / "home").resolve()
    (root / "prompts.txt").write_text("a lighthouse\n")
    write_catalog(root / "models.yaml", models_dir, names=("tiny-sd15",), **SLOW_DEFAULTS)
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(shipped_instance_config(PROJECT_ROOT, home)))
    return root, home, root / "outputs"


def _start_ui(root: Path, home: Path, log: Path, ignoring: tuple = ()) -> tuple[subprocess.Popen, str]:
    """`ui` started as from a terminal, with the signals `ignoring` ignored as it inherits them: SIGINT for a script's
    background job (`random-diffusion ui &`), SIGTERM from a process that ran Dagster in process while ignoring
    SIGINT (Dagster sets SIGTERM to SIGINT's handler), as test workers in this suite came to."""
    port = _free_port()
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "random_diffusion_dagster.runtime.cli", "ui", "-p", str(port)],
            cwd=PROJECT_ROOT,
            env={**os.environ, **project_env(root, home)},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a shell gives a command: Ctrl-C reaches that group
            preexec_fn=lambda: [signal.signal(signum, signal.SIG_IGN) for signum in ignoring],
        )
    wait_for(lambda: "the UI is at" in log.read_text() or process.poll() is not None, 180, "the UI")
    assert process.poll() is None, log.read_text()
    return process, f"http://127.0.0.1:{port}"


def _stop_mid_run(process: subprocess.Popen, outputs: Path, names: list[str], stop) -> float:
    """Once the sensor's run over `names` has written a first result and is still diffusing, `stop` the UI; how
    long it took to end."""
    results = [outputs / output_file_name(name) for name in names]
    wait_for(lambda: any(path.is_file() for path in results), 240, "the sensor's run to write a result", interval=0.2)
    started = [_command_line(pid) for pid in descendants(process.pid)]
    assert not all(path.is_file() for path in results), "the run ended before the UI was stopped: slow it down"
    assert any("multiprocessing" in command for command in started), started  # the run's own process
    sent = time.monotonic()
    stop()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        stop_process_groups([process])
        pytest.fail("`random-diffusion ui` was still running 60 s after it was told to stop")
    return time.monotonic() - sent


def _assert_stopped_cleanly(seconds: float, log: Path, home: Path, process: subprocess.Popen) -> None:
    console = log.read_text()
    assert process.returncode == 0, console[-3000:]
    assert seconds < STOP_LIMIT_SECONDS, f"stopping took {seconds:.1f} s:\n{console[-3000:]}"
    assert [line for line in console.splitlines() if PROBLEM_LINE.search(line)] == [], console[-5000:]
    assert "random-diffusion ui: canceling run " in console
    assert _running_with_home(home) == []


def _sensor_run(home: Path, names: list[str]) -> dg.DagsterRun:
    """The new_images_sensor's run over `names`."""
    sensor_runs = dg.RunsFilter(tags={"dagster/sensor_name": "new_images_sensor"})
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        (run,) = [
            record.dagster_run
            for record in instance.get_run_records(filters=sensor_runs)
            if record.dagster_run.tags.get("dagster/asset_partition_range_start") == names[0]
        ]
    return run


def _freeze_code_servers_then_sigterm(process: subprocess.Popen) -> None:
    """SIGTERM to `ui` while its code servers answer nothing (stopped, as one busy or shutting down may be): the run's
    cancellation, a call to its code server, would wait for Dagster's 60 s gRPC timeout."""
    for pid in descendants(process.pid):
        if "grpc" in _command_line(pid).split():
            os.kill(pid, signal.SIGSTOP)
    process.send_signal(signal.SIGTERM)


def test_ui_stops_within_seconds_on_ctrl_c_and_sigterm_with_a_run_in_flight(tmp_path, models_dir):
    root, home, outputs = _slow_project(tmp_path, models_dir)

    first = _add_images(root / "images", "a")
    # Started as a script's background job (SIGINT ignored): `kill -INT` still stops it, and its children with it.
    process, _ = _start_ui(root, home, root / "ui-1.log", ignoring=(signal.SIGINT,))
    seconds = _stop_mid_run(process, outputs, first, lambda: os.killpg(process.pid, signal.SIGINT))
    _assert_stopped_cleanly(seconds, root / "ui-1.log", home, process)
    canceled = _sensor_run(home, first)
    assert canceled.status == dg.DagsterRunStatus.CANCELED
    kept = [name for name in first if (outputs / output_file_name(name)).is_file()]
    assert 0 < len(kept) < len(first)  # the finished images stay; running again reuses them

    # The next start leaves the canceled run as it is (no retry: it was stopped on purpose) and its times read
    # as the UI shows them: created, then started, then ended.
    second = _add_images(root / "images", "b")
    process, url = _start_ui(root, home, root / "ui-2.log", ignoring=(signal.SIGTERM,))  # `kill` still stops it
    try:
        runs = {run["runId"]: run for run in Deployment(url).query(RUNS_QUERY, {})["runsOrError"]["results"]}
        shown = runs[canceled.run_id]
        assert shown["status"] == "CANCELED"
        assert shown["creationTime"] <= shown["startTime"] <= shown["endTime"], shown
        seconds = _stop_mid_run(process, outputs, second, lambda: _freeze_code_servers_then_sigterm(process))
    finally:
        stop_process_groups([process])
    _assert_stopped_cleanly(seconds, root / "ui-2.log", home, process)
    assert _sensor_run(home, second).status == dg.DagsterRunStatus.CANCELED
    assert _sensor_run(home, first).status == dg.DagsterRunStatus.CANCELED


def test_a_canceled_run_reads_as_one_info_line_and_other_failures_keep_theirs():
    """Dagster's own lines for a run `ui` canceled (as the daemon printed them above): its interrupted step is dropped,
    the run's cancellation is one INFO line; another run's step failure still shows, with its trace."""
    output = DaemonOutput()
    output.canceled_runs.add("0f848682-8172-4d26-b6fd-0591a316c455")
    prefix = "2026-12-06 14:26:51 +0000 - dagster - ERROR - diffuse_images - "
    canceled = [
        f'{prefix}0f848682-8172-4d26-b6fd-0591a316c455 - 16412 - diffused_image - STEP_FAILURE - Execution of step "'
        'diffused_image" failed.\n',
        "\n",
        "dagster._core.errors.DagsterExecutionInterruptedError\n",
        "\n",
        "Stack Trace:\n",
        '  File "/venv/dagster/_core/execution/plan/execute_plan.py", line 243, in dagster_event_sequence_for_step\n',
        f'{prefix}0f848682-8172-4d26-b6fd-0591a316c455 - 16412 - RUN_CANCELED - Execution of run for "diffuse_images" '
        "canceled.\n",
        "\n",
        "dagster._core.errors.DagsterExecutionInterruptedError\n",
        "Stack Trace:\n",
        '  File "/venv/dagster/_core/execution/api.py", line 742, in job_execution_iterator\n',
    ]
    assert [line for line in map(output.shown, canceled) if line] == [canceled[6].replace(" - ERROR - ", " - INFO - ")]
    other = [
        f'{prefix}5b1e0c2a-0000-4000-8000-000000000000 - 16500 - diffused_image - STEP_FAILURE - Execution of step "'
        'diffused_image" failed.\n',
        "\n",
        "RuntimeError: the GPU fell off the bus\n",
        "Stack Trace:\n",
        '  File "/project/engine/runner.py", line 492, in generate\n',
    ]
    assert [output.shown(line) for line in other] == other
