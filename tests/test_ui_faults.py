"""What stops `random-diffusion ui`, `run` and `random-diffusion-webserver` from starting is one line and exit status 2,
with nothing left running: a port out of range or in use, a bad RANDOM_DIFFUSION_ALLOWED_HOSTS, an instance
dagster.yaml that is not YAML, an instance database another process keeps locked. Real processes throughout.
"""

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef

from local_services import project_env, wait_for

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "random_diffusion_dagster.runtime.cli"]
WEBSERVER = [sys.executable, "-m", "random_diffusion_dagster.runtime.webserver"]

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def home(tmp_path) -> Path:
    """A project laid out under tmp_path (no images) and an instance folder, telemetry off."""
    (tmp_path / "images").mkdir()
    (tmp_path / "prompts.txt").write_text("a lighthouse\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home


def _env(home: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, **project_env(home.parent, home), **extra}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _started_for(home: Path) -> dict[int, str]:
    """The live (not zombie) processes whose environment names this DAGSTER_HOME: the command under test and all it
    started, whatever their process group (`ui` starts its children in sessions of their own). pid -> command line."""
    markers = {f"\0DAGSTER_HOME={path}\0".encode() for path in (home, home.resolve())}
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            environ = b"\0" + (proc / "environ").read_bytes()
            if state != "Z" and any(marker in environ for marker in markers):
                found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue  # the process ended while we looked, or is another user's
    return found


def _kill_all(home: Path) -> None:
    for pid in _started_for(home):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _run(command: list[str], home: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run a command on the instance at `home` in its own process group; (exit status, stderr). Fails the test, after
    stopping all it started, if it has not ended within `timeout` seconds."""
    process = subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_all(home)
        _, stderr = process.communicate()
        pytest.fail(f"{' '.join(command[2:])} still running after {timeout:.0f} s; its stderr:\n{stderr[-3000:]}")
    return process.returncode, stderr


def _assert_one_line_error(stderr: str, prefix: str, *fragments: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    errors = [line for line in lines if line.startswith(prefix)]
    assert len(errors) == 1, stderr
    for fragment in fragments:
        assert fragment in errors[0], stderr
    return errors[0]


def _nothing_left(home: Path) -> None:
    try:
        wait_for(lambda: not _started_for(home), 60, "the processes the command started to end", interval=0.5)
    except TimeoutError:
        left = _started_for(home)
        _kill_all(home)
        pytest.fail(f"left running: {list(left.values())}")


def test_ui_on_a_port_in_use_says_so_in_one_line_and_starts_nothing(home):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        code, stderr = _run([*CLI, "ui", "-h", "127.0.0.1", "-p", str(port)], home, _env(home), timeout=90)
    assert code == 2, stderr
    assert time.monotonic() - started < 60
    _assert_one_line_error(stderr, "random-diffusion ui: error: ", f"port {port}", "in use")
    assert len(stderr.strip().splitlines()) == 1, stderr
    _nothing_left(home)
    assert not (home / ".dagster").exists()  # nothing started: not even the instance was opened


@pytest.mark.parametrize("port", [99999, 0, -1])
def test_ui_on_a_port_out_of_range_says_so_in_one_line(home, port):
    code, stderr = _run([*CLI, "ui", "-p", str(port)], home, _env(home), timeout=90)
    assert code == 2, stderr
    _assert_one_line_error(stderr, "random-diffusion ui: error: ", f"port {port}", "1 to 65535")
    assert len(stderr.strip().splitlines()) == 1, stderr
    _nothing_left(home)


def test_ui_stops_the_daemon_when_the_webserver_cannot_start(home):
    """The port is free when `ui` checks it and taken before its webserver binds it: `ui` ends, and so does
    everything it started, instead of waiting on a webserver that never serves."""
    port = _free_port()
    log = home.parent / "ui.log"  # a file, not a pipe: nothing reads it while the children start
    with open(log, "w") as output:
        process = subprocess.Popen(
            [*CLI, "ui", "-h", "127.0.0.1", "-p", str(port)],
            cwd=PROJECT_ROOT,
            env=_env(home),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    with socket.socket() as taken:
        try:
            # The webserver child exists: the check is done, and importing Dagster takes it seconds to bind.
            wait_for(
                lambda: any("runtime.webserver" in command for command in _started_for(home).values()),
                120,
                "the webserver child to start",
                interval=0.05,
            )
            taken.bind(("127.0.0.1", port))
            taken.listen()
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`ui` still running 120 s after its webserver could not bind; its output:\n{log.read_text()}")
        finally:
            if process.poll() is None:
                _kill_all(home)
                process.wait()
    output = log.read_text()
    assert process.returncode == 1, output
    assert "address already in use" in output and "the webserver stopped" in output, output
    _nothing_left(home)


@pytest.mark.parametrize(
    "variable, value",
    [("RANDOM_DIFFUSION_ALLOWED_HOSTS", "dagster.lan,http://box.example:3000"), ("RANDOM_DIFFUSION_CATCH_UP", "yes")],
)
def test_a_bad_setting_stops_ui_before_anything_starts(home, variable, value):
    """A setting the UI's guard reads, or one the definitions read as they load (which would otherwise break the
    code location in the children, in screens of tracebacks)."""
    env = _env(home, **{variable: value})
    code, stderr = _run([*CLI, "ui", "-p", str(_free_port())], home, env, timeout=90)
    assert code == 2, stderr
    _assert_one_line_error(stderr, "random-diffusion ui: error: ", variable, value.split(",")[-1])
    _nothing_left(home)


COMMANDS = {  # each command that opens the instance, as a user starts it; PORT stands for a free port
    "run": ([*CLI, "run"], "random-diffusion run: error: "),
    "ui": ([*CLI, "ui", "-h", "127.0.0.1", "-p", "PORT"], "random-diffusion ui: error: "),
    "webserver": (
        [*WEBSERVER, "-h", "127.0.0.1", "-p", "PORT", "-w", "workspace.yaml"],
        "random-diffusion-webserver: error: ",
    ),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_dagster_yaml_that_is_not_yaml_is_one_line_naming_file_and_line(home, command):
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nstorage: [unclosed\n")
    argv, prefix = COMMANDS[command]
    port = str(_free_port())
    code, stderr = _run([port if arg == "PORT" else arg for arg in argv], home, _env(home), timeout=120)
    assert code == 2, stderr
    line = _assert_one_line_error(stderr, prefix, "not valid YAML", "started on line 3")
    assert line.startswith(f"{prefix}{home / 'dagster.yaml'}, line 4: "), line  # where yaml noticed; 3 opened it
    _nothing_left(home)


def test_a_database_another_process_keeps_locked_is_one_line_after_a_bounded_wait(home):
    dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))).dispose()  # creates the instance's databases
    database = home / "history" / "runs.db"
    assert database.is_file()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "connection = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "connection.execute('BEGIN IMMEDIATE')\n"
            "print('held', flush=True)\n"
            "time.sleep(120)\n",
            str(database),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        started = time.monotonic()
        code, stderr = _run([*CLI, "run"], home, _env(home), timeout=150)
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert code == 2, stderr
    _assert_one_line_error(
        stderr,
        "random-diffusion run: error: ",
        f"another process holds the Dagster instance's database {database} for more than 30 s",
    )
    assert "waiting up to 30 s" in stderr  # said while it waited
    assert 30 <= waited < 120
    # Released, the same database opens at once.
    with sqlite3.connect(database, timeout=1) as connection:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
    _nothing_left(home)
