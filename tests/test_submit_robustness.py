"""`submit` against real local HTTP servers: credentials and path prefix on every request, and every way a
server can fail (not Dagster, HTTP errors, timeouts, bad JSON, GraphQL errors) as a SubmitError that says
what to do, never a traceback.

The servers are Python's http.server in a thread, recording what they received; that the queries fit
Dagster's real GraphQL schema is checked against the schema itself.
"""

import base64
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from dagster_graphql.client import client_queries
from dagster_graphql.schema import create_schema
from graphql import parse, validate

from random_diffusion_dagster.engine.prompts import PromptListError
from random_diffusion_dagster.runtime import remote
from random_diffusion_dagster.runtime.cli import main
from random_diffusion_dagster.runtime.remote import Deployment, SubmitError

KEYS = ["a.png", "b.png", "c.png"]


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A client that gave up (the timeout test) breaks the answer's pipe; the client's side is what is tested,
        and the server's traceback would otherwise reach the terminal during a later test."""


class RecordingServer:
    """A real HTTP server on loopback; `respond(body) -> (status, content_type, text)` decides each answer."""

    def __init__(self, respond):
        self.requests = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw) if raw else None
                recorder.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                status, content_type, text = respond(body)
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                if 300 <= status < 400:
                    self.send_header("Location", "https://elsewhere.example/graphql")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(respond):
        servers.append(RecordingServer(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def graphql(data):
    return 200, "application/json", json.dumps({"data": data})


def fake_dagster(launch_result=None):
    """Answers the submit, wait and outputs queries (dagster-graphql's client's included) as Dagster 1.13 does."""
    launched = []

    def respond(body):
        query = body["query"]
        if "assetNodeOrError" in query:
            return graphql({"assetNodeOrError": {"__typename": "AssetNode", "partitionKeys": KEYS}})
        if "repositoriesOrError" in query:
            node = {"name": "__repository__", "location": {"name": "here"}, "jobs": [{"name": "diffuse_images"}]}
            return graphql({"repositoriesOrError": {"__typename": "RepositoryConnection", "nodes": [node]}})
        if "launchPipelineExecution" in query:
            launched.append(body["variables"]["executionParams"])
            success = {"__typename": "LaunchRunSuccess", "run": {"runId": f"run-{len(launched)}"}}
            return graphql({"launchPipelineExecution": launch_result or success})
        if "RunStatus" in query:
            return graphql({"pipelineRunOrError": {"__typename": "Run", "status": "SUCCESS"}})
        if "RunOutputs" in query:
            entry = {"label": "output_path", "__typename": "PathMetadataEntry", "path": "/out/a.png.png"}
            event = {"partition": "a.png", "assetKey": {"path": ["diffused_image"]}, "metadataEntries": [entry]}
            return graphql({"runOrError": {"__typename": "Run", "status": "SUCCESS", "assetMaterializations": [event]}})
        return 200, "application/json", json.dumps({"errors": [{"message": "unexpected query"}]})

    respond.launched = launched
    return respond


def test_credentials_and_path_prefix_go_with_every_request(serve):
    respond = fake_dagster()
    server = serve(respond)
    deployment = Deployment(server.url.replace("http://", "http://ann:p%40ss@") + "/dagster/")
    run_ids = deployment.submit(["a red fox"], 7, None, max_per_run=2)
    assert run_ids == ["run-1", "run-2"]
    assert [deployment.wait(run_id, poll_seconds=0) for run_id in run_ids] == ["SUCCESS", "SUCCESS"]
    assert deployment.outputs("run-1") == {"a.png": "/out/a.png.png"}
    expected_auth = "Basic " + base64.b64encode(b"ann:p@ss").decode()
    assert len(server.requests) == 7  # keys, code locations, two launches, two statuses, outputs
    assert {(request["path"], request["auth"]) for request in server.requests} == {("/dagster/graphql", expected_auth)}
    first, second = respond.launched
    assert first["selector"] == {
        "repositoryLocationName": "here",
        "repositoryName": "__repository__",
        "pipelineName": "diffuse_images",  # dagster-graphql's client names the job so; Dagster takes it as jobName
        "solidSelection": None,
        "assetSelection": None,
    }
    second_tags = {tag["key"]: tag["value"] for tag in second["executionMetadata"]["tags"]}
    assert (second_tags["dagster/asset_partition_range_start"], second_tags["dagster/asset_partition_range_end"]) == (
        "c.png",
        "c.png",
    )
    assert first["runConfigData"]["resources"]["dataset"]["config"]["seed"] == 7


def test_a_run_left_in_the_queue_is_said_once_while_waiting_goes_on(serve):
    """No daemon beside the webserver: `submit --wait` sat silent with the run QUEUED."""
    statuses = iter(["QUEUED", "QUEUED", "QUEUED", "STARTED", "SUCCESS"])
    server = serve(lambda body: graphql({"pipelineRunOrError": {"__typename": "Run", "status": next(statuses)}}))
    noticed = []
    status = Deployment(server.url).wait("run-1", poll_seconds=0, still_queued=noticed.append, queued_notice_seconds=0)
    assert status == "SUCCESS" and noticed == ["run-1"]


def test_printed_run_links_keep_the_prefix_and_hide_the_password(serve, capsys):
    server = serve(fake_dagster())
    url = server.url.replace("http://", "http://ann:secret@") + "/dagster"
    assert main(["submit", "--url", url, "--prompt", "a red fox"]) == 0
    out = capsys.readouterr().out
    assert f"{server.url}/dagster/runs/run-1" in out and "secret" not in out


NOT_DAGSTER = {
    "404 page": (404, "text/html", "<html><body>Not Found</body></html>"),
    "html page": (200, "text/html", "<!doctype html><html><body>Welcome to nginx!</body></html>"),
    "json without data": (200, "application/json", json.dumps({"status": "ok"})),
    "other graphql api": (200, "application/json", json.dumps({"data": {"hello": "world"}})),
    "405 on POST": (405, "text/plain", "Method Not Allowed"),
    "501 on POST (http.server)": (501, "text/html", "<html><body>Unsupported method ('POST')</body></html>"),
}


@pytest.mark.parametrize("answer", NOT_DAGSTER.values(), ids=NOT_DAGSTER.keys())
def test_a_server_that_is_not_dagster_is_named_as_such(serve, answer):
    server = serve(lambda body: answer)
    with pytest.raises(SubmitError, match=r"is not a Dagster webserver: .*check --url"):
        Deployment(server.url).submit(["x"], None, None)


def test_submit_command_reports_a_wrong_server_without_a_traceback(serve, capsys):
    server = serve(lambda body: NOT_DAGSTER["html page"])
    assert main(["submit", "--url", server.url, "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: The server at") and "not a Dagster webserver" in err and "Traceback" not in err


FAILURES = {
    "server error": (
        (500, "text/plain", "Internal Server Error: code location crashed"),
        r"failed \(POST /graphql answered HTTP 500 .*code location crashed\); check its log",
    ),
    "bad gateway": ((502, "text/html", "<html>Bad Gateway</html>"), r"HTTP 502 .*check its log"),
    "invalid json": ((200, "application/json", '{"data": {"assetNodeOrError": '), r"not GraphQL JSON.*check --url"),
    "graphql errors": (
        (
            200,
            "application/json",
            json.dumps(
                {"data": None, "errors": [{"message": 'Cannot query field "partitionKeys" on type "AssetNode".'}]}
            ),
        ),
        r"refused the GraphQL request: Cannot query field .*matching Dagster version",
    ),
    "credentials needed": ((401, "text/plain", "Unauthorized"), r"wants credentials .*http://USER:PASSWORD@host"),
    "forbidden": ((403, "text/plain", "Forbidden by proxy"), r"refused the request .*Forbidden by proxy.*credentials"),
    "redirect": ((302, "text/plain", ""), r"redirect to 'https://elsewhere.example/graphql'; pass the address"),
}


@pytest.mark.parametrize(("answer", "message"), FAILURES.values(), ids=FAILURES.keys())
def test_http_and_graphql_failures_say_what_failed_and_what_to_do(serve, answer, message):
    server = serve(lambda body: answer)
    with pytest.raises(SubmitError, match=message):
        Deployment(server.url).partition_keys()
    assert len(server.requests) == 1  # a redirect is not followed (it would turn the POST into a GET)


def test_wrong_credentials_are_named(serve):
    server = serve(lambda body: (401, "text/plain", "Unauthorized"))
    with pytest.raises(SubmitError, match="user name or password in --url is wrong"):
        Deployment(server.url.replace("http://", "http://ann:wrong@")).partition_keys()


def test_a_server_that_does_not_answer_in_time_is_a_timeout_error(serve):
    def slow(body):
        time.sleep(3)
        return graphql({})

    server = serve(slow)
    with pytest.raises(SubmitError, match=r"did not answer within 0.5 s: .*check its log"):
        Deployment(server.url, timeout=0.5).partition_keys()


def test_a_refused_launch_names_the_runs_partitions_and_the_reason(serve):
    reason = 'Received unexpected config entry "x"'
    refusal = {"__typename": "RunConfigValidationInvalid", "errors": [{"message": reason}]}
    server = serve(fake_dagster(launch_result=refusal))
    with pytest.raises(SubmitError, match=r"refused the run for a.png..c.png \(RunConfigValidationInvalid\): .*\"x\""):
        Deployment(server.url).submit(["x"], None, None)


def test_a_launch_refused_for_another_reason_names_it(serve):
    refusal = {"__typename": "PythonError", "message": "the run queue is full"}
    server = serve(fake_dagster(launch_result=refusal))
    with pytest.raises(SubmitError, match=r"refused the run for a.png..c.png \(PythonError\): the run queue is full$"):
        Deployment(server.url).submit(["x"], None, None)


def _closed_port_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


CLIENT_FAILURES = {
    "unreachable": (None, r"^Cannot reach the Dagster webserver at http://127\.0\.0\.1:\d+: start it"),
    "server error": ((500, "text/plain", "boom"), r"HTTP 500 .*boom\); check its log"),
    "timeout": ("slow", r"did not answer within 0.5 s: .*check its log"),
    "not dagster": (
        graphql({"hello": "world"}),
        r"not a Dagster webserver: its GraphQL answer has no pipelineRunOrError;",
    ),
    "no such run": (
        graphql({"pipelineRunOrError": {"__typename": "RunNotFoundError", "message": "Run run-9 could not be found."}}),
        r"at http://127\.0\.0\.1:\d+ has no run run-9: Run run-9 could not be found\.$",
    ),
}


@pytest.mark.parametrize(("answer", "message"), CLIENT_FAILURES.values(), ids=CLIENT_FAILURES.keys())
def test_failures_inside_dagster_graphqls_client_say_what_failed_and_what_to_do(serve, answer, message):
    """Run status goes through dagster-graphql's client, which wraps failures in its own errors (naming the query)."""

    def respond(body):
        if answer == "slow":
            time.sleep(3)
            return graphql({})
        return answer

    url = serve(respond).url if answer else _closed_port_url()
    with pytest.raises(SubmitError, match=message) as raised:
        Deployment(url, timeout=0.5).wait("run-9", poll_seconds=0)
    assert "query" not in str(raised.value)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("a {red|green harbour", r"--prompt, prompt 1: 'a \{red\|green harbour' is not a valid template .*balance"),
        ("a {0::red|0::green} __colour__ harbour", r"--prompt, prompt 1: .* cannot be drawn"),
        ("a __../colour__ harbour", r"--prompt, prompt 1: wildcard __../colour__ has '..' in its name"),
    ],
)
def test_a_bad_template_is_refused_before_any_run_is_launched(serve, capsys, prompt, message):
    respond = fake_dagster()
    server = serve(respond)
    assert main(["submit", "--url", server.url, "--prompt", "a calm sea", "--prompt", prompt]) == 2
    assert capsys.readouterr().err.startswith("error: --prompt, prompt 2: ")
    assert respond.launched == []
    with pytest.raises(PromptListError, match=message):
        Deployment(server.url).submit([prompt], None, None)
    assert respond.launched == []


def test_wildcards_in_a_submitted_template_are_left_to_the_deployment(serve, capsys):
    """The wildcard files are the deployment's: a prompt naming one is launched, and nothing is logged about it."""
    respond = fake_dagster()
    server = serve(respond)
    assert main(["submit", "--url", server.url, "--prompt", "a {red|green} __colour__ harbour"]) == 0
    assert len(respond.launched) == 1
    assert capsys.readouterr().err == ""


def test_submit_queries_fit_dagsters_graphql_schema():
    """Ours, and those of dagster-graphql's client that `submit` and `wait` send (launch, run status)."""
    schema = create_schema().graphql_schema
    for module, name in (
        (remote, "PARTITION_KEYS_QUERY"),
        (remote, "JOB_LOCATIONS_QUERY"),
        (client_queries, "CLIENT_SUBMIT_PIPELINE_RUN_MUTATION"),
        (client_queries, "GET_PIPELINE_RUN_STATUS_QUERY"),
        (remote, "RUN_OUTPUTS_QUERY"),
    ):
        assert validate(schema, parse(getattr(module, name))) == [], name
