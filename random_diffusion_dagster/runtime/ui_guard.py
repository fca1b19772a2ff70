"""The guard in front of Dagster's webserver that web pages cannot get past.

Dagster's webserver runs GraphQL mutations sent as GET requests and answers requests from any origin, so any page
open in the user's browser could launch runs or add partitions on 127.0.0.1:3000
(`<img src="http://127.0.0.1:3000/graphql?query=mutation{...}">`), and a page whose own name its DNS later points at
this machine (DNS rebinding) looks same-origin to it. `WebserverGuard` refuses those requests before Dagster sees
them, whatever address the server is bound to; `random-diffusion-webserver` (webserver.py) and `random-diffusion ui`
(ui.py) serve the UI through it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit

from ..settings import ALLOWED_HOSTS_VARIABLE, ALLOWED_ORIGINS_VARIABLE, SettingError

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
DEFAULT_PORTS = {"http": 80, "https": 443}


class WebserverGuard:
    """ASGI middleware in front of Dagster's webserver app.

    Refuses, with a plain-text reason:
    - a Host header naming anything but a name the server may be reached by (DNS rebinding: a foreign page whose
      name now resolves to this machine sends its own name as Host, and its Origin matches it). Allowed: any IP
      address; `localhost` and `*.localhost` on a loopback connection; this machine's host name and fully qualified
      name (`socket.gethostname()`, `socket.getfqdn()`), which a LAN user types for a `-h 0.0.0.0` bind and which
      no outside page can be served under unless its owner already controls the user's name resolution; the hosts
      of RANDOM_DIFFUSION_ALLOWED_ORIGINS; and the names listed in RANDOM_DIFFUSION_ALLOWED_HOSTS (comma-separated,
      e.g. `dagster.lan`), for a DNS name or proxy by which users reach the UI. This holds on every connection,
      whatever address the server is bound to;
    - GraphQL over anything but POST unless every operation in it is a query (GET must not change state);
    - requests to /graphql (HTTP and websocket) and state-changing requests anywhere whose Origin header
      is not the server's own origin or one listed in RANDOM_DIFFUSION_ALLOWED_ORIGINS; requests
      without Origin (curl, Python clients, `random-diffusion submit`) pass.
    """

    def __init__(
        self,
        app,
        allowed_origins: Iterable[str] = (),
        allowed_hosts: Iterable[str] = (),
        machine_names: Iterable[str] | None = None,
    ):
        self.app = app
        self.allowed_origins = {_origin_key(origin) for origin in allowed_origins} - {None}
        names = own_host_names() if machine_names is None else machine_names
        listed = {key[1] for key in self.allowed_origins} | set(allowed_hosts) | set(names)
        # localhost names are for loopback connections only, whatever lists them (_rebound)
        self.allowed_hosts = {_bare_name(name) for name in listed} - {""}

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
                f"Refused: Host {host!r} is not a name this Dagster webserver is known by; a foreign name pointing "
                "at this machine is how a DNS-rebinding attack reaches it. Use its IP address (or localhost on this "
                f"machine), or, if users reach it by that name, add the name to {ALLOWED_HOSTS_VARIABLE} "
                "(comma-separated).\n"
            )
        method = scope.get("method", "GET")  # websocket scopes have none: the handshake is a GET
        graphql = scope.get("path", "").rstrip("/").rsplit("/", 1)[-1].lower() == "graphql"
        if (graphql or method not in SAFE_METHODS) and origins:
            foreign = [origin for origin in origins if not self._same_origin(origin, host)]
            if foreign:
                return 403, (
                    f"Refused: a request from origin {foreign[0]} to this Dagster webserver (Host {host!r}). Only "
                    "the UI's own pages may call its API; requests without an Origin header (curl, scripts) "
                    f"are allowed. To allow another origin, add it to {ALLOWED_ORIGINS_VARIABLE} (comma-separated).\n"
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
        """Whether the Host header names something other than a name the server may be reached by."""
        key = _host_key(host, default_port=0)
        if key is None:
            return True  # no Host, several, or not a host[:port]
        name = _bare_name(key[0])
        if _is_ip(name):
            return False
        if _is_localhost(name):
            server = scope.get("server")
            return not (server and _is_loopback_ip(server[0]))
        return name not in self.allowed_hosts


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


def _is_localhost(name: str) -> bool:
    return name == "localhost" or name.endswith(".localhost")


def _bare_name(name: str) -> str:
    """A host name as compared: lowercase, without the root's trailing dot."""
    return name.strip().lower().rstrip(".")


def own_host_names() -> set[str]:
    """This machine's host name and fully qualified name, as a LAN user types them (loopback names left out)."""
    names = {_bare_name(socket.gethostname()), _bare_name(socket.getfqdn())}
    return {name for name in names if name and not _is_localhost(name)}


def _is_loopback_ip(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def checked_origins(origins: list[str]) -> list[str]:
    """The extra origins a user allows (settings.allowed_origins); a typo there is an error, not a silent no-op."""
    bad = [origin for origin in origins if _origin_key(origin) is None]
    if bad:
        raise SettingError(
            f"{ALLOWED_ORIGINS_VARIABLE} holds {bad}, which are not origins; write each as scheme://host[:port], "
            "e.g. https://dagster.example.com"
        )
    return origins
