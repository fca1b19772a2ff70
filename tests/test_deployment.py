"""End to end: the README's team commands, `random-diffusion-webserver` and `random-diffusion daemon`, on loopback,
driven over GraphQL (started together on a fresh home, they take turns making the instance).

Covers the sensor registering and materializing images, backfills launched as the UI does,
`random-diffusion submit --wait`, per-partition metadata read back over GraphQL, the `gpu` pool keeping runs
apart, and a run whose process is killed mid-batch being marked failed and retried.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from random_diffusion_dagster.defs.run_ranges import RANGE_END_TAG, RANGE_START_TAG
from random_diffusion_dagster.engine.results import output_file_name, read_record
from random_diffusion_dagster.runtime.dead_runs import PROCESS_TAG
from random_diffusion_dagster.runtime.remote import Deployment

from helpers import ROUTINE_DAEMON_LINES, make_image, write_catalog
from local_services import descendants

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from local_services import project_env, shipped_instance_config, stop_process_groups, wait_for  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Slow enough per image (about a second here) that a run can be caught mid-batch.
SLOW_DEFAULTS = {"resolution": 128, "num_inference_steps": 60, "strength": 0.5}

pytestmark = pytest.mark.timeout(900)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _aged_image(path: Path, **kwargs) -> Path:
    make_image(path, **kwargs)
    past = time.time() - 120
    os.utime(path, (past, past))  # settled: the sensor takes it on its first look
    return path


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("deployment")
    images = root / "images"
    for index, color in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
        _aged_image(images / f"start{index}.png", size=(96, 64), color=color)
    (root / "prompts.txt").write_text("a lighthouse\na forest\n")
    write_catalog(root / "models.yaml", models_dir, names=("tiny-sd15",), **SLOW_DEFAULTS)
    home = root / "home"
    home.mkdir()
    config = shipped_instance_config(PROJECT_ROOT, home)
    config["run_monitoring"]["poll_interval_seconds"] = 5
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, **project_env(root, home)}
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    logs = {name: open(root / f"{name}.log", "w") for name in ("webserver", "daemon")}
    processes = [
        subprocess.Popen(
            [str(BIN / "random-diffusion-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=logs["webserver"],
            stderr=subprocess.STDOUT,
            start_new_session=True,
        ),
        subprocess.Popen(
            [str(BIN / "random-diffusion"), "daemon", "-w", "workspace.yaml"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=logs["daemon"],
            stderr=subprocess.STDOUT,
            start_new_session=True,
        ),
    ]
    try:
        wait_for(lambda: _reachable(url), 180, "the webserver")
        yield {"url": url, "root": root, "images": images, "outputs": root / "outputs", "env": env}
    finally:
        stop_process_groups(processes)
        for log in logs.values():
            log.close()


def _reachable(url: str) -> bool:
    try:
        return requests.get(f"{url}/server_info", timeout=5).ok
    except requests.ConnectionError:
        return False


RUNS_QUERY = """
query { runsOrError { ... on Runs { results { runId status startTime endTime tags { key value } } } } }"""

PARTITION_METADATA_QUERY = """
query($partition: String!) {
  assetNodeOrError(assetKey: {path: ["diffused_image"]}) {
    ... on AssetNode {
      assetMaterializations(partitions: [$partition], limit: 1) {
        partition
        metadataEntries {
          label
          ... on TextMetadataEntry { text }
          ... on IntMetadataEntry { intValue }
          ... on FloatMetadataEntry { floatValue }
        }
      }
    }
  }
}"""


def _runs(url):
    return Deployment(url).query(RUNS_QUERY, {})["runsOrError"]["results"]


def _partition_metadata(url, key):
    node = Deployment(url).query(PARTITION_METADATA_QUERY, {"partition": key})["assetNodeOrError"]
    (event,) = node["assetMaterializations"]
    return {e["label"]: e.get("text", e.get("intValue", e.get("floatValue"))) for e in event["metadataEntries"]}


def _all_finished(url):
    runs = _runs(url)
    return runs and all(run["status"] in ("SUCCESS", "FAILURE", "CANCELED") for run in runs)


def test_sensor_registers_and_materializes_the_folder(deployment):
    url = deployment["url"]
    keys = wait_for(
        lambda: Deployment(url).partition_keys() == ["start0.png", "start1.png", "start2.png"],
        180,
        "the sensor to register images",
    )
    assert keys
    wait_for(lambda: all((deployment["outputs"] / f"start{i}.png.png").is_file() for i in range(3)), 300, "sensor runs")
    wait_for(lambda: _all_finished(url), 120, "runs to finish")
    assert {run["status"] for run in _runs(url)} == {"SUCCESS"}


def test_submit_wait_reports_outputs_and_metadata_over_graphql(deployment):
    url = deployment["url"]
    completed = subprocess.run(
        [
            str(BIN / "random-diffusion"),
            "submit",
            "--url",
            url,
            "--prompt",
            "cat dancing in rain",
            "--seed",
            "5",
            "--wait",
        ],
        env=deployment["env"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "Submitted run" in completed.stdout and ": SUCCESS" in completed.stdout
    for index in range(3):
        path = deployment["outputs"] / f"start{index}.png.png"
        assert str(path) in completed.stdout
        assert read_record(path).prompt == "cat dancing in rain" and read_record(path).run_seed == 5
    metadata = [_partition_metadata(url, f"start{i}.png") for i in range(3)]
    assert {m["prompt"] for m in metadata} == {"cat dancing in rain"}
    assert len({m["seed"] for m in metadata}) == 3 and all(m["inference_seconds"] > 0 for m in metadata)


STALE_QUERY = """
query($partitions: [String!]!) {
  prompts: assetNodeOrError(assetKey: {path: ["prompt_list"]}) { ... on AssetNode { staleStatus } }
  images: assetNodeOrError(assetKey: {path: ["diffused_image"]}) {
    ... on AssetNode { staleStatusByPartition(partitions: $partitions) }
  }
}"""


def test_editing_the_prompts_file_shows_results_as_stale_over_graphql(deployment):
    """After the submission above: the daemon's input_files_sensor sees the edit and refreshes prompt_list."""
    url, keys = deployment["url"], [f"start{i}.png" for i in range(3)]
    wait_for(lambda: _all_finished(url), 300, "earlier runs to finish")
    status = Deployment(url).query(STALE_QUERY, {"partitions": keys})
    assert status["images"]["staleStatusByPartition"] == ["FRESH"] * 3  # the submitted list is current
    (deployment["root"] / "prompts.txt").write_text("a lighthouse\na forest\na harbour at night\n")

    def refreshed_and_stale():
        status = Deployment(url).query(STALE_QUERY, {"partitions": keys})
        return (
            status["prompts"]["staleStatus"] == "FRESH" and status["images"]["staleStatusByPartition"] == ["STALE"] * 3
        )

    # input_files_sensor sees the edit and refreshes prompt_list (FRESH again): images from the old list are STALE.
    assert wait_for(lambda: _latest_list_is_from_file(url) and refreshed_and_stale(), 240, "the edit to show")

    # The asset-level signal, as the asset's overview and the graph show it: the check counts them and says why.
    def counted():
        execution = _up_to_date_check(url)
        return execution if execution and execution["status"] == "FAILED" else None

    execution = wait_for(counted, 120, "results_up_to_date to count the stale images")
    assert execution["evaluation"]["severity"] == "WARN"
    entries = {e["label"]: e.get("intValue", e.get("jsonString")) for e in execution["evaluation"]["metadataEntries"]}
    assert entries["out_of_date"] == 3 and json.loads(entries["out_of_date_keys"]) == sorted(keys)

    # The one redo action (catch_up_schedule > Preview tick result > Launch all & commit tick result) asks for
    # exactly those.
    dry_run = Deployment(url).query(SCHEDULE_DRY_RUN, {"selector": CATCH_UP_SELECTOR, "timestamp": time.time()})
    requests = dry_run["scheduleDryRun"]["evaluationResult"]["runRequests"]
    spans = [{t["key"]: t["value"] for t in r["tags"]} for r in requests]
    assert [(s[RANGE_START_TAG], s[RANGE_END_TAG]) for s in spans] == [(keys[0], keys[-1])]


CHECK_QUERY = """
query {
  assetNodeOrError(assetKey: {path: ["diffused_image"]}) { ... on AssetNode { assetChecksOrError { ... on AssetChecks {
    checks { name executionForLatestMaterialization { status evaluation { severity metadataEntries {
      label ... on IntMetadataEntry { intValue } ... on JsonMetadataEntry { jsonString } } } } }
  } } } }
}"""
CATCH_UP_SELECTOR = {
    "repositoryLocationName": "random_diffusion_dagster",
    "repositoryName": "__repository__",
    "scheduleName": "catch_up_schedule",
}
SCHEDULE_DRY_RUN = """
mutation($selector: ScheduleSelector!, $timestamp: Float) {
  scheduleDryRun(selectorData: $selector, timestamp: $timestamp) {
    ... on DryRunInstigationTick { evaluationResult { runRequests { tags { key value } } skipReason } }
    ... on PythonError { message }
  }
}"""


def _up_to_date_check(url):
    node = Deployment(url).query(CHECK_QUERY, {})["assetNodeOrError"]
    (check,) = [c for c in node["assetChecksOrError"]["checks"] if c["name"] == "results_up_to_date"]
    return check["executionForLatestMaterialization"]


def _latest_list_is_from_file(url):
    """Whether prompt_list was last materialized from the prompts file (the refresh), not a submission."""
    query = (
        "query($key: [String!]!) { assetNodeOrError(assetKey: {path: $key}) { ... on AssetNode { "
        "assetMaterializations(limit: 1) { metadataEntries { label ... on TextMetadataEntry { text } } } } } }"
    )
    node = Deployment(url).query(query, {"key": ["prompt_list"]})["assetNodeOrError"]
    entries = {e["label"]: e.get("text") for e in node["assetMaterializations"][0]["metadataEntries"]}
    return entries.get("source") == "file"


def test_submit_names_an_unreachable_webserver(deployment):
    completed = subprocess.run(
        [str(BIN / "random-diffusion"), "submit", "--url", f"http://127.0.0.1:{_free_port()}", "--prompt", "x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2 and "Cannot reach the Dagster webserver" in completed.stderr


def test_new_image_is_picked_up_by_the_daemon_sensor(deployment):
    _aged_image(deployment["images"] / "dropped.png", size=(64, 64), color=(90, 90, 0))
    wait_for(lambda: (deployment["outputs"] / "dropped.png.png").is_file(), 300, "the dropped image's result")
    wait_for(
        lambda: "dropped.png" in {e["partition"] for e in _materialized_partitions(deployment["url"])},
        120,
        "its materialization",
    )


def _materialized_partitions(url):
    query = (
        'query { assetNodeOrError(assetKey: {path: ["diffused_image"]}) '
        "{ ... on AssetNode { assetMaterializations(limit: 100) { partition } } } }"
    )
    return Deployment(url).query(query, {})["assetNodeOrError"]["assetMaterializations"]


LAUNCH_BACKFILL_MUTATION = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""


def test_a_backfill_from_the_ui_gets_its_run_within_seconds(deployment):
    """Dagster's own daemon looks for new backfills every 30 s; `random-diffusion daemon` every second. A backfill
    requested just after the daemon picked up the previous one would wait about 30 s for Dagster's next look."""
    url = deployment["url"]
    client = Deployment(url)

    def launch() -> str:
        params = {
            "partitionNames": ["start0.png"],
            "assetSelection": [{"path": ["image_draw"]}, {"path": ["diffused_image"]}],
        }
        result = client.query(LAUNCH_BACKFILL_MUTATION, {"params": params})["launchPartitionBackfill"]
        assert result["__typename"] == "LaunchBackfillSuccess", result
        return result["backfillId"]

    def runs_of(backfill_id: str) -> list[dict]:
        return [run for run in _runs(url) if {"key": "dagster/backfill", "value": backfill_id} in run["tags"]]

    first = launch()
    wait_for(lambda: runs_of(first), 120, "the first backfill's run", interval=0.5)
    requested = time.monotonic()
    second = launch()
    wait_for(lambda: runs_of(second), 120, "the second backfill's run", interval=0.5)
    assert time.monotonic() - requested < 15


def test_two_runs_never_overlap_on_the_gpu_pool(deployment):
    url = deployment["url"]
    wait_for(lambda: _all_finished(url), 300, "earlier runs to finish")
    deployment_client = Deployment(url)
    run_ids = deployment_client.submit(["a quiet harbour"], 11, None, max_per_run=2)
    assert len(run_ids) == 2
    for run_id in run_ids:
        assert deployment_client.wait(run_id, timeout=600) == "SUCCESS"
    spans = sorted((run["startTime"], run["endTime"]) for run in _runs(url) if run["runId"] in run_ids)
    assert spans[0][1] <= spans[1][0], spans


def test_the_daemon_console_shows_the_runs_log_lines_and_not_the_routine_ones(deployment):
    """`random-diffusion daemon` prints as `random-diffusion ui` does: the runs it launches print every Dagster event
    (a line per image) and the backfill loop, now every second, its summaries; neither reaches the console."""
    url = deployment["url"]
    wait_for(lambda: _all_finished(url), 300, "earlier runs to finish")
    client = Deployment(url)
    (run_id,) = client.submit(["a foggy pier"], 12, ["start0.png"])
    assert client.wait(run_id, timeout=600) == "SUCCESS"
    params = {
        "partitionNames": ["start0.png"],
        "assetSelection": [{"path": ["image_draw"]}, {"path": ["diffused_image"]}],
    }
    backfill = client.query(LAUNCH_BACKFILL_MUTATION, {"params": params})["launchPartitionBackfill"]["backfillId"]
    tag = {"key": "dagster/backfill", "value": backfill}
    wait_for(lambda: any(tag in run["tags"] for run in _runs(url)) and _all_finished(url), 300, "the backfill's run")
    # Its partition done for both assets (the run records the image's draw even where it did not change).
    wait_for(lambda: _backfill_status(url, backfill).startswith("COMPLETED"), 120, "the backfill to end")
    assert _backfill_status(url, backfill) == "COMPLETED_SUCCESS"
    console = (deployment["root"] / "daemon.log").read_text()
    assert f"{run_id} - diffused_image - " in console and "batch of 1 at" in console  # the run's own log lines
    assert " - DEBUG - " not in console and "STEP_START" not in console and "ASSET_MATERIALIZATION" not in console
    assert "Backfill iteration summary" not in console and "Checking for new runs for sensor" not in console
    assert [line for line in ROUTINE_DAEMON_LINES if line in console] == []
    assert "new_images_sensor - 3 new, 0 replaced, 0 removed images" in console  # the sensor's own line, named


BACKFILL_STATUS_QUERY = """
query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } } }"""


def _backfill_status(url: str, backfill_id: str) -> str:
    return Deployment(url).query(BACKFILL_STATUS_QUERY, {"id": backfill_id})["partitionBackfillOrError"]["status"]


RUN_LOGS_QUERY = """
query($runId: ID!) {
  logsForRun(runId: $runId) { ... on EventConnection { events { ... on MessageEvent { message } } } }
}"""


def _run_worker_pid(url: str, run_id: str) -> int | None:
    """The pid the code server reported when it started the run's process."""
    events = Deployment(url).query(RUN_LOGS_QUERY, {"runId": run_id})["logsForRun"]["events"]
    for event in events:
        match = re.search(r"Started process for run \(pid: (\d+)\)", event.get("message") or "")
        if match:
            return int(match.group(1))
    return None


def test_killed_run_is_marked_failed_and_retried_without_partial_files(deployment):
    url = deployment["url"]
    outputs = deployment["outputs"]
    wait_for(lambda: _all_finished(url), 300, "earlier runs to finish")
    client = Deployment(url)
    (run_id,) = client.submit(["a storm at sea"], 23, None)
    keys = client.partition_keys()

    def done_with_new_seed():
        return [k for k in keys if getattr(read_record(outputs / output_file_name(k)), "run_seed", None) == 23]

    wait_for(lambda: len(done_with_new_seed()) >= 1, 300, "the first image of the run", interval=0.1)
    assert len(done_with_new_seed()) < len(keys), "the run finished before it could be killed"
    worker = wait_for(lambda: _run_worker_pid(url, run_id), 30, "the run worker process", interval=0.2)
    for pid in [worker, *descendants(worker)]:
        os.kill(pid, signal.SIGKILL)

    wait_for(lambda: client.run_status(run_id) == "FAILURE", 120, "the killed run to be marked failed")
    retry = wait_for(
        lambda: [r for r in _runs(url) if {"key": "dagster/parent_run_id", "value": run_id} in r["tags"]],
        180,
        "a retry run",
    )[0]
    assert client.wait(retry["runId"], timeout=600) == "SUCCESS"
    assert sorted(done_with_new_seed()) == sorted(keys)
    assert not [p for p in outputs.iterdir() if p.name.endswith(".tmp")]


def test_a_killed_cli_run_frees_the_gpu_pool_for_the_next_run(deployment):
    """`random-diffusion run` executes its runs in its own process: killed with -9 mid-run, its run must not hold
    the gpu pool, or every run queued after it waits for good."""
    url = deployment["url"]
    wait_for(lambda: _all_finished(url), 300, "earlier runs to finish")
    log = open(deployment["root"] / "killed-cli.log", "w")
    cli = subprocess.Popen(
        [str(BIN / "random-diffusion"), "run", "--seed", "31"],
        cwd=PROJECT_ROOT,
        env=deployment["env"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def cli_run():
        tagged = [r for r in _runs(url) if any(t["key"] == PROCESS_TAG for t in r["tags"])]
        ranged = [r for r in tagged if any(t["key"] == RANGE_START_TAG for t in r["tags"])]
        return ranged[0] if ranged and ranged[0]["status"] == "STARTED" else None

    try:
        killed = wait_for(cli_run, 300, "the CLI's diffusion run to start", interval=0.2)
    finally:
        os.killpg(cli.pid, signal.SIGKILL)
        cli.wait()
        log.close()
    client = Deployment(url)
    (run_id,) = client.submit(["a harbour at noon"], 32, ["start1.png"])
    assert client.wait(run_id, timeout=300) == "SUCCESS"
    assert client.run_status(killed["runId"]) == "FAILURE"
    assert f"Run {killed['runId']}: its process is gone" in (deployment["root"] / "daemon.log").read_text()


STEP_FAILURES_QUERY = """
query($runId: ID!) {
  logsForRun(runId: $runId) {
    ... on EventConnection { events { ... on ExecutionStepFailureEvent { error { message } } } }
  }
}"""


def test_a_run_whose_image_fails_is_not_retried(deployment):
    """A truncated PNG (its header passes the sensor's probe; its pixels cannot be decoded) fails the same way every
    time: its run fails, naming it, and run retries (which the killed run above gets) leave it alone
    (`retry_on_asset_or_op_failure: false`)."""
    url = deployment["url"]
    whole = make_image(deployment["root"] / "whole.png", size=(96, 64))
    broken = deployment["images"] / "broken.png"
    broken.write_bytes(whole.read_bytes()[:200])
    past = time.time() - 120
    os.utime(broken, (past, past))
    try:

        def failed_run():
            runs = [r for r in _runs(url) if {"key": RANGE_START_TAG, "value": "broken.png"} in r["tags"]]
            return runs[0] if runs and runs[0]["status"] == "FAILURE" else None

        run = wait_for(failed_run, 480, "the broken image's run to fail", interval=0.5)
        time.sleep(15)  # the retry daemon starts the killed run's retry within seconds
        retries = [r for r in _runs(url) if {"key": "dagster/parent_run_id", "value": run["runId"]} in r["tags"]]
        assert retries == []
        events = Deployment(url).query(STEP_FAILURES_QUERY, {"runId": run["runId"]})["logsForRun"]["events"]
        (message,) = [event["error"]["message"] for event in events if event]
        assert "Failure: 1 of 1 images failed:\n- broken.png: " in message and "finished" not in message
    finally:
        broken.unlink()
