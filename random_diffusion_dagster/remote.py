"""Submitting work to a running Dagster deployment over its GraphQL API.

The equivalent of the old server's `POST initialize_diffusion {"prompt_list": [...]}`:
launch `diffuse_images` runs with a prompt list, optionally wait and report outputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlparse

import requests
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

from .batching import partition_ranges
from .engine.prompts import require_prompts

JOB_NAME = "diffuse_images"
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}

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


class SubmitError(RuntimeError):
    """The deployment cannot take the submission; the message says why and what to do."""


@dataclass
class Deployment:
    """A running Dagster webserver, addressed by its URL."""

    url: str = "http://127.0.0.1:3000"

    def __post_init__(self):
        parsed = urlparse(self.url)
        if not parsed.hostname:
            raise SubmitError(f"{self.url!r} is not a webserver URL such as http://127.0.0.1:3000.")
        self.client = DagsterGraphQLClient(
            parsed.hostname, port_number=parsed.port, use_https=parsed.scheme == "https", timeout=60
        )

    def query(self, query: str, variables: dict) -> dict:
        try:
            response = requests.post(f"{self.url.rstrip('/')}/graphql", json={"query": query, "variables": variables}, timeout=60)
        except requests.ConnectionError as exc:
            raise SubmitError(
                f"Cannot reach the Dagster webserver at {self.url}: start it (`dagster dev` or "
                "`dagster-webserver -w workspace.yaml`) or pass --url."
            ) from exc
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise SubmitError(f"GraphQL error from {self.url}: {body['errors'][0].get('message')}")
        return body["data"]

    def partition_keys(self) -> list[str]:
        result = self.query(PARTITION_KEYS_QUERY, {"assetKey": {"path": ["diffused_image"]}})["assetNodeOrError"]
        if result["__typename"] != "AssetNode":
            raise SubmitError(f"The deployment at {self.url} has no diffused_image asset: {result.get('message')}")
        return result["partitionKeys"]

    def submit(self, prompts: list[str] | None, seed: int | None, images: list[str] | None, max_per_run: int = 32) -> list[str]:
        """Launch runs covering `images` (default: every partition); return their run ids."""
        if prompts is not None:
            prompts = require_prompts(prompts, source="--prompt")
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
        run_ids = []
        for partition_range in partition_ranges(all_keys, wanted, max_per_run):
            try:
                run_ids.append(
                    self.client.submit_job_execution(JOB_NAME, run_config=run_config, tags=partition_range.tags)
                )
            except DagsterGraphQLClientError as exc:
                raise SubmitError(
                    f"The deployment refused the run for {partition_range.first}..{partition_range.last}: {exc}"
                ) from exc
        return run_ids

    def wait(self, run_id: str, poll_seconds: float = 2.0, timeout: float = 3600) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.client.get_run_status(run_id).value
            if status in FINISHED:
                return status
            time.sleep(poll_seconds)
        raise SubmitError(f"Run {run_id} did not finish within {timeout:.0f} s.")

    def outputs(self, run_id: str) -> dict[str, str]:
        """partition key -> output path, from the run's per-partition materializations."""
        run = self.query(RUN_OUTPUTS_QUERY, {"runId": run_id})["runOrError"]
        paths = {}
        for event in run.get("assetMaterializations", []):
            for entry in event["metadataEntries"]:
                if entry["label"] == "output_path" and event["partition"]:
                    paths[event["partition"]] = entry["path"]
        return paths
