"""Processes that start together: storage is set up once, and CLI runs take turns."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from local_services import descendants, stop_process_groups, wait_for

PROJECT_ROOT = Path(__file__).resolve().parent.parent

OPEN_INSTANCE = (
    "from random_diffusion_dagster.runtime.instance import project_instance\n"
    "with project_instance() as instance:\n"
    "    print(len(instance.get_runs()))\n"
)

# A holder keeps its lock until the test writes a line to it: a fixed hold raced the other process's start
# on a slow machine (its imports took longer than the hold, so it never had to wait).
HOLD_RUN_LOCK = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from random_diffusion_dagster.runtime.instance import exclusive\n"
    "with exclusive(Path('.dagster/cli-run.lock'), 'waiting for the other run'):\n"
    "    print('got', time.time(), flush=True)\n"
    "    if sys.argv[1:] == ['hold']:\n"
    "        sys.stdin.readline()\n"
)


HOLD_INIT_LOCK = (
    "import sys\n"
    "from pathlib import Path\n"
    "from random_diffusion_dagster.runtime.instance import exclusive\n"
    "with exclusive(Path(sys.argv[1]) / '.dagster' / 'instance-init.lock', 'waiting'):\n"
    "    print('got', flush=True)\n"
    "    sys.stdin.readline()\n"
)


def _spawn(code: str, cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_three_processes_opening_a_fresh_instance_together_all_succeed(tmp_path):
    shutil.copy(PROJECT_ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    processes = [_spawn(OPEN_INSTANCE, tmp_path) for _ in range(3)]
    outcomes = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], [err[-1500:] for _, err in outcomes]
    assert (tmp_path / ".dagster" / "storage").is_dir()


def test_the_daemon_waits_while_another_process_sets_up_a_fresh_instance(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    holder = _spawn(HOLD_INIT_LOCK, tmp_path, str(home))
    assert holder.stdout.readline().startswith("got")  # e.g. a webserver creating the tables
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "random-diffusion"), "daemon", "-w", str(PROJECT_ROOT / "workspace.yaml")],
        cwd=home,  # dagster.yaml keeps history in ./.dagster/storage
        env={**os.environ, "DAGSTER_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert daemon.stderr.readline() == "Waiting for another process to set up storage...\n"
        storage = home / ".dagster" / "storage"
        assert not storage.exists()  # nothing opened while the other process holds the lock
        holder.communicate(input="release\n", timeout=60)
        wait_for(lambda: (storage / "schedules").is_dir() or daemon.poll() is not None, 120, "the daemon's storage")
        assert daemon.poll() is None
    finally:
        holder.kill()
        stop_process_groups([daemon])


def test_a_second_cli_run_waits_for_the_first_and_says_so(tmp_path):
    shutil.copy(PROJECT_ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    first = _spawn(HOLD_RUN_LOCK, tmp_path, "hold")
    try:
        assert first.stdout.readline().startswith("got")  # the first holds the lock
        second = _spawn(HOLD_RUN_LOCK, tmp_path)
        said = iter(second.stderr.readline, "")  # its lines until it exits
        assert "waiting for the other run\n" in said  # said while it waits (a second that never waited exits)
        released_at = time.time()
        first.communicate(input="release\n", timeout=60)
        out, _ = second.communicate(timeout=60)
        assert float(out.split()[1]) >= released_at  # it got the lock only once the first let go
    finally:
        first.kill()


def test_registering_images_stores_the_gpu_pool_limit_before_any_run_is_queued(tmp_path):
    """Dagster's queue daemon otherwise starts every queued run of a not-yet-stored pool in its first pass."""
    import dagster as dg
    import yaml

    from random_diffusion_dagster.defs.assets import source_images
    from random_diffusion_dagster.defs.pools import GPU_POOL
    from random_diffusion_dagster.defs.resources import DatasetResource

    from helpers import make_image

    make_image(tmp_path / "images" / "a.png")
    concurrency = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())["concurrency"]
    with dg.instance_for_test(overrides={"concurrency": concurrency}) as instance:
        assert GPU_POOL not in instance.event_log_storage.get_concurrency_keys()
        dg.materialize(
            [source_images],
            instance=instance,
            resources={"dataset": DatasetResource(images_dir=str(tmp_path / "images"))},
        )
        assert instance.event_log_storage.get_concurrency_info(GPU_POOL).slot_count == 1


def _alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def test_sigterm_stops_the_daemon_command_and_its_daemon_cleanly(tmp_path):
    """`random-diffusion daemon` runs Dagster's daemon in a child whose output it filters: `kill` (a service
    manager's stop) must stop that child too, as Ctrl-C stops Dagster's daemon, and say so."""
    home = tmp_path / "home"
    (home / "images").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    console = tmp_path / "console.log"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "RANDOM_DIFFUSION_IMAGES_DIR": str(home / "images"),
        "RANDOM_DIFFUSION_OUTPUT_DIR": str(home / "outputs"),
    }
    command = [
        str(Path(sys.executable).parent / "random-diffusion"),
        "daemon",
        "-w",
        str(PROJECT_ROOT / "workspace.yaml"),
    ]
    with console.open("w") as out:
        daemon = subprocess.Popen(
            command,
            cwd=home,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: "Instance is configured with the following daemons" in console.read_text(), 120, "the daemon")
        processes = descendants(daemon.pid)  # Dagster's daemon, its code server
        daemon.terminate()  # the command alone, not its process group
        assert daemon.wait(timeout=60) == 0
        wait_for(lambda: not any(_alive(pid) for pid in processes), 30, "the daemon's processes to end")
        assert "Daemon threads shut down." in console.read_text()
    finally:
        stop_process_groups([daemon])
