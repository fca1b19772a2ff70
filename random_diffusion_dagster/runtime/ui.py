"""`random-diffusion ui`: the guarded webserver and Dagster's daemon on one instance, like `dagster dev`."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg

from ..settings import allowed_hosts, allowed_origins, backfill_interval_seconds
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


def port_problem(host: str, port: int) -> str | None:
    """Why the webserver could not serve on host:port, found before anything starts; None if it can.

    Binds a socket to each address the host resolves to, as uvicorn's server does (SO_REUSEADDR on, as asyncio sets
    it: a port whose only traffic is closed connections of a UI stopped a moment ago is free to it, while one another
    program listens on or holds is not), and closes it again.
    """
    if not 1 <= port <= 65535:
        return f"port {port} is not a TCP port: give one from 1 to 65535 with -p."
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as error:
        reason = getattr(error, "strerror", None) or error
        return f"cannot serve on host {host!r}: {reason}; give an address or name of this machine with -h."
    for family, kind, proto, _, address in dict.fromkeys(addresses):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    return (
                        f"port {port} on {host} is in use by another program (another UI?): stop it, or give a free "
                        "port with -p."
                    )
                return f"cannot serve on {host} port {port}: {error.strerror}; give an address of this machine with -h."
    return None


def serve_ui(host: str | None, port: int | None, workspace: str) -> int:
    """Guarded webserver plus Dagster's daemon (`random-diffusion daemon`) on one instance, like `dagster dev`.

    Ctrl-C, SIGTERM or SIGHUP (the terminal closed) stops both, and the runs in flight, within STOP_SECONDS (stop).

    Both children get DAGSTER_HOME: the user's, else the project folder, whose dagster.yaml keeps history
    in ./.dagster. The daemon's routine per-tick lines are dropped (DaemonOutput); once the UI answers, one
    line says where it is and where history is kept.

    The guard (ui_guard.py) answers only requests whose Host header is an IP address, localhost (on this machine),
    this machine's host name, or a name listed in RANDOM_DIFFUSION_ALLOWED_HOSTS (comma-separated) or in
    RANDOM_DIFFUSION_ALLOWED_ORIGINS: serving on 0.0.0.0 for a LAN that reaches the UI by a DNS name, list that name.

    What stops it from starting (a bad setting, a port out of range or in use, an instance it cannot open) is one
    line and exit status 2, before any child starts; if a child stops anyway, the other is stopped too.
    """
    checked_origins(allowed_origins())  # fail here, not in a child
    allowed_hosts()
    backfill_interval_seconds()
    import random_diffusion_dagster.definitions  # noqa: F401  (every setting read as definitions load, checked here)

    problem = port_problem(host or "127.0.0.1", 3000 if port is None else port)
    if problem:
        print(f"random-diffusion ui: error: {problem}", file=sys.stderr)
        return 2
    home = instance_home().resolve()
    instance = project_instance()  # creates storage once, before two children race to; chdirs to the project
    history = history_location(instance, home)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    shown_url, local_url = _ui_url(host, port)

    # Stopped with SIGINT, not `dagster dev`'s shutdown pipe: a webserver given that pipe waits on it before it
    # exits, so one that fails to start (its port taken after the check above) would never end, nor would this.
    # Each child leads a session of its own, which its code servers and their runs join: a terminal's Ctrl-C reaches
    # only this process, which stops them in order (stop), and each group can be killed whole.
    children: dict[str, subprocess.Popen] = {}
    output = DaemonOutput()
    # Each child prints through a filter of its own (it keeps state line to line): colour codes only on a terminal,
    # routine lines dropped.
    outputs = {"webserver": DaemonOutput(), "daemon": output}
    forwarding = {
        name: threading.Thread(
            target=lambda name=name: outputs[name].forward(children[name].stdout, sys.stderr), daemon=True
        )
        for name in outputs
    }
    for signum in STOP_SIGNALS:
        # `kill`, or the terminal closing, stops it like Ctrl-C. Under nohup SIGHUP stays ignored. SIGINT and SIGTERM
        # are taken even where inherited as ignored: a script starts `ui` in the background with SIGINT ignored, and a
        # process that ran Dagster in process ignores SIGTERM wherever it ignored SIGINT (Dagster maps one to the
        # other); the children then take them too (a handler, unlike SIG_IGN, is not inherited), so stop() stops
        # them cleanly instead of killing them at the deadline.
        if signum != signal.SIGHUP or signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, interrupt)
    exit_code = 0
    announced = False
    try:
        children["webserver"] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "random_diffusion_dagster.runtime.webserver",
                *(["-h", host] if host else []),
                *(["-p", str(port)] if port else []),
                "-w",
                workspace,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        forwarding["webserver"].start()
        children["daemon"] = start_child(workspace, env, own_session=True)
        forwarding["daemon"].start()
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
        stop(instance, list(children.values()), output)
        for thread in forwarding.values():
            if thread.is_alive():
                thread.join(timeout=2)  # the children's last lines, the runs' cancellations among them
        instance.dispose()
    return exit_code


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# How long the runs in flight get to record their cancellation, and the webserver and daemon to stop, before what is
# left of them is killed: stopping `ui` takes at most this, plus a moment.
STOP_SECONDS = 5


def stop(instance: dg.DagsterInstance, children: list[subprocess.Popen], output: DaemonOutput) -> None:
    """Stop `ui`'s children (each leads its own process group) and the runs their code servers execute, within
    STOP_SECONDS, leaving no process of theirs behind.

    The daemon and webserver are asked to stop first (Ctrl-C), so no new run starts; at once the runs in flight are
    canceled as the UI's Terminate button does, through the code server executing each (it lives until its runs
    end): Dagster records them CANCELED and they stop mid-batch; their finished images are kept.
    Whatever is still running at the deadline (a run busy in one long batch, a code server) is killed, and a run
    killed so is recorded CANCELED here. Ctrl-C and SIGTERM are ignored meanwhile, so nothing is left half-stopped.
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    groups = [process.pid for process in children]
    addresses = _code_server_addresses(groups)
    for process in children:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # both stop cleanly on Ctrl-C: uvicorn and Dagster's daemons
    runs = _runs_in_code_servers(instance, addresses)
    # Each cancellation is a call to the run's code server, which waits up to Dagster's gRPC timeout (60 s) for an
    # answer a code server shutting down may never give: made on threads, so the deadline below holds.
    cancellations = [threading.Thread(target=_cancel, args=(instance, run), daemon=True) for run in runs]
    for run, cancellation in zip(runs, cancellations, strict=True):
        print(f"random-diffusion ui: canceling run {run.run_id} (its finished images are kept)", flush=True)
        output.canceled_runs.add(run.run_id)
        cancellation.start()
    deadline = time.monotonic() + STOP_SECONDS
    while time.monotonic() < deadline and not (
        all(process.poll() is not None for process in children) and _finished(instance, runs)
    ):
        time.sleep(0.2)
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)  # a code server or run process still running: it is not waited for
    for process in children:
        process.wait()
    for cancellation in cancellations:
        cancellation.join(timeout=1)  # a call to a code server killed above ends with it
    for run in _runs_in_code_servers(instance, addresses):  # those killed, and any launched as the daemon stopped
        instance.report_run_canceled(
            run, f"Stopped with `random-diffusion ui`: still running {STOP_SECONDS} s later, its process was killed."
        )


def _cancel(instance: dg.DagsterInstance, run: dg.DagsterRun) -> None:
    """Cancel the run as the UI's Terminate button does (Dagster records it CANCELED, the step stops mid-batch)."""
    try:
        instance.run_launcher.terminate(run.run_id)
    except Exception:  # noqa: BLE001 - its code server no longer answers: the run's process is killed with it
        pass


def _finished(instance: dg.DagsterInstance, runs: list[dg.DagsterRun]) -> bool:
    return all(instance.get_run_by_id(run.run_id).is_finished for run in runs)


def _code_server_addresses(groups: list[int]) -> set[str]:
    """The sockets (or ports) Dagster's code servers in these process groups serve on, from their command lines
    (`dagster api grpc --socket PATH`); empty where /proc does not show processes (not Linux)."""
    addresses = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) not in groups:
                continue
            argv = (stat.parent / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        if "grpc" in argv:
            pairs = zip(argv, argv[1:], strict=False)
            addresses.update(value for flag, value in pairs if flag in ("--socket", "--port"))
    return addresses


def _runs_in_code_servers(instance: dg.DagsterInstance, addresses: set[str]) -> list[dg.DagsterRun]:
    """The runs in progress that one of these code servers executes (where their run launcher tagged them)."""
    from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES
    from dagster._core.storage.tags import GRPC_INFO_TAG

    runs = []
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=IN_PROGRESS_RUN_STATUSES)):
        server = json.loads(record.dagster_run.tags.get(GRPC_INFO_TAG, "{}"))
        if str(server.get("socket") or server.get("port")) in addresses:
            runs.append(record.dagster_run)
    return runs
