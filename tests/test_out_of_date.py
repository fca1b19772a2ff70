"""Out of date in plain sight: check `results_up_to_date` counts the made images whose inputs changed and says why,
and the catch-up (by hand, on change or nightly) asks for exactly those.

Real instances, real materializations of the tiny pipelines, real files; the sensor and schedule are evaluated as
the daemon evaluates them and their run requests executed in process. tests/test_deployment.py reads the same
check over GraphQL from a real webserver and daemon.
"""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from test_automation import _schedule_requests
from test_staleness import ASSETS, _resources, _schedule_keys, _tick_input_files

from random_diffusion_dagster.defs.automation.input_files_sensor import input_files_sensor
from random_diffusion_dagster.defs.checks import results_readable_on_disk, results_up_to_date
from random_diffusion_dagster.defs.out_of_date import ESTIMATE_TAG
from random_diffusion_dagster.defs.resources import DatasetResource
from random_diffusion_dagster.defs.run_ranges import RANGE_END_TAG, RANGE_START_TAG, partition_range_tags
from random_diffusion_dagster.engine.results import read_record
from random_diffusion_dagster.settings import SettingError, catch_up_setting

from helpers import make_image, result_file

DEFINITIONS = [*ASSETS, results_readable_on_disk, results_up_to_date]
IMAGES_RUN = dg.AssetSelection.assets("prompt_list", "model_catalog", "image_draw", "diffused_image")


def _materialize(instance, project, selection, keys=None):
    """A run as the daemon launches it: the selected assets with their checks, over a range of partitions."""
    tags = partition_range_tags(keys[0], keys[-1]) if keys else {}
    result = dg.materialize(
        DEFINITIONS, selection=selection, instance=instance, resources=_resources(project), tags=tags
    )
    assert result.success
    return result


def _latest(instance) -> dg.AssetCheckEvaluation:
    record = instance.get_latest_asset_check_evaluation_record(results_up_to_date.check_key)
    return record.event.dagster_event.asset_check_evaluation_data


def _refresh_run(instance, project, request):
    """What the daemon launches for input_files_sensor's request: job refresh_inputs, its assets and the check."""
    assert request.job_name == "refresh_inputs"
    assert request.asset_check_keys == [results_up_to_date.check_key]
    selection = dg.AssetSelection.assets(*request.asset_selection) | dg.AssetSelection.checks(results_up_to_date)
    _materialize(instance, project, selection)


def _requested_keys(instance, requests) -> set[str]:
    keys = instance.get_dynamic_partitions("images")
    spans = [(keys.index(r.tags[RANGE_START_TAG]), keys.index(r.tags[RANGE_END_TAG])) for r in requests]
    return {keys[i] for first, last in spans for i in range(first, last + 1)}


@pytest.fixture
def made(instance, project):
    """Every image made once, the check carried by that run, and the input files' sensor primed."""
    _materialize(instance, project, dg.AssetSelection.assets("source_images"))
    keys = instance.get_dynamic_partitions("images")
    _materialize(instance, project, IMAGES_RUN, keys)
    evaluation = _latest(instance)
    assert evaluation.passed and evaluation.metadata["out_of_date"].value == 0
    return keys, _tick_input_files(instance, project)


def _sensor_tick(instance, project, cursor):
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"dataset": DatasetResource(**project)}
    ) as context:
        return input_files_sensor(context)


def test_a_prompts_edit_is_counted_by_the_check_and_the_catch_up_asks_for_exactly_those(instance, project, made):
    keys, cursor = made
    with open(project["prompts_file"], "a") as prompts:
        prompts.write("a harbour at dusk\n")
    result = _sensor_tick(instance, project, cursor)
    (request,) = result.run_requests  # nightly (the default): nothing is redone yet
    _refresh_run(instance, project, request)

    evaluation = _latest(instance)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    stale = set(evaluation.metadata["out_of_date_keys"].value)
    assert evaluation.metadata["out_of_date"].value == len(stale) and evaluation.metadata["images"].value == 3
    # A fourth prompt redraws every image: most get another prompt; any that kept theirs is current.
    assert stale and stale <= set(keys)
    assert f"| prompt changed | {len(stale)} |" in evaluation.metadata["why"].value
    assert all(f"- {key}: prompt changed" in evaluation.metadata["partitions"].value for key in stale)
    assert "Preview tick result" in evaluation.metadata["redo"].value
    assert evaluation.description.startswith(
        f"{len(stale)} of 3 images are out of date (prompt changed: {len(stale)}),"
    )

    # One of them redone: the run's check says so at once, re-reading only what it listed and what the run made.
    first, *rest = [k for k in keys if k in stale]
    _materialize(instance, project, IMAGES_RUN, [first])
    evaluation = _latest(instance)
    assert evaluation.metadata["out_of_date"].value == len(rest) and evaluation.passed == (not rest)
    assert evaluation.metadata["images"].value == 3  # of every image, not of those re-read
    assert set(evaluation.metadata["out_of_date_keys"].value if rest else []) == set(rest)

    # The redo path: catch_up_schedule's ranged runs redo exactly the rest; a current image inside a range is reused.
    before = {k: _result_bytes(project, k) for k in keys}
    covered = _schedule_keys(instance, project)
    assert set(rest) <= covered
    for request_keys in _ranges(instance, covered):
        _materialize(instance, project, IMAGES_RUN, request_keys)
    assert {k for k in keys if _result_bytes(project, k) != before[k]} == set(rest)
    assert _latest(instance).passed


def _result_bytes(project, key) -> bytes:
    return result_file(project["images_dir"], project["output_dir"], key).read_bytes()


def _ranges(instance, covered: set[str]) -> list[list[str]]:
    """The consecutive runs of `covered` partitions, as the schedule's ranged requests span them."""
    ranges, current = [], []
    for key in instance.get_dynamic_partitions("images"):
        if key in covered:
            current.append(key)
        elif current:
            ranges, current = [*ranges, current], []
    return [*ranges, current] if current else ranges


def test_a_catalog_edit_is_counted_as_a_catalog_change(instance, project, made):
    keys, cursor = made
    catalog = yaml.safe_load(open(project["models_file"]))
    catalog["defaults"]["num_inference_steps"] += 1
    with open(project["models_file"], "w") as handle:
        yaml.safe_dump(catalog, handle)
    (request,) = _sensor_tick(instance, project, cursor).run_requests
    _refresh_run(instance, project, request)
    evaluation = _latest(instance)
    assert evaluation.metadata["out_of_date"].value == 3
    assert "| model catalog changed | 3 |" in evaluation.metadata["why"].value


def test_on_change_the_sensor_also_asks_for_the_runs_that_redo_them(instance, project, made, monkeypatch):
    keys, cursor = made
    monkeypatch.setenv("RANDOM_DIFFUSION_CATCH_UP", "on-change")
    catalog = yaml.safe_load(open(project["models_file"]))
    catalog["defaults"]["strength"] = 0.6
    with open(project["models_file"], "w") as handle:
        yaml.safe_dump(catalog, handle)
    refresh, *catch_up = _sensor_tick(instance, project, cursor).run_requests
    assert refresh.job_name == "refresh_inputs"
    assert {r.job_name for r in catch_up} == {"diffuse_images"}
    assert _requested_keys(instance, catch_up) == set(keys)
    for request in catch_up:  # run them as the daemon would: afterwards nothing is out of date
        _materialize(instance, project, IMAGES_RUN, [request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG]])
    assert _latest(instance).passed


def test_a_made_image_whose_result_is_gone_is_out_of_date_and_a_never_made_one_is_not(instance, project, made):
    keys, _cursor = made
    result_file(project["images_dir"], project["output_dir"], keys[0]).unlink()
    make_image(Path(project["images_dir"]) / "late.png", color=(9, 9, 9))
    _materialize(instance, project, dg.AssetSelection.assets("source_images"))  # registered, never made
    _materialize(instance, project, dg.AssetSelection.checks(results_up_to_date))  # the check on its own
    evaluation = _latest(instance)
    assert evaluation.metadata["out_of_date_keys"].value == [keys[0]]
    assert evaluation.metadata["images"].value == 4


def test_the_catch_up_setting_names_its_choices_and_off_stops_the_schedule(monkeypatch):
    monkeypatch.setenv("RANDOM_DIFFUSION_CATCH_UP", "hourly")
    with pytest.raises(
        SettingError, match="RANDOM_DIFFUSION_CATCH_UP='hourly': set it to nightly .*, on-change or off"
    ):
        catch_up_setting()
    status = (
        "from random_diffusion_dagster.definitions import defs; "
        "print(defs.resolve_schedule_def('catch_up_schedule').default_status.value)"
    )
    for setting, expected in (("off", "STOPPED"), ("on-change", "RUNNING"), ("", "RUNNING")):
        env = {**os.environ, "RANDOM_DIFFUSION_CATCH_UP": setting}
        shown = subprocess.run([sys.executable, "-c", status], env=env, capture_output=True, text=True, check=True)
        assert shown.stdout.strip() == expected, setting


def test_an_unusable_prompts_file_makes_the_check_warn_by_name_and_fails_no_run(instance, project, made):
    open(project["prompts_file"], "w").write("# only a comment\n")
    _materialize(instance, project, dg.AssetSelection.checks(results_up_to_date))
    evaluation = _latest(instance)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert project["prompts_file"] in evaluation.metadata["error"].value


def test_an_edit_shows_its_cost_before_anything_runs_and_the_catch_up_matches_it(instance, project, made):
    """The figure on the edited file's observation: the count the catch-up then redoes, and a GPU (here CPU) time
    within a factor of three of the inference time the catch-up then records (tiny models on a shared CPU)."""
    keys, cursor = made
    never_made = make_image(Path(project["images_dir"]) / "late.png")  # registered, never made: not the edit's cost
    instance.add_dynamic_partitions("images", [never_made.name])
    catalog = yaml.safe_load(open(project["models_file"]))
    catalog["defaults"]["strength"] = 0.6
    with open(project["models_file"], "w") as handle:
        yaml.safe_dump(catalog, handle)
    result = _sensor_tick(instance, project, cursor)
    (observation,) = [e for e in result.asset_events if e.asset_key == dg.AssetKey("models_file")]
    instance.report_runless_asset_event(observation)  # as the daemon stores it
    cost = {label: value.value for label, value in observation.metadata.items()}
    assert cost["out_of_date_images"] == 3 and cost["results_to_make"] == 3  # not late.png, never made
    instance.delete_dynamic_partition("images", never_made.name)
    never_made.unlink()
    assert cost["estimated_gpu_time"].startswith("about ") and cost["estimated_gpu_seconds"] > 0

    requests = _schedule_requests(instance, project)
    assert _requested_keys(instance, requests) == set(keys)  # the count the schedule then requests
    tagged = [float(r.tags[ESTIMATE_TAG]) for r in requests]  # tenths of a second: a tiny model's run is not 0
    assert all(tagged) and sum(tagged) == pytest.approx(cost["estimated_gpu_seconds"], abs=0.1 * len(tagged))
    for request in requests:
        _materialize(instance, project, IMAGES_RUN, [request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG]])
    # The runs read the same catalog: the file's latest observation is still the sensor's, which its page shows.
    (latest,) = instance.fetch_observations(dg.AssetKey("models_file"), limit=1).records
    assert latest.asset_observation.metadata["out_of_date_images"].value == 3
    measured = sum(
        read_record(result_file(project["images_dir"], project["output_dir"], k)).inference_seconds for k in keys
    )
    assert measured / 3 <= cost["estimated_gpu_seconds"] <= 3 * measured, (cost["estimated_gpu_seconds"], measured)
