"""Faults during a run: Dagster's record and the disk agree, and every failure is named."""

import concurrent.futures
import datetime
import errno
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from random_diffusion_dagster.defs.automation.catch_up_schedule import catch_up_schedule
from random_diffusion_dagster.defs.resources import DatasetResource, DiffusionEngineResource
from random_diffusion_dagster.engine.catalog import load_catalog
from random_diffusion_dagster.engine.images import scan_folder
from random_diffusion_dagster.engine.output_location import OutputLocationError, _locked_temporary, write_bytes_atomic
from random_diffusion_dagster.engine.pipelines import PipelineCache
from random_diffusion_dagster.engine.plan import Planner
from random_diffusion_dagster.engine.report import build_report
from random_diffusion_dagster.engine.results import output_file_name
from random_diffusion_dagster.engine.runner import run_tasks

from helpers import make_image, result_file
from test_assets import ALL_ASSETS, _diffuse_all

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _truncate(path: Path) -> None:
    """A PNG cut after its header: registered as an image, fails to decode in the run."""
    make_image(path)
    path.write_bytes(path.read_bytes()[:60])


def test_a_run_with_one_failure_records_every_finished_partition(instance, project):
    _truncate(Path(project["images_dir"]) / "broken.png")
    keys, result = _diffuse_all(instance, project)
    assert not result.success
    assert "broken.png" in str(result.failure_data_for_node("diffused_image").user_failure_data.description)
    finished = set(keys) - {"broken.png"}
    assert instance.get_materialized_partitions(dg.AssetKey("diffused_image")) == finished
    for key in finished:
        record = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("diffused_image"), asset_partitions=[key]), limit=1
        ).records[0]
        metadata = record.asset_materialization.metadata
        assert metadata["output_path"].value == str(result_file(project["images_dir"], project["output_dir"], key))
        assert "prompt" in metadata and "inference_seconds" in metadata


def test_the_schedule_repairs_results_on_disk_that_dagster_never_recorded(instance, project):
    keys, result = _diffuse_all(instance, project)
    assert result.success
    instance.wipe_all_schedules()
    with dg.instance_for_test() as fresh:  # same disk, a Dagster history that lost the run
        fresh.add_dynamic_partitions("images", keys)
        with dg.build_schedule_context(
            instance=fresh,
            resources={"dataset": DatasetResource(**project)},
            scheduled_execution_time=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
        ) as context:
            requests = catch_up_schedule(context)
        assert [
            (r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"])
            for r in requests
        ] == [(keys[0], keys[-1])]


def _tasks(project):
    planner = Planner(["a fox"], load_catalog(project["models_file"]), 0, project["output_dir"])
    tasks, _ = planner.plan(scan_folder(project["images_dir"]))
    return tasks


def test_a_source_replaced_or_deleted_after_planning_fails_by_name_and_others_finish(project):
    tasks = _tasks(project)
    images = Path(project["images_dir"])
    make_image(images / "red.png", color=(0, 0, 0))  # other content, same name
    (images / "blue.webp").unlink()
    results = {r.task.key: r for r in run_tasks(tasks, PipelineCache(device="cpu"), log=lambda m: None).results}
    assert results["red.png"].status == "failed" and "changed after this run planned it" in results["red.png"].error
    assert results["blue.webp"].status == "failed" and "could not be read during the run" in results["blue.webp"].error
    others = [r for k, r in results.items() if k not in ("red.png", "blue.webp")]
    assert others and all(r.status == "generated" for r in others)


def test_an_interrupt_while_a_batch_is_logged_counts_its_written_images_as_finished(project):
    """Ctrl-C can land after a PNG is on disk but before its batch's log line returns; the caller records from
    `finished`, so every image on disk must be in it (a CI run recorded none of one written image)."""
    outputs = Path(project["output_dir"])

    def interrupt_once_an_image_is_on_disk(line: str) -> None:
        deadline = time.monotonic() + 30
        while not list(outputs.glob("*.png")) and time.monotonic() < deadline:
            time.sleep(0.05)
        raise KeyboardInterrupt

    finished: list = []
    with pytest.raises(KeyboardInterrupt):
        run_tasks(
            _tasks(project),
            PipelineCache(device="cpu"),
            log=interrupt_once_an_image_is_on_disk,
            finished=finished.extend,
        )
    written = {path.name for path in outputs.glob("*.png")}
    assert written  # the first batch's; the run stopped there
    assert {output_file_name(r.task.source_file) for r in finished if r.status != "failed"} == written


def test_an_output_location_that_is_a_file_fails_before_any_model_loads(project, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    tasks = _tasks({**project, "output_dir": str(blocker)})
    cache = PipelineCache(device="cpu")
    with pytest.raises(OutputLocationError, match="is a file, not a folder.*RANDOM_DIFFUSION_OUTPUT_DIR"):
        run_tasks(tasks, cache, log=lambda m: None)
    assert cache.loads == 0


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from random_diffusion_dagster.engine.output_location import _locked_temporary
fd, _ = _locked_temporary(Path(sys.argv[1]))
os.write(fd, b"half a PNG")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_write_killed_midway_leaves_no_temporary_file_once_its_file_is_written_again(tmp_path):
    """`kill -9` between the temporary file and the rename (a killed run) leaves that file behind; the retry's write
    of the same result takes it over, so a retried run leaves the output folder as a finished one would."""
    target = tmp_path / "coffee.png"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], cwd=PROJECT_ROOT)
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in tmp_path.iterdir()] == [".coffee.png.tmp"]

    write_bytes_atomic(target, b"the whole image")
    assert [p.name for p in tmp_path.iterdir()] == ["coffee.png"]
    assert target.read_bytes() == b"the whole image"


def test_another_users_leftover_temporary_file_is_left_alone_and_the_write_still_lands(tmp_path):
    """In a folder a team shares, `.<name>.tmp` left by another user's killed run is theirs: not written into (its
    mode may not be ours to set), not deleted; this write takes a name of its own and lands whole."""
    target, theirs = tmp_path / "coffee.png", tmp_path / ".coffee.png.tmp"
    theirs.write_bytes(b"half of their image")
    os.chown(theirs, 65534, 65534)  # nobody's (the tests run as root, who may give a file away)
    write_bytes_atomic(target, b"the whole image")
    assert target.read_bytes() == b"the whole image"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".coffee.png.tmp", "coffee.png"]
    assert theirs.read_bytes() == b"half of their image" and theirs.stat().st_uid == 65534


@pytest.mark.parametrize("kind", ["link to a file of the user's", "folder", "pipe"])
def test_something_else_under_the_temporary_name_is_never_written_through(tmp_path, kind):
    """What stands at `.<name>.tmp` and is no writer's leftover is left as it is: a link is not followed (its file
    would be overwritten), a pipe is not waited on; the write takes a name of its own and lands whole."""
    target, there = tmp_path / "out" / "coffee.png", tmp_path / "out" / ".coffee.png.tmp"
    there.parent.mkdir()
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's own")
    if kind == "folder":
        there.mkdir()
    elif kind == "pipe":
        os.mkfifo(there)
    else:
        there.symlink_to(precious)
    write_bytes_atomic(target, b"the whole image")
    assert target.read_bytes() == b"the whole image" and precious.read_text() == "the user's own"
    assert sorted(p.name for p in there.parent.iterdir()) == [".coffee.png.tmp", "coffee.png"]


def test_a_write_whose_folder_was_removed_fails_naming_it_instead_of_waiting(tmp_path):
    """The output folder deleted mid-run (between the writer's mkdir and its open): the write fails with the missing
    path, as any write would, and does not retry the name for ever."""
    outcome = []

    def write():
        try:
            _locked_temporary(tmp_path / "removed" / "coffee.png")
        except OSError as exc:
            outcome.append(exc)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    writer.join(timeout=10)
    assert not writer.is_alive(), "the writer is still retrying"
    (error,) = outcome
    assert isinstance(error, FileNotFoundError) and "removed" in str(error)


def test_a_file_system_without_locks_still_takes_whole_writes(tmp_path, monkeypatch):
    """Some network and FUSE file systems refuse `flock` (ENOLCK); no such mount exists here, so flock is made to
    refuse. The write takes a name no other writer takes and lands whole, leaving nothing beside it."""

    def refuse(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)
    target = tmp_path / "coffee.png"
    write_bytes_atomic(target, b"the whole image")
    assert target.read_bytes() == b"the whole image"
    assert [p.name for p in tmp_path.iterdir()] == ["coffee.png"]


def test_writers_of_one_file_take_turns_and_readers_see_only_whole_files(tmp_path):
    target = tmp_path / "report.csv"
    payloads = [bytes([n]) * 200_000 for n in range(6)]
    write_bytes_atomic(target, payloads[0])
    seen, stop = set(), threading.Event()

    def read():
        while not stop.is_set():
            seen.add(target.read_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda payload: [write_bytes_atomic(target, payload) for _ in range(20)], payloads))
    finally:
        stop.set()
        reader.join()
    assert seen <= set(payloads)
    assert target.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["report.csv"]


def test_the_report_works_when_every_image_failed(project):
    report = build_report(project["output_dir"], {"a.png": "a.png", "b.png": None}, project["images_dir"])
    assert report.image_count == 0 and report.failure_count == 2 and report.contact_sheet is None
    assert list(report.summary["failures"]) == [2]
    assert list(report.summary["model"]) == ["(not run)"]  # neither image reached a model


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("RANDOM_DIFFUSION_SEED", "abc", "RANDOM_DIFFUSION_SEED='abc' is not a whole number"),
        ("RANDOM_DIFFUSION_TORCH_THREADS", "-1", "RANDOM_DIFFUSION_TORCH_THREADS=-1 is below 1"),
        ("RANDOM_DIFFUSION_MAX_PARTITIONS_PER_RUN", "0", "RANDOM_DIFFUSION_MAX_PARTITIONS_PER_RUN=0 is below 1"),
        ("RANDOM_DIFFUSION_SENSOR_INTERVAL_SECONDS", "1", "RANDOM_DIFFUSION_SENSOR_INTERVAL_SECONDS=1 is below 5"),
        ("RANDOM_DIFFUSION_CATCH_UP_CRON", "nightly", "CATCH_UP_CRON='nightly' is not a cron schedule"),
    ],
)
def test_a_bad_environment_variable_names_itself_when_definitions_load(variable, value, message):
    code = "import random_diffusion_dagster.definitions as d; d.defs.resources['dataset']; d.defs.resources['engine']"
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            code
            + "; from random_diffusion_dagster.defs.resources import *; DatasetResource(); DiffusionEngineResource()",
        ],
        env={"PATH": "", variable: value},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert completed.returncode != 0 and message in completed.stderr, completed.stderr[-2000:]


def test_a_panorama_comes_out_at_its_own_aspect_ratio(project, tmp_path):
    images = tmp_path / "panorama"
    make_image(images / "wide.png", size=(600, 100))
    tasks = _tasks({**project, "images_dir": str(images)})
    (result,) = run_tasks(tasks, PipelineCache(device="cpu"), log=lambda m: None).results
    width, height = (int(side) for side in result.record.output_size.split("x"))
    assert abs(width / height - 6.0) / 6.0 < 0.02, result.record.output_size


def test_a_symlink_loop_in_the_folder_does_not_stop_source_images(instance, project):
    images = Path(project["images_dir"])
    (images / "loop.png").symlink_to(images / "loop.png")
    from test_assets import _materialize

    result = _materialize(instance, project, ["source_images"])
    assert result.success and len(instance.get_dynamic_partitions("images")) == 3
    table = result.asset_materializations_for_node("source_images")[0].metadata["skipped_files"].value
    skipped = {record.data["name"]: record.data["reason"] for record in table.records}
    assert "symlink loop" in skipped["loop.png"]


@pytest.mark.parametrize("command", ["daemon", "ui"])
def test_a_bad_backfill_interval_stops_the_daemon_before_it_starts_naming_the_variable(command):
    completed = subprocess.run(
        [sys.executable, "-m", "random_diffusion_dagster.runtime.cli", command],
        env={**os.environ, "RANDOM_DIFFUSION_BACKFILL_INTERVAL_SECONDS": "0"},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert completed.stderr == (
        f"random-diffusion {command}: error: RANDOM_DIFFUSION_BACKFILL_INTERVAL_SECONDS=0 is below 1: "
        "set it to 1 or more, or unset it.\n"
    )


def test_a_partition_added_by_hand_for_a_missing_file_fails_naming_it(project):
    """The UI's "Add a partition" takes any name; a run of one that names no file fails at once, saying which and
    why, and the other images are untouched (no retry: the instance retries only runs whose process died)."""
    resources = {"dataset": DatasetResource(**project), "engine": DiffusionEngineResource(device="cpu")}
    with dg.instance_for_test() as instance:
        dg.materialize(ALL_ASSETS, selection=["source_images"], instance=instance, resources=resources)
        instance.add_dynamic_partitions("images", ["holiday-photo.jpg"])
        run = dg.materialize(
            ALL_ASSETS,
            selection=["prompt_list", "model_catalog", "image_draw", "diffused_image"],
            instance=instance,
            resources=resources,
            partition_key="holiday-photo.jpg",
            raise_on_error=False,
        )
    assert not run.success
    (failure,) = [event.step_failure_data.error for event in run.all_events if event.is_step_failure]
    assert failure.message.splitlines()[0].endswith(": 1 of 1 images failed:")  # no "the 0 finished are saved"
    assert failure.message.splitlines()[1] == (
        f"- holiday-photo.jpg: partition 'holiday-photo.jpg' has no source file in {project['images_dir']} any more"
    )
    assert not Path(project["output_dir"]).exists() or not list(Path(project["output_dir"]).glob("*.png"))
