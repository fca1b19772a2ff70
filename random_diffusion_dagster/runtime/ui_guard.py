"""The guard in front of Dagster's webserver that web pages cannot get past.

Dagster's webserver runs GraphQL mutations sent as GET requests and answers requests from any origin, so any page
open in the user's browser could launch runs or add partitions on 127.0.0.1:3000
(`<img src="http://127.0.0.1:3000/graphql?query=mutation{...}">`), and a page whose own name its DNS later points at
this machine (DNS rebinding) looks same-origin to it. `WebserverGuard` refuses those requests before Dagster sees
them, whatever address the server is bound to; `random-diffusion-webserver` (webserver.py) and `random-diffusion ui`
(ui.py) serve the UI through it.

It also answers the UI's "Add a partition" itself when the key names no image in the images folder: such a partition
would be deleted by new_images_sensor at its next tick, and a backfill launched on it afterwards fails inside Dagster's
daemon with a stack trace no project code can catch.
"""

from __future__ import annotations

import ipaddress
import json
import posixpath
import socket
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from ..settings import ALLOWED_HOSTS_VARIABLE, ALLOWED_ORIGINS_VARIABLE, SettingError, sensor_interval_seconds

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

    And answers, as GraphQL, a mutation adding an `images` partition whose key names no image (missing_image).
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
                extra = [(b"allow", b"POST")] if status == 405 else []
                await _respond(send, status, b"text/plain; charset=utf-8", message.encode(), extra)
                return
        # GraphQL over GET may only read (above), and a websocket runs subscriptions only: a POST is the one way to
        # add a partition.
        if scope["type"] == "http" and scope.get("method") == "POST" and _is_graphql(scope):
            request, receive = await _graphql_request(scope, receive)
            query = request.get("query")
            if isinstance(query, str) and ADD_PARTITION_FIELD in query:  # a field name has no escapes: cheap test
                from starlette.concurrency import run_in_threadpool

                answer = await run_in_threadpool(partition_answer, query, request)  # it may scan the folder
                if answer is not None:
                    await _respond(send, 200, b"application/json", json.dumps(answer).encode())
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
        graphql = _is_graphql(scope)
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


async def _respond(send, status: int, content_type: bytes, body: bytes, extra_headers=()) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _is_graphql(scope) -> bool:
    return scope.get("path", "").rstrip("/").rsplit("/", 1)[-1].lower() == "graphql"


async def _graphql_request(scope, receive):
    """(the GraphQL request of a POST as Dagster's webserver reads it: a JSON body, an application/graphql body,
    else the URL's parameters; a `receive` that hands the app the body again)."""
    types = [value.decode("latin-1") for name, value in scope.get("headers", []) if name == b"content-type"]
    content_type = types[0] if types else ""  # the first, as Starlette's request.headers gives it
    if "application/json" not in content_type and "application/graphql" not in content_type:
        return dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)), receive
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away: nothing to answer
            return {}, _replaying(message, receive)
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    replay = _replaying({"type": "http.request", "body": body, "more_body": False}, receive)
    if "application/json" not in content_type:
        return {"query": body.decode("utf-8", "replace")}, replay
    try:
        request = json.loads(body)
    except ValueError:
        return {}, replay  # Dagster answers that itself
    return (request if isinstance(request, dict) else {}), replay


def _replaying(first: dict, receive):
    """A `receive` that gives `first`, then what `receive` gives."""
    pending = [first]

    async def replayed():
        return pending.pop() if pending else await receive()

    return replayed


ADD_PARTITION_FIELD = "addDynamicPartition"


def partition_answer(query: str, request: dict) -> dict | None:
    """The GraphQL answer to a mutation that would add an `images` partition naming no image, or None to let Dagster
    run the request.

    Each refused addDynamicPartition field answers UnauthorizedError with missing_image's reason: the one member of
    its result's union whose message the UI's "Add a partition" dialog shows as it is (PythonError comes with a
    stack trace and a title about environment variables). Nothing in such a request runs: any other field of it is
    null, with an error saying why.
    """
    from graphql import GraphQLError, OperationDefinitionNode, OperationType, parse, value_from_ast_untyped

    variables, operation_name = request.get("variables"), request.get("operationName")
    try:
        document = parse(query)
        if isinstance(variables, str):
            variables = json.loads(variables)
    except (GraphQLError, ValueError):
        return None  # Dagster answers a broken request itself
    operations = [
        definition
        for definition in document.definitions
        if isinstance(definition, OperationDefinitionNode)
        and (operation_name is None or (definition.name and definition.name.value == operation_name))
    ]
    if len(operations) != 1 or operations[0].operation != OperationType.MUTATION:
        return None  # not a mutation, or one Dagster will refuse to pick
    (operation,) = operations
    values = {
        definition.variable.name.value: value_from_ast_untyped(definition.default_value)
        for definition in operation.variable_definitions
        if definition.default_value is not None
    } | (variables if isinstance(variables, dict) else {})
    reasons = {}
    for field in _root_fields(operation.selection_set, document):
        reason = None
        if field.name.value == ADD_PARTITION_FIELD:
            arguments = {arg.name.value: value_from_ast_untyped(arg.value, values) for arg in field.arguments}
            reason = missing_image(arguments.get("partitionsDefName"), arguments.get("partitionKey"))
        reasons[(field.alias or field.name).value] = reason
    refused = [reason for reason in reasons.values() if reason]
    if not refused:
        return None
    answer: dict = {
        "data": {
            name: {"__typename": "UnauthorizedError", "message": reason} if reason else None
            for name, reason in reasons.items()
        }
    }
    if len(refused) < len(reasons):
        answer["errors"] = [{"message": f"Nothing in this request was run: {refused[0]}"}]
    return answer


def _root_fields(selection_set, document, seen: frozenset[str] = frozenset()):
    """The fields an operation runs at its root, its fragments' included (a cycle, which Dagster refuses, ends)."""
    from graphql import FieldNode, FragmentDefinitionNode, FragmentSpreadNode, InlineFragmentNode

    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            yield selection
        elif isinstance(selection, InlineFragmentNode):
            yield from _root_fields(selection.selection_set, document, seen)
        elif isinstance(selection, FragmentSpreadNode) and selection.name.value not in seen:
            for definition in document.definitions:
                if isinstance(definition, FragmentDefinitionNode) and definition.name.value == selection.name.value:
                    yield from _root_fields(definition.selection_set, document, seen | {selection.name.value})


def missing_image(partitions_def_name, key) -> str | None:
    """Why `key` must not become an `images` partition (one line naming it, the images folder and the fix), or None.

    A key whose parts are each their own key (partition_key_for: plain names are, hashed ones are not) can only be
    the key of the file of that path, so one stat refuses it; anything else is looked up with the partitions' own
    mapping (DatasetResource.files_for), which scans the folder, and so does a key the stat finds, since only the
    scan knows which files are images (not captions, not in a skipped folder).
    """
    from ..defs.partitions import images_partitions
    from ..defs.resources import DatasetResource
    from ..engine.images import image_problem, partition_key_for

    if partitions_def_name != images_partitions.name or not isinstance(key, str):
        return None
    try:
        dataset = DatasetResource()  # the folder and scan settings the code location's resource has
        wait = 2 * sensor_interval_seconds()  # a new file is registered once it has kept its size for a tick
    except ValueError:
        return None  # a broken setting: the code location names it, and fails the mutation itself
    shown = key if len(key) <= MAX_SHOWN_KEY else f"{key[:MAX_SHOWN_KEY]}... ({len(key)} characters)"
    granularity = dataset.granularity
    if not granularity.per_image:  # a folder's or shard's key: it must hold an image
        try:
            found, _ = dataset.files_for([key])
        except OSError as error:
            return f"Not added: partition {shown!r} names no {granularity.unit} of images, because {error}"
        if any(image_problem(file.path) is None for file in found):
            return None
        return (
            f"Not added: partition {shown!r} is no {granularity.unit} of images in {dataset.images_dir} "
            f"(RANDOM_DIFFUSION_PARTITIONS={granularity}): new_images_sensor gives each {granularity.unit} with "
            f"images its partition within about {wait} s."
        )
    folder, _, name = posixpath.normpath(key).rpartition("/")  # `./a.jpg` and `cats//a.jpg` are a.jpg, cats/a.jpg
    own_key = partition_key_for(name, folder)  # the key of the file at that path, if there is one
    path = Path(dataset.images_dir, key)
    if own_key != key or _is_file(path):
        try:
            found, _ = dataset.files_for([key])
        except OSError as error:  # the folder is missing or cannot be listed: its message says what to do
            return f"Not added: partition {shown!r} names no image, because {error}"
        if found:
            problem = image_problem(found[0].path)  # the header only: what new_images_sensor checks before it adds one
            return None if problem is None else f"Not added: partition {shown!r}: {problem}"
        if own_key != key and not key.startswith("/") and ".." not in key.split("/") and _is_file(path):
            return (
                f"Not added: {shown!r} is the name of a file in the images folder {dataset.images_dir}, not a "
                f"partition key: its partition is {own_key!r}."
            )
    return (
        f"Not added: partition {shown!r} names no image in the images folder {dataset.images_dir}. Put the image file "
        f"in {dataset.images_dir}: new_images_sensor gives each image there a partition, named after its file, "
        f"within about {wait} s."
    )


MAX_SHOWN_KEY = 200  # a refusal quotes at most this much of the key it refuses


def _is_file(path: Path) -> bool:
    """Whether a file is there; a name no file system takes (too long, a NUL byte) names none."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


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
