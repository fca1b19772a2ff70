"""`random-diffusion ui`: the guarded webserver and Dagster's daemon on one instance, like `dagster dev`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..settings import allowed_origins, backfill_interval_seconds
from .daemon import DaemonOutput, interrupt, start_child
from .instance import instance_home, project_instance
from .ui_guard import checked_origins


def history_location(instance, home: Path) -> str:
    """Where `instance` keeps its runs and events, in words: a folder, or the database named in dagster.yaml."""
    import yaml

    ref = instance.get_ref()
    data = ref.storage_data or ref.run_storage_data
    config = (yaml.safe_load(data.config_yaml) if data else None) or {}
    base_dir = config.get("base_dir") if isinstance(config, dict) else None
    if isinstance(base_dir, str):
        return str(Path(base_dir).resolve())  # relative paths are relative to the project root, our cwd
    name = data.class_name if data else "default storage"
    kind = "PostgreSQL" if "Postgres" in name else name
    return f"{kind}, as configured in {home / 'dagster.yaml'}"


def _ui_url(host: str | None, port: int | None) -> tuple[str, str]:
    """(URL to show, URL to poll) for a webserver bound to host:port."""
    host = host or "127.0.0.1"
    port = port or 3000
    local = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)

    def url(name: str) -> str:
        return f"http://[{name}]:{port}" if ":" in name else f"http://{name}:{port}"

    return url(host), url(local)


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/server_info", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def serve_ui(host: str | None, port: int | None, workspace: str) -> int:
    """Guarded webserver plus Dagster's daemon (`random-diffusion daemon`) on one instance, like `dagster dev`.

    Ctrl-C or SIGTERM stops both.

    Both children get DAGSTER_HOME: the user's, else the project folder, whose dagster.yaml keeps history
    in ./.dagster. The daemon's routine per-tick lines are dropped (DaemonOutput); once the UI answers, one
    line says where it is and where history is kept.
    """
    import threading

    from dagster_shared.ipc import get_ipc_shutdown_pipe, open_ipc_subprocess, send_ipc_shutdown_message

    checked_origins(allowed_origins())  # fail here, not in a child
    backfill_interval_seconds()
    home = instance_home().resolve()
    instance = project_instance()  # creates storage once, before two children race to; chdirs to the project
    history = history_location(instance, home)
    instance.dispose()
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    shown_url, local_url = _ui_url(host, port)

    read_fd, webserver_pipe = get_ipc_shutdown_pipe()
    webserver = open_ipc_subprocess(
        [
            sys.executable,
            "-m",
            "random_diffusion_dagster.runtime.webserver",
            *(["-h", host] if host else []),
            *(["-p", str(port)] if port else []),
            "-w",
            workspace,
            "--shutdown-pipe",
            str(read_fd),
        ],
        pass_fds=[read_fd],
        env=env,
    )
    os.close(read_fd)
    daemon = start_child(workspace, env)
    threading.Thread(target=DaemonOutput().forward, args=(daemon.stdout, sys.stderr), daemon=True).start()
    children = {"webserver": webserver, "daemon": daemon}
    signal.signal(signal.SIGTERM, interrupt)  # `kill` stops the children too, like Ctrl-C
    exit_code = 0
    announced = False
    try:
        while True:
            stopped = [name for name, process in children.items() if process.poll() is not None]
            if stopped:
                print(
                    f"error: the {stopped[0]} stopped (exit code {children[stopped[0]].returncode}); "
                    "stopping the others. Its output above says why.",
                    file=sys.stderr,
                )
                exit_code = 1
                break
            if not announced and _answers(local_url):
                print(f"random-diffusion ui: the UI is at {shown_url}; history is kept in {history}", flush=True)
                announced = True
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        try:
            send_ipc_shutdown_message(webserver_pipe)
        except OSError:
            pass  # the webserver is gone already
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGINT)  # Dagster's daemon command stops its daemons cleanly on Ctrl-C
        for process in children.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    return exit_code
