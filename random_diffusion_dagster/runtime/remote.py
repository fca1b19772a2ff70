"""Submitting work to a running Dagster deployment over its GraphQL API: launch `diffuse_images` runs with a
prompt list, optionally wait for them and report their outputs.

Launching and run status use dagster-graphql's client; what its API lacks (partition keys, the job's code location,
output paths) is queried over its transport, so every answer gets the same checks and every failure a SubmitError.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

import requests
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError
from gql import Client, GraphQLRequest
from gql.transport.requests import RequestsHTTPTransport

from ..defs.prompt_sets import submission_tags
from ..defs.run_ranges import partition_ranges
from ..engine.prompts import require_prompts
from ..engine.templates import PromptTemplates

JOB_NAME = "diffuse_images"
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
# A run still queued after this long is waiting for a daemon or for room in the gpu pool: `submit --wait` says so.
QUEUED_NOTICE_SECONDS = 30

PARTITION_KEYS_QUERY = """
query PartitionKeys($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    __typename
    ... on AssetNode { partitionKeys }
    ... on AssetNotFoundError { message }
  }
}"""

RUN_OUTPUTS_QUERY = """
query RunOutputs($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      status
      assetMaterializations {
        partition
        assetKey { path }
        metadataEntries { label __typename ... on PathMetadataEntry { path } }
      }
    }
    ... on PythonError { message }
    ... on RunNotFoundError { message }
  }
}"""

JOB_LOCATIONS_QUERY = """
query JobLocations {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection { nodes { name location { name } jobs { name } } }
    ... on PythonError { message }
  }
}"""


class SubmitError(RuntimeError):
    """The deployment cannot take the submission; the message says why and what to do."""


@dataclass
class Deployment:
    """A running Dagster webserver, addressed by its URL (credentials and path prefix included)."""

    url: str = "http://127.0.0.1:3000"
    timeout: float = 60

    def __post_init__(self):
        parsed = urlparse(self.url)
        try:
            port = parsed.port
        except ValueError:
            port = -1
        if parsed.scheme not in ("http", "https") or not parsed.hostname or port == -1:
            raise SubmitError(f"{self.url!r} is not a webserver URL such as http://127.0.0.1:3000.")
        host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
        # Credentials go with every request, never into messages or printed links.
        self.base_url = f"{parsed.scheme}://{host}{f':{port}' if port else ''}{parsed.path.rstrip('/')}"
        self.graphql_url = f"{self.base_url}/graphql"
        self.auth = None if parsed.username is None else (unquote(parsed.username), unquote(parsed.password or ""))
        transport = RequestsHTTPTransport(
            self.graphql_url,
            auth=self.auth,
            timeout=self.timeout,
            allow_redirects=False,  # requests would turn a redirected POST into a GET
            hooks={"response": self._check_answer},  # the client's requests and ours alike
        )
        # The transport carries the URL (scheme, prefix) and credentials; host and port only name it in the client.
        self.client = DagsterGraphQLClient(host, port or None, transport=transport)
        self._gql = Client(transport=transport)

    def query(self, query: str, variables: dict) -> dict:
        """The `data` of a GraphQL request; no server, not Dagster, HTTP or GraphQL errors are SubmitErrors."""
        request = GraphQLRequest(query, variable_values=variables)
        with self._answers():
            return self._gql.execute(request)

    @contextmanager
    def _answers(self, refused=None):
        """Raises a failure on the way to the server as the SubmitError saying what to do; `refused(kind, reason)`
        words a refusal that the client raises as DagsterGraphQLClientError(kind, reason)."""
        try:
            yield
        except KeyError as exc:  # the client reads the root field it asked for without checking it is there
            raise self._not_dagster(f"its GraphQL answer has no {exc.args[0]}") from None
        except Exception as exc:
            cause = exc  # gql and the client wrap what the transport raised; find it
            while cause is not None and not isinstance(cause, (SubmitError, requests.RequestException)):
                cause = cause.__cause__
            if isinstance(cause, SubmitError):
                raise cause from None
            if isinstance(cause, requests.ConnectionError):
                raise SubmitError(
                    f"Cannot reach the Dagster webserver at {self.base_url}: start it (`random-diffusion ui` or "
                    "`dagster-webserver -w workspace.yaml`) or pass --url."
                ) from cause
            if isinstance(cause, requests.Timeout):
                raise SubmitError(
                    f"The Dagster webserver at {self.base_url} did not answer within {self.timeout:g} s: it may be "
                    "busy or stuck; check its log, then retry."
                ) from cause
            if cause is not None:
                raise SubmitError(f"The request to {self.graphql_url} failed: {cause}; check --url.") from cause
            if refused is None or not isinstance(exc, DagsterGraphQLClientError):
                raise
            kind, detail = (*exc.args, exc.body)[:2]
            reasons = [error.get("message") for error in detail] if isinstance(detail, list) else [detail]
            raise SubmitError(refused(kind, "; ".join(map(str, reasons)))) from None

    def _not_dagster(self, why: str) -> SubmitError:
        return SubmitError(f"The server at {self.base_url} is not a Dagster webserver: {why}; check --url.")

    def _check_answer(self, response: requests.Response, **_) -> None:
        """Refuses an answer that is not GraphQL JSON without errors, saying what the server answered and what to do."""
        status, excerpt = response.status_code, " ".join(response.text[:200].split())
        answered = f"POST {urlparse(self.graphql_url).path} answered HTTP {status} {response.reason}"
        not_dagster = f"The server at {self.base_url} is not a Dagster webserver: {answered}"
        if 300 <= status < 400:
            raise SubmitError(
                f"{not_dagster}, a redirect to {response.headers.get('Location')!r}; pass the address it redirects to "
                "as --url (with its path prefix, without /graphql)."
            )
        if status == 401:
            raise SubmitError(
                f"The server at {self.base_url} wants credentials ({answered}): "
                + (
                    "the user name or password in --url is wrong."
                    if self.auth
                    else "put them in --url, e.g. http://USER:PASSWORD@host:3000 (or DAGSTER_WEBSERVER_URL)."
                )
            )
        if status in (404, 405, 501):  # no such path, or no POST there (Python's http.server: 501)
            raise SubmitError(f"{not_dagster}; check --url (host, port and path prefix, e.g. http://host:3000/dagster)")
        if 400 <= status < 500:
            raise SubmitError(
                f"The server at {self.base_url} refused the request ({answered}: {excerpt}); check --url and the "
                "credentials in it."
            )
        if status >= 500:
            raise SubmitError(
                f"The Dagster webserver at {self.base_url} failed ({answered}: {excerpt}); check its log and that its "
                "code location loads, then retry."
            )
        try:
            body = response.json()
        except ValueError:
            kind = response.headers.get("Content-Type", "no content type")
            raise SubmitError(f"{not_dagster} with {kind}, not GraphQL JSON ({excerpt!r}); check --url.") from None
        if not isinstance(body, dict) or not (isinstance(body.get("data"), dict) or body.get("errors")):
            raise SubmitError(f"{not_dagster} with JSON that is not a GraphQL answer ({excerpt!r}); check --url.")
        if body.get("errors"):
            errors = body["errors"] if isinstance(body["errors"], list) else [body["errors"]]
            messages = "; ".join(str(e.get("message", e) if isinstance(e, dict) else e) for e in errors[:3])
            raise SubmitError(
                f"The Dagster webserver at {self.base_url} refused the GraphQL request: {messages}. Check that it "
                "serves this project's code location on a matching Dagster version (dagster==1.13.27)."
            )

    def _root(self, query: str, variables: dict, field: str) -> dict:
        """One root field of a query's answer; a server without it is not the Dagster webserver we expect."""
        value = self.query(query, variables).get(field)
        if not isinstance(value, dict):
            raise self._not_dagster(f"its GraphQL answer has no {field}")
        return value

    def partition_keys(self) -> list[str]:
        result = self._root(PARTITION_KEYS_QUERY, {"assetKey": {"path": ["diffused_image"]}}, "assetNodeOrError")
        if result.get("__typename") != "AssetNode":
            raise SubmitError(f"The deployment at {self.base_url} has no diffused_image asset: {result.get('message')}")
        return result["partitionKeys"]

    def submit(
        self,
        prompts: list[str] | None,
        seed: int | None,
        images: list[str] | None,
        max_per_run: int | None = None,
    ) -> list[str]:
        """Launch runs covering `images` (default: every partition); return their run ids."""
        if prompts is not None:
            prompts = require_prompts(prompts, source="--prompt")
            PromptTemplates(prompts, source="--prompt", wildcard_files=False)  # a bad template fails here, not in a run
        all_keys = self.partition_keys()
        if not all_keys:
            raise SubmitError(
                "No images are registered yet: materialize `source_images` or let `new_images_sensor` run."
            )
        wanted = images or all_keys
        unknown = sorted(set(wanted) - set(all_keys))
        if unknown:
            raise SubmitError(f"Unknown image partitions {unknown[:10]}; known ones include {all_keys[:10]}.")
        run_config: dict = {}
        if prompts is not None:
            run_config["ops"] = {"prompt_list": {"config": {"prompt_list": prompts}}}
        if seed is not None:
            run_config["resources"] = {"dataset": {"config": {"seed": seed}}}
        location, repository = self._job_location()
        run_ids = []
        for partition_range in partition_ranges(all_keys, wanted, max_per_run):
            what = f"{partition_range.first}..{partition_range.last}"
            tags = partition_range.tags | (submission_tags() if prompts is not None else {})
            run_ids.append(self._launch(location, repository, run_config, tags, what))
        return run_ids

    def _launch(self, location: str, repository: str, run_config: dict, tags: dict, what: str) -> str:
        with self._answers(lambda kind, reason: f"The deployment refused the run for {what} ({kind}): {reason}"):
            return self.client.submit_job_execution(JOB_NAME, location, repository, run_config, tags)

    def _job_location(self) -> tuple[str, str]:
        # The client would look the location up again for every run, and its errors do not say what to do.
        repositories = self._root(JOB_LOCATIONS_QUERY, {}, "repositoriesOrError")
        if repositories.get("__typename") != "RepositoryConnection":
            raise SubmitError(f"The deployment at {self.base_url} cannot list its code: {repositories.get('message')}")
        found = [
            (repo["location"]["name"], repo["name"])
            for repo in repositories.get("nodes", [])
            if JOB_NAME in {job["name"] for job in repo.get("jobs", [])}
        ]
        if len(found) != 1:
            raise SubmitError(
                f"The deployment at {self.base_url} has {len(found)} code locations with a {JOB_NAME} job; it needs "
                "exactly one: load this project's workspace.yaml (and only it) in the webserver."
            )
        return found[0]

    def run_status(self, run_id: str) -> str:
        """The run's status name, e.g. QUEUED, STARTED, SUCCESS, FAILURE."""
        with self._answers(lambda kind, reason: f"The deployment at {self.base_url} has no run {run_id}: {reason}"):
            return self.client.get_run_status(run_id).value

    def wait(
        self,
        run_id: str,
        poll_seconds: float = 2.0,
        timeout: float = 3600,
        still_queued=lambda run_id: None,
        queued_notice_seconds: float = QUEUED_NOTICE_SECONDS,
    ) -> str:
        """The run's final status. `still_queued(run_id)` is called once if it waits in the queue that long."""
        started = time.monotonic()
        noticed = False
        while time.monotonic() < started + timeout:
            status = self.run_status(run_id)
            if status in FINISHED:
                return status
            if status == "QUEUED" and not noticed and time.monotonic() - started >= queued_notice_seconds:
                still_queued(run_id)
                noticed = True
            time.sleep(poll_seconds)
        raise SubmitError(f"Run {run_id} did not finish within {timeout:.0f} s.")

    def outputs(self, run_id: str) -> dict[str, str]:
        """partition key -> output path (a folder or shard partition's: its manifest), from the run's per-partition
        materializations."""
        run = self._root(RUN_OUTPUTS_QUERY, {"runId": run_id}, "runOrError")
        paths = {}
        for event in run.get("assetMaterializations", []):
            for entry in event["metadataEntries"]:
                if entry["label"] in ("output_path", "manifest") and event["partition"]:
                    paths[event["partition"]] = entry["path"]
        return paths
