"""The sensor and the catch-up schedule, evaluated against a real instance."""

import datetime
import json
import math
import os
import time
from pathlib import Path

import dagster as dg

from random_diffusion_dagster.defs.automation.catch_up_schedule import catch_up_schedule
from random_diffusion_dagster.defs.automation.new_images_sensor import SETTLE_SECONDS, decide, new_images_sensor
from random_diffusion_dagster.defs.checks import results_up_to_date
from random_diffusion_dagster.defs.resources import DatasetResource
from random_diffusion_dagster.defs.run_ranges import RANGE_END_TAG, RANGE_START_TAG
from random_diffusion_dagster.engine.images import SourceFile, partition_key_for
from random_diffusion_dagster.settings import max_partitions_per_run

from helpers import make_image, result_file
from local_services import apply_partition_requests
from test_assets import ALL_ASSETS, _diffuse_all, _resources


def _age(path: Path, seconds: float = SETTLE_SECONDS + 5) -> None:
    """Make a file look like it was written a while ago (settled)."""
    past = time.time() - seconds
    os.utime(path, (past, past))


def _tick(instance, project, cursor=None):
    """Evaluate the sensor once and apply its partition requests, as the daemon does."""
    resources = {"dataset": DatasetResource(**project)}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = new_images_sensor(context)
    apply_partition_requests(instance, result)
    return result


def _ranges(result):
    return [
        (r.tags.get(RANGE_START_TAG), r.tags.get(RANGE_END_TAG))
        for r in result.run_requests
        if RANGE_START_TAG in r.tags
    ]


def test_sensor_adds_settled_images_in_one_ranged_run_and_skips_non_images(instance, project):
    images = Path(project["images_dir"])
    (images / "notes.png").write_text("plain text with an image extension")
    make_image(images / "photo-without-extension")
    for path in images.iterdir():
        _age(path)
    result = _tick(instance, project)
    expected = sorted(partition_key_for(p.name) for p in images.iterdir() if p.name != "notes.png")
    assert instance.get_dynamic_partitions("images") == expected
    assert _ranges(result) == [(expected[0], expected[-1])]
    again = _tick(instance, project, result.cursor)
    assert again.run_requests == [] and again.dynamic_partitions_requests == []


def test_half_written_file_waits_until_its_size_settles(instance, project):
    images = Path(project["images_dir"])
    for path in images.iterdir():
        _age(path)
    cursor = _tick(instance, project).cursor
    growing = images / "upload.png"
    growing.write_bytes(make_image(images / "tmp.bin").read_bytes()[:40])
    (images / "tmp.bin").unlink()
    first = _tick(instance, project, cursor)
    assert first.run_requests == [] and "upload.png" not in instance.get_dynamic_partitions("images")
    make_image(growing)  # the copy finishes: the size changes again
    second = _tick(instance, project, first.cursor)
    assert second.run_requests == []
    third = _tick(instance, project, second.cursor)  # unchanged since the last tick: settled
    assert _ranges(third) == [("upload.png", "upload.png")]


def test_replaced_file_runs_again_and_deleted_file_loses_its_partition(instance, project):
    images = Path(project["images_dir"])
    for path in images.iterdir():
        _age(path)
    cursor = _tick(instance, project).cursor
    make_image(images / "red.png", color=(10, 10, 10))
    _age(images / "red.png", SETTLE_SECONDS + 1)
    (images / "blue.webp").unlink()
    result = _tick(instance, project, cursor)
    assert [r.partition_key for r in result.run_requests] == ["red.png"]
    assert "blue.webp" not in instance.get_dynamic_partitions("images")
    assert "red.png" in instance.get_dynamic_partitions("images")


def test_ten_thousand_files_tick_fast_and_arrive_as_few_batched_runs(instance, tmp_path):
    images = tmp_path / "many"
    images.mkdir()
    payload = make_image(tmp_path / "seed.png", size=(8, 8)).read_bytes()
    for index in range(10_000):
        (images / f"img{index:05d}.png").write_bytes(payload)
        _age(images / f"img{index:05d}.png")
    project = {"images_dir": str(images), "output_dir": str(tmp_path / "out")}
    started = time.perf_counter()
    result = _tick(instance, project)
    first_tick = time.perf_counter() - started
    started = time.perf_counter()
    again = _tick(instance, project, result.cursor)
    quiet_tick = time.perf_counter() - started
    assert len(instance.get_dynamic_partitions("images")) == 10_000
    assert len(result.run_requests) == math.ceil(10_000 / max_partitions_per_run())  # 79 with the default 128
    assert again.run_requests == []
    assert first_tick < 30 and quiet_tick < 5, (first_tick, quiet_tick)
    assert len(json.dumps(json.loads(again.cursor))) < 600_000


def _schedule_requests(instance, project, **dataset):
    with dg.build_schedule_context(
        instance=instance,
        resources={"dataset": DatasetResource(**{**project, **dataset})},
        scheduled_execution_time=datetime.datetime(2026, 1, 1, 3, tzinfo=datetime.timezone.utc),
    ) as context:
        result = catch_up_schedule(context)
    return result if isinstance(result, dg.SkipReason) else list(result)


def test_catch_up_requests_missing_and_stale_partitions_only(instance, project):
    keys, result = _diffuse_all(instance, project)
    assert result.success
    assert isinstance(_schedule_requests(instance, project), dg.SkipReason)

    result_file(project["images_dir"], project["output_dir"], keys[0]).unlink()  # a result lost on disk
    (requests,) = _schedule_requests(instance, project)
    assert (requests.tags[RANGE_START_TAG], requests.tags[RANGE_END_TAG]) == (keys[0], keys[0])

    # A new seed makes every result stale: one ranged run over all of them.
    (requests,) = _schedule_requests(instance, project, seed=3)
    assert (requests.tags[RANGE_START_TAG], requests.tags[RANGE_END_TAG]) == (keys[0], keys[-1])


def test_catch_up_ignores_a_touched_but_identical_source(instance, project):
    _diffuse_all(instance, project)
    for path in Path(project["images_dir"]).iterdir():
        _age(path, 1000)
    assert isinstance(_schedule_requests(instance, project), dg.SkipReason)


def _file(name: str, size: int, mtime_s: int, ctime_s: int) -> SourceFile:
    return SourceFile(name=name, path=f"/images/{name}", size=size, mtime_ns=mtime_s * 10**9, ctime_ns=ctime_s * 10**9)


def test_the_sensor_decision_settles_adds_replaces_skips_and_removes_from_its_inputs_alone():
    """`decide` is the sensor without Dagster or a folder: the same inputs give the same decision."""
    now = 10_000 * 10**9
    fresh = _file("fresh.png", 10, 9_990, 9_990)  # written 10 s ago: still settling
    old = _file("old.png", 20, 1_000, 1_000)
    broken = _file("broken.png", 5, 1_000, 1_000)
    unreadable = {"broken.png": "not an image"}.get
    first = decide({}, [], [fresh, old, broken], now, lambda f: unreadable(f.name))
    assert (first.new_keys, first.skipped, first.gone) == (["old.png"], {"broken.png": "not an image"}, [])
    assert first.cursor["waiting"] == {"fresh.png": "10:9990000000000"} and first.kept == ["old.png"]

    # Next tick: the settling file did not change, so it is complete; `old.png` was replaced (its ctime moved);
    # a partition whose file is gone is deleted.
    replaced = _file("old.png", 21, 1_000, 10_010)
    second = decide(first.cursor, ["old.png", "lost.png"], [fresh, replaced], now + 30 * 10**9, lambda f: None)
    assert second.new_keys == ["fresh.png"] and second.replaced == {"old.png": "/images/old.png"}
    assert second.gone == ["lost.png"] and second.kept == ["old.png", "fresh.png"]
    assert second.signatures == {"fresh.png": "10:9990000000000", "old.png": "21:1000000000000"}

    # A third tick over the same files changes nothing.
    third = decide(second.cursor, second.kept, [fresh, replaced], now + 60 * 10**9, lambda f: None)
    assert (third.new_keys, third.replaced, third.gone, third.skipped) == ([], {}, [], {})


def test_a_run_whose_images_all_failed_refreshes_the_report_and_the_up_to_date_check(instance, project):
    """A run that made nothing updates no asset, yet the report's failures changed and the check it carried was
    left unevaluated ("Execution failed"): report_automation_sensor's conditions ask for both again."""
    from random_diffusion_dagster.definitions import defs

    definitions = [*ALL_ASSETS, results_up_to_date]
    refresh = dg.AssetSelection.assets("diffusion_report") | dg.AssetSelection.checks(results_up_to_date)

    def fail(name: str) -> None:
        """A run over one image that cannot be decoded, with the check, as the sensor's runs carry it."""
        bad = make_image(Path(project["images_dir"]) / name)
        bad.write_bytes(bad.read_bytes()[:70])
        instance.add_dynamic_partitions("images", [name])
        run = dg.AssetSelection.assets("prompt_list", "model_catalog", "image_draw", "diffused_image")
        selection = run | dg.AssetSelection.checks(results_up_to_date)
        resources, named = _resources(project), {"partition_key": name, "raise_on_error": False}
        failed = dg.materialize(definitions, selection=selection, instance=instance, resources=resources, **named)
        assert not failed.success

    def tick(cursor) -> tuple[dict, object]:
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        return {r.key: r.true_subset.size for r in result.results if r.true_subset.size}, result.cursor

    _diffuse_all(instance, project)
    _requested, cursor = tick(None)
    requested, cursor = tick(cursor)
    assert requested == {}  # nothing new since
    fail("bad.png")
    requested, cursor = tick(cursor)
    assert requested == {dg.AssetKey("diffusion_report"): 1, results_up_to_date.check_key: 1}
    # The requested refresh runs; the failed image stays failed: nothing more is asked for.
    assert dg.materialize(definitions, selection=refresh, instance=instance, resources=_resources(project)).success
    requested, cursor = tick(cursor)
    assert requested == {}  # asked once, not on every tick while the image stays failed
