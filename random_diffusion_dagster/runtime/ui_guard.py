"""The guard in front of Dagster's webserver that web pages cannot get past.

Dagster's webserver runs GraphQL mutations sent as GET requests and answers requests from any origin, so any page
open in the user's browser could launch runs or add partitions on 127.0.0.1:3000
(`<img src="http://127.0.0.1:3000/graphql?query=mutation{...}">`). `WebserverGuard` refuses those requests before
Dagster sees them; `random-diffusion-webserver` (webserver.py) and `random-diffusion ui` (ui.py) serve the UI
through it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit

from ..settings import ALLOWED_ORIGINS_VARIABLE, SettingError

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
                f"127.0.0.1 is a DNS-rebinding attack. Behind a proxy, add its URL to {ALLOWED_ORIGINS_VARIABLE}.\n"
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


def checked_origins(origins: list[str]) -> list[str]:
    """The extra origins a user allows (settings.allowed_origins); a typo there is an error, not a silent no-op."""
    bad = [origin for origin in origins if _origin_key(origin) is None]
    if bad:
        raise SettingError(
            f"{ALLOWED_ORIGINS_VARIABLE} holds {bad}, which are not origins; write each as scheme://host[:port], "
            "e.g. https://dagster.example.com"
        )
    return origins
