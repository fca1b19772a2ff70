"""What makes an image stale, the Dagster way: content versions of the files results are made from.

The stale status is read with the resolver behind the webserver's GraphQL (what the UI shows), through
the construction Dagster's own tests use; tests/test_deployment.py reads it over GraphQL from a real webserver.
"""

import datetime
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime
from test_automation import _age

from random_diffusion_dagster.definitions import defs
from random_diffusion_dagster.defs.assets import (
    diffused_image,
    diffusion_report,
    model_catalog,
    prompt_list,
    source_images,
)
from random_diffusion_dagster.defs.automation.catch_up_schedule import catch_up_schedule
from random_diffusion_dagster.defs.automation.input_files_sensor import input_files_sensor
from random_diffusion_dagster.defs.automation.new_images_sensor import new_images_sensor
from random_diffusion_dagster.defs.checks import results_up_to_date
from random_diffusion_dagster.defs.prompt_sets import submission_tags
from random_diffusion_dagster.defs.resources import DatasetResource, DiffusionEngineResource
from random_diffusion_dagster.defs.run_ranges import partition_range_tags
from random_diffusion_dagster.defs.source_versions import IMAGE_FILES, MODELS_FILE, PROMPTS_FILE
from random_diffusion_dagster.engine.results import read_record

from helpers import make_image, result_file

SUBMITTED = ["cat dancing in rain"]
IMAGE_DRAW = dg.AssetKey("image_draw")
IMAGES_RUN = ["prompt_list", "model_catalog", "image_draw", "diffused_image"]  # what job diffuse_images selects
ASSETS = [
    PROMPTS_FILE,
    MODELS_FILE,
    IMAGE_FILES,
    source_images,
    prompt_list,
    model_catalog,
    diffused_image,
    diffusion_report,
]


def _resources(project):
    return {"dataset": DatasetResource(**project), "engine": DiffusionEngineResource(device="cpu")}


def _run(instance, project, selection, keys=None, prompts=None, tags=None):
    run_config = {"ops": {"prompt_list": {"config": {"prompt_list": prompts}}}} if prompts else None
    range_tags = partition_range_tags(keys[0], keys[-1]) if keys else {}
    result = dg.materialize(
        ASSETS,
        selection=selection,
        instance=instance,
        resources=_resources(project),
        run_config=run_config,
        tags=range_tags | (tags or {}),
    )
    assert result.success
    return result


def _refresh(instance, project, assets):
    """The refresh_inputs run input_files_sensor asks for after an edit: the input assets, then the check that
    records the new draws (job refresh_inputs)."""
    selection = dg.AssetSelection.assets(*assets) | dg.AssetSelection.checks(results_up_to_date)
    result = dg.materialize(
        [*ASSETS, results_up_to_date], selection=selection, instance=instance, resources=_resources(project)
    )
    assert result.success
    return result


def _resolver(instance):
    # As Dagster's own tests build it (dagster._utils.test.data_versions), over the project's asset graph.
    graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    return CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)


def _stale(instance, keys):
    resolver = _resolver(instance)
    return {k for k in keys if resolver.get_status(dg.AssetKey("diffused_image"), k) == StaleStatus.STALE}


def _tick_input_files(instance, project, cursor=None, refreshes=()):
    """One input_files_sensor tick, its events stored as the daemon stores them."""
    resources = {"dataset": DatasetResource(**project)}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = input_files_sensor(context)
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    requested = {key.to_user_string() for request in result.run_requests for key in request.asset_selection}
    assert requested == set(refreshes)
    return result.cursor


def _schedule_keys(instance, project):
    with dg.build_schedule_context(
        instance=instance,
        resources={"dataset": DatasetResource(**project)},
        scheduled_execution_time=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    ) as context:
        requests = catch_up_schedule(context)
    if isinstance(requests, dg.SkipReason):
        return set()
    keys = instance.get_dynamic_partitions("images")
    spans = [
        (
            keys.index(r.tags["dagster/asset_partition_range_start"]),
            keys.index(r.tags["dagster/asset_partition_range_end"]),
        )
        for r in requests
    ]
    return {keys[i] for first, last in spans for i in range(first, last + 1)}


def _prompts_on_disk(project, keys):
    return {k: read_record(result_file(project["images_dir"], project["output_dir"], k)).prompt for k in keys}


@pytest.fixture
def submitted(instance, project):
    """The old server's flow: a prompt list submitted for every image, its images made."""
    _run(instance, project, ["source_images"])
    keys = instance.get_dynamic_partitions("images")
    cursor = _tick_input_files(instance, project)
    _run(instance, project, IMAGES_RUN, keys, SUBMITTED, submission_tags())
    assert set(_prompts_on_disk(project, keys).values()) == set(SUBMITTED)
    return keys, cursor


def test_submitted_prompts_stay_through_the_schedule_and_a_plain_run(instance, project, submitted):
    keys, _ = submitted
    assert _schedule_keys(instance, project) == set() and _stale(instance, keys) == set()
    _run(instance, project, IMAGES_RUN, keys)  # `random-diffusion run`
    assert set(_prompts_on_disk(project, keys).values()) == set(SUBMITTED)
    latest = instance.get_latest_materialization_event(dg.AssetKey("prompt_list")).asset_materialization.metadata
    assert latest["source"].value == "submitted" and "@" in latest["submitted_by"].value


def test_a_list_submitted_without_a_prompts_file_stays_while_there_is_none(instance, project):
    """`run --prompt` needs no prompts file; the plain run after it failed with "Prompt file ... does not exist"."""
    Path(project["prompts_file"]).unlink()
    _run(instance, project, ["source_images"])
    keys = instance.get_dynamic_partitions("images")
    _run(instance, project, IMAGES_RUN, keys, SUBMITTED, submission_tags())
    _run(instance, project, ["prompt_list"])  # the plain run's prompt_list (`random-diffusion run`, the schedule)
    latest = instance.get_latest_materialization_event(dg.AssetKey("prompt_list")).asset_materialization.metadata
    assert latest["source"].value == "submitted"
    Path(project["prompts_file"]).write_text("a lighthouse at dusk\n")  # a file again: it is a change, it wins
    _run(instance, project, ["prompt_list"])
    latest = instance.get_latest_materialization_event(dg.AssetKey("prompt_list")).asset_materialization.metadata
    assert latest["source"].value == "file"


def test_editing_the_prompts_file_makes_results_stale_and_the_ui_path_uses_the_new_prompts(
    instance, project, submitted
):
    keys, cursor = submitted
    Path(project["prompts_file"]).write_text("a lighthouse at dusk\n")
    _tick_input_files(instance, project, cursor, refreshes=["prompt_list"])
    assert _resolver(instance).get_status(dg.AssetKey("prompt_list")) == StaleStatus.STALE  # the UI says so
    _refresh(instance, project, ["prompt_list"])  # the refresh run the sensor asked for
    assert _stale(instance, keys) == set(keys)
    assert _schedule_keys(instance, project) == set(keys)
    _run(
        instance, project, ["image_draw", "diffused_image"], keys
    )  # Materialize in the UI: loads the stored prompt_list
    assert set(_prompts_on_disk(project, keys).values()) == {"a lighthouse at dusk"}
    assert _stale(instance, keys) == set() and _schedule_keys(instance, project) == set()


def test_a_comment_edit_in_the_prompts_file_makes_nothing_stale(instance, project, submitted):
    keys, cursor = submitted
    _run(instance, project, IMAGES_RUN, keys, tags={})
    prompts = Path(project["prompts_file"])
    prompts.write_text(prompts.read_text() + "# a note\n")
    _tick_input_files(instance, project, cursor, refreshes=["prompt_list"])
    _refresh(instance, project, ["prompt_list"])
    assert _stale(instance, keys) == set()


def test_replacing_one_image_makes_only_its_partition_stale(instance, project, submitted):
    keys, _ = submitted
    resources = {"dataset": DatasetResource(**project)}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        cursor = new_images_sensor(context).cursor  # the sensor's first look at the folder
    replaced = Path(project["images_dir"]) / "red.png"
    make_image(replaced, color=(10, 10, 10))  # same name, other content, fully written a while ago
    _age(replaced)
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = new_images_sensor(context)
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    assert [r.partition_key for r in result.run_requests] == ["red.png"], result.run_requests
    assert _stale(instance, keys) == {"red.png"}
    touched = Path(project["images_dir"]) / "blue.webp"
    touched.chmod(0o644)  # metadata only: the sensor looks again, the content version is unchanged
    assert _stale(instance, keys) == {"red.png"}


def test_asking_for_the_prompts_file_ends_a_submitted_list(instance, project, submitted):
    keys, _ = submitted
    run_config = {"ops": {"prompt_list": {"config": {"use_prompts_file": True}}}}
    dg.materialize(
        ASSETS,
        selection=IMAGES_RUN,
        instance=instance,
        resources=_resources(project),
        run_config=run_config,
        tags=partition_range_tags(keys[0], keys[-1]),
    )
    file_prompts = {"a red fox", "an ice castle", "the sea at night"}
    assert set(_prompts_on_disk(project, keys).values()) <= file_prompts


def test_results_of_a_first_run_are_in_sync_with_the_files_the_sensor_then_reports(instance, project):
    """A run records the versions it read, so the sensor's first report of the same files makes nothing stale."""
    _run(instance, project, ["source_images"])
    keys = instance.get_dynamic_partitions("images")
    _run(instance, project, IMAGES_RUN, keys)
    _tick_input_files(instance, project)
    resolver = _resolver(instance)
    assert resolver.get_status(dg.AssetKey("prompt_list")) == StaleStatus.FRESH
    assert resolver.get_status(dg.AssetKey("model_catalog")) == StaleStatus.FRESH
    assert _stale(instance, keys) == set()


def _image_versions_on_record(instance) -> int:
    return len(instance.fetch_observations(IMAGE_FILES.key, limit=1000).records)


def test_a_rerun_records_only_the_image_versions_that_changed_and_stays_in_sync(instance, project):
    """Each run reports the versions it read; one already on record is not written again (a write each)."""
    _run(instance, project, ["source_images"])
    keys = instance.get_dynamic_partitions("images")
    _run(instance, project, IMAGES_RUN, keys)
    assert _image_versions_on_record(instance) == len(keys)
    _run(instance, project, ["image_draw", "diffused_image"], keys)  # the same images again: every version is on record
    assert _image_versions_on_record(instance) == len(keys)
    make_image(Path(project["images_dir"]) / "red.png", color=(10, 10, 10))  # replaced; no sensor tick
    _run(instance, project, ["image_draw", "diffused_image"], keys)
    assert _image_versions_on_record(instance) == len(keys) + 1
    assert _stale(instance, keys) == set()


def test_editing_one_caption_makes_only_that_image_stale(instance, project, submitted):
    """A caption is part of its image's data version: "Observe sources" (the image_file observation) after editing
    one sidecar caption marks that partition stale and no other; a run redoes it with the new caption."""
    keys, _ = submitted
    images = Path(project["images_dir"])
    for image in [path for path in images.iterdir() if path.suffix != ".txt"]:
        image.with_suffix(".txt").write_text(f"a caption of {image.name}\n")
    _run(instance, project, ["image_file"])
    selection = IMAGES_RUN
    _run(instance, project, selection, keys, ["a study of {caption}"], submission_tags())
    assert _stale(instance, keys) == set()
    (images / "red.txt").write_text("a new caption\n")
    _run(instance, project, ["image_file"])
    assert _stale(instance, keys) == {"red.png"}


def made_with_more_images(instance, project, more: int):
    """`more` images beside the fixture's three, all made and the input files seen by the sensor: (keys, the
    sensor's cursor, each image's result record)."""
    images = Path(project["images_dir"])
    for i in range(more):
        make_image(images / f"more{i}.png", color=(40 * i, 120, 60))
    _run(instance, project, ["source_images"])
    keys = instance.get_dynamic_partitions("images")
    _run(instance, project, IMAGES_RUN, keys)
    cursor = _tick_input_files(instance, project)
    drawn = {k: read_record(result_file(project["images_dir"], project["output_dir"], k)) for k in keys}
    return keys, cursor, drawn


def _edit_one_catalog_entry(project):
    catalog = yaml.safe_load(Path(project["models_file"]).read_text())
    next(m for m in catalog["models"] if m["name"] == "tiny-sd2")["num_inference_steps"] = 3
    Path(project["models_file"]).write_text(yaml.safe_dump(catalog))


def _edit_one_prompt_line(project):
    prompts = Path(project["prompts_file"])
    prompts.write_text(prompts.read_text().replace("an ice castle", "an ice palace"))


EDITS = {  # what is edited -> (the edit, what a result drawn with the edited line or entry records, what refreshes)
    "catalog entry": (_edit_one_catalog_entry, lambda record: record.model == "tiny-sd2", "model_catalog"),
    "prompt line": (_edit_one_prompt_line, lambda record: record.prompt == "an ice castle", "prompt_list"),
}


@pytest.mark.parametrize("edited", EDITS)
def test_editing_one_entry_or_line_stales_exactly_the_images_drawn_with_it(instance, project, edited):
    """Issue 38: one catalog entry's settings or one prompt line edited; Dagster (the UI's resolver) shows as stale
    exactly the partitions whose draw named it, the edit's cost counts them, and the catch-up remakes exactly those."""
    edit, drew_it, refreshed = EDITS[edited]
    keys, cursor, drawn = made_with_more_images(instance, project, 5)
    affected = {k for k, record in drawn.items() if drew_it(record)}
    assert affected and affected != set(keys)  # the draw must tell the images apart
    before = {k: result_file(project["images_dir"], project["output_dir"], k).read_bytes() for k in keys}

    edit(project)
    resources = {"dataset": DatasetResource(**project)}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        tick = input_files_sensor(context)
    (observation,) = tick.asset_events
    assert observation.metadata["out_of_date_images"].value == len(affected)  # the cost, before anything runs
    _refresh(instance, project, [refreshed])

    assert _stale(instance, keys) == affected
    resolver = _resolver(instance)
    assert all(resolver.get_status(IMAGE_DRAW, k) == StaleStatus.FRESH for k in keys)  # the draws are current
    latest = instance.get_latest_asset_check_evaluation_record(results_up_to_date.check_key)
    assert latest.event.dagster_event.asset_check_evaluation_data.metadata["out_of_date"].value == len(affected)
    assert affected <= _schedule_keys(instance, project)

    _run(instance, project, IMAGES_RUN, keys)  # the catch-up
    after = {k: result_file(project["images_dir"], project["output_dir"], k).read_bytes() for k in keys}
    assert {k for k in keys if after[k] != before[k]} == affected  # remade exactly those; the rest reused
    assert _stale(instance, keys) == set() and _schedule_keys(instance, project) == set()


def test_each_run_records_its_images_draws_and_an_unchanged_draw_stales_nothing(instance, project):
    """Each run materializes image_draw for its images (a backfill counts a partition done only then), with what each
    drew; drawn again unchanged, the version is the same and no result turns Unsynced."""
    _run(instance, project, ["source_images"])
    keys = instance.get_dynamic_partitions("images")
    _run(instance, project, IMAGES_RUN, keys)
    first = {r.partition_key: r for r in instance.fetch_materializations(IMAGE_DRAW, limit=100).records}
    _run(instance, project, IMAGES_RUN, keys)
    records = instance.fetch_materializations(IMAGE_DRAW, limit=100).records
    assert sorted(r.partition_key for r in records) == sorted(keys * 2)
    latest = {r.partition_key: r for r in reversed(records)}  # newest last wins
    for key, record in latest.items():
        tags = record.asset_materialization.tags
        assert tags["dagster/data_version"] == first[key].asset_materialization.tags["dagster/data_version"]
        metadata = record.asset_materialization.metadata
        made = read_record(result_file(project["images_dir"], project["output_dir"], key))
        assert (metadata["prompt"].value, metadata["model"].value, metadata["seed"].value) == (
            made.prompt,
            made.model,
            str(made.seed),
        )
    assert _stale(instance, keys) == set()
