"""Dagster's webserver behind a guard that web pages cannot get past.

Dagster 1.13's webserver runs GraphQL mutations sent as GET requests and answers requests from any
origin, so any page open in the user's browser could launch runs or add partitions on
127.0.0.1:3000 (`<img src="http://127.0.0.1:3000/graphql?query=mutation{...}">`). `WebserverGuard`
refuses those requests before Dagster sees them; `random-diffusion-webserver` (a drop-in for
`dagster-webserver`) and `random-diffusion ui` (webserver + daemon, like `dagster dev`) serve the UI
through it.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

ALLOWED_ORIGINS_ENV = "RANDOM_DIFFUSION_ALLOWED_ORIGINS"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
DEFAULT_PORTS = {"http": 80, "https": 443}


class WebserverGuard:
    """ASGI middleware in front of Dagster's webserver app.

    Refuses, with a plain-text reason:
    - GraphQL over anything but POST unless every operation in it is a query (GET must not change state);
    - requests to /graphql (HTTP and websocket) and state-changing requests anywhere whose Origin header
      is not the server's own origin or one listed in RANDOM_DIFFUSION_ALLOWED_ORIGINS; requests
      without Origin (curl, Python clients, `random-diffusion submit`) pass;
    - on a loopback connection, a Host header that is not a loopback name, an IP address or an allowed
      origin's host: that is how DNS rebinding makes a foreign page look same-origin.
    """

    def __init__(self, app, allowed_origins: Iterable[str] = ()):
        self.app = app
        self.allowed_origins = {_origin_key(origin) for origin in allowed_origins} - {None}
        self.allowed_hosts = {key[1] for key in self.allowed_origins}

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            refusal = self.refusal(scope)
            if refusal is not None:
                status, message = refusal
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
                    return
                body = message.encode()
                headers = [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ]
                if status == 405:
                    headers.append((b"allow", b"POST"))
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def refusal(self, scope) -> tuple[int, str] | None:
        """(HTTP status, reason) if the request must not reach Dagster, else None."""
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in scope.get("headers", [])]
        hosts = [value for name, value in headers if name == "host"]
        origins = [value for name, value in headers if name == "origin"]
        host = hosts[0] if len(hosts) == 1 else ""
        if self._rebound(scope, host):
            return 403, (
                f"Refused: Host {host!r} on a connection to a loopback address. Only a page loaded from this "
                "server (http://127.0.0.1:PORT or http://localhost:PORT) may use it; a foreign name pointing at "
                f"127.0.0.1 is a DNS-rebinding attack. Behind a proxy, add its URL to {ALLOWED_ORIGINS_ENV}.\n"
            )
        method = scope.get("method", "GET")  # websocket scopes have none: the handshake is a GET
        graphql = scope.get("path", "").rstrip("/").rsplit("/", 1)[-1].lower() == "graphql"
        if (graphql or method not in SAFE_METHODS) and origins:
            foreign = [origin for origin in origins if not self._same_origin(origin, host)]
            if foreign:
                return 403, (
                    f"Refused: a request from origin {foreign[0]} to this Dagster webserver (Host {host!r}). Only "
                    "the UI's own pages may call its API; requests without an Origin header (curl, scripts) "
                    f"are allowed. To allow another origin, add it to {ALLOWED_ORIGINS_ENV} (comma-separated).\n"
                )
        if graphql and scope["type"] == "http" and method != "POST":
            queries = [
                value
                for key, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
                if key == "query"
            ]
            for query in queries:
                reason = _not_read_only(query)
                if reason:
                    return 405, (
                        f"Refused: {reason} in a {method} request. A GET request can be sent by any web page, so "
                        "only read-only queries are accepted that way; send mutations as POST with "
                        "Content-Type: application/json.\n"
                    )
        return None

    def _same_origin(self, origin: str, host: str) -> bool:
        key = _origin_key(origin)
        if key is None:
            return False  # "null" (sandboxed frames, file://) and anything unparseable
        if key in self.allowed_origins:
            return True
        own = _host_key(host, default_port=DEFAULT_PORTS[key[0]])
        return own is not None and own == key[1:]

    def _rebound(self, scope, host: str) -> bool:
        server = scope.get("server")
        if not server or not _is_loopback_ip(server[0]):
            return False
        key = _host_key(host, default_port=0)
        if key is None:
            return True
        name = key[0]
        return not (_is_ip(name) or name == "localhost" or name.endswith(".localhost") or name in self.allowed_hosts)


def _not_read_only(query: str) -> str | None:
    """Why this GraphQL document must not run from a GET request, or None if it only reads."""
    from graphql import GraphQLError, OperationDefinitionNode, OperationType, parse

    try:
        document = parse(query)
    except GraphQLError as exc:
        return f"an unparseable GraphQL document ({exc.message})"
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode) and definition.operation != OperationType.QUERY:
            return f"a GraphQL {definition.operation.value}"
    return None


def _origin_key(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin such as https://example.com:8443, or None if it is not one."""
    try:
        parts = urlsplit(origin.strip().rstrip("/").lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path or parts.username is not None:
        return None
    return parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme]


def _host_key(host: str, default_port: int) -> tuple[str, int] | None:
    """(host, port) of a Host header; its port defaults to the one of the scheme being compared."""
    try:
        parts = urlsplit("//" + host.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.path or parts.username is not None:
        return None
    return parts.hostname, port or default_port


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _is_loopback_ip(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def allowed_origins_from_env() -> list[str]:
    """Extra origins from RANDOM_DIFFUSION_ALLOWED_ORIGINS; a typo there is an error, not a silent no-op."""
    origins = [origin.strip() for origin in os.environ.get(ALLOWED_ORIGINS_ENV, "").split(",") if origin.strip()]
    bad = [origin for origin in origins if _origin_key(origin) is None]
    if bad:
        raise SystemExit(
            f"{ALLOWED_ORIGINS_ENV} holds {bad}, which are not origins; write each as scheme://host[:port], "
            "e.g. https://dagster.example.com"
        )
    return origins


def project_instance_ref() -> str:
    """The serialized ref of `random-diffusion`'s instance: DAGSTER_HOME, else ./dagster.yaml, history in ./.dagster."""
    from dagster._serdes import serialize_value

    from .cli import project_instance

    with project_instance() as instance:
        return serialize_value(instance.get_ref())


def main(argv: list[str] | None = None) -> None:
    """`random-diffusion-webserver`: `dagster-webserver` with all its options, guarded, on the project's instance."""
    import dagster_webserver.cli as webserver_cli

    create_app = getattr(webserver_cli, "create_app_from_workspace_process_context", None)
    if create_app is None or not hasattr(webserver_cli, "cli"):
        raise SystemExit(
            "This dagster-webserver no longer builds its app through create_app_from_workspace_process_context; "
            "the guard cannot wrap it. Install dagster-webserver==1.13.27 (pyproject.toml pins it)."
        )
    allowed = allowed_origins_from_env()

    def create_guarded_app(*args, **kwargs):
        return WebserverGuard(create_app(*args, **kwargs), allowed_origins=allowed)

    webserver_cli.create_app_from_workspace_process_context = create_guarded_app
    args = list(sys.argv[1:] if argv is None else argv)
    if "--instance-ref" not in args and not any(arg in ("--help", "--version") for arg in args):
        args += ["--instance-ref", project_instance_ref()]
    webserver_cli.cli.main(args=args, prog_name="random-diffusion-webserver", auto_envvar_prefix="DAGSTER_WEBSERVER")


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

    from .cli import _instance_home, project_instance
    from .daemon import DaemonOutput, interrupt, start_child
    from .settings import backfill_interval_seconds

    allowed_origins_from_env()  # fail here, not in a child
    backfill_interval_seconds()
    home = _instance_home().resolve()
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
            "random_diffusion_dagster.webserver",
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


if __name__ == "__main__":
    main()
