"""What `results_up_to_date` records as each image's draw (image_draw): Dagster's staleness (the UI's resolver) and
the project's out-of-date judgement (the check, catch_up_schedule) name the same partitions, also when a run made
more variants than the check plans and when an edit leaves images that cannot be planned."""

from pathlib import Path

import dagster as dg
import yaml
from test_staleness import (
    ASSETS,
    IMAGES_RUN,
    _refresh,
    _resources,
    _run,
    _schedule_keys,
    _stale,
    _tick_input_files,
    made_with_more_images,
)

from random_diffusion_dagster.defs import draws
from random_diffusion_dagster.defs.checks import results_up_to_date
from random_diffusion_dagster.defs.resources import DatasetResource
from random_diffusion_dagster.defs.run_ranges import partition_range_tags


def _check_alone(instance, project):
    """results_up_to_date run on its own, as report_automation_sensor or "Execute" on the check runs it."""
    selection = dg.AssetSelection.checks(results_up_to_date)
    result = dg.materialize(
        [*ASSETS, results_up_to_date], selection=selection, instance=instance, resources=_resources(project)
    )
    assert result.success


def _out_of_date_keys(instance) -> set[str]:
    latest = instance.get_latest_asset_check_evaluation_record(results_up_to_date.check_key)
    metadata = latest.event.dagster_event.asset_check_evaluation_data.metadata
    return set(metadata["out_of_date_keys"].value) if "out_of_date_keys" in metadata else set()


def test_results_made_with_more_variants_stay_in_sync_when_the_check_plans_fewer(instance, project):
    """`random-diffusion run --variants 2` (the run's own dataset resource), then results_up_to_date with the
    deployment's resource (variants unset: 1). Variant 0 of each image is current, so the check counts nothing and
    the schedule redoes nothing; the check must not record a one-variant draw that turns every partition Unsynced."""
    _run(instance, project, ["source_images"])
    keys = instance.get_dynamic_partitions("images")
    result = dg.materialize(
        ASSETS,
        selection=IMAGES_RUN,
        instance=instance,
        resources={**_resources(project), "dataset": DatasetResource(**project, variants=2)},
        tags=partition_range_tags(keys[0], keys[-1]),
    )
    assert result.success
    assert _stale(instance, keys) == set()
    _check_alone(instance, project)
    assert _out_of_date_keys(instance) == set() and _schedule_keys(instance, project) == set()
    assert _stale(instance, keys) == set()


def test_lowering_the_catalogs_variants_stales_nothing_the_check_calls_current(instance, project):
    """The catalog's `defaults: {variants: 2}` lowered to 1: the refresh run's check counts no image out of date."""
    models = Path(project["models_file"])
    catalog = yaml.safe_load(models.read_text())
    catalog["defaults"]["variants"] = 2
    models.write_text(yaml.safe_dump(catalog))
    _run(instance, project, ["source_images"])
    keys = instance.get_dynamic_partitions("images")
    _run(instance, project, IMAGES_RUN, keys)
    cursor = _tick_input_files(instance, project)
    catalog["defaults"]["variants"] = 1
    models.write_text(yaml.safe_dump(catalog))
    _tick_input_files(instance, project, cursor, refreshes=["model_catalog"])
    _refresh(instance, project, ["model_catalog"])
    assert _out_of_date_keys(instance) == set() and _schedule_keys(instance, project) == set()
    assert _stale(instance, keys) == set()


def test_a_prompt_edit_that_leaves_its_images_unplannable_shows_them_stale(instance, project):
    """One prompt line becomes a `{caption}` template and no image has a caption: the images that drew it cannot be
    planned now; the check counts them and the schedule asks for them, so Dagster shows them Unsynced too."""
    keys, cursor, drawn = made_with_more_images(instance, project, 6)
    affected = {k for k, record in drawn.items() if record.prompt == "an ice castle"}
    assert affected and affected != set(keys)
    prompts = Path(project["prompts_file"])
    prompts.write_text(prompts.read_text().replace("an ice castle", "{caption} in ice"))
    _tick_input_files(instance, project, cursor, refreshes=["prompt_list"])
    _refresh(instance, project, ["prompt_list"])
    assert _out_of_date_keys(instance) == affected and affected <= _schedule_keys(instance, project)
    assert _stale(instance, keys) == affected

    # The line back as it was: the results are current again, and so is what Dagster shows.
    prompts.write_text(prompts.read_text().replace("{caption} in ice", "an ice castle"))
    _refresh(instance, project, ["prompt_list"])
    assert _out_of_date_keys(instance) == set() and _stale(instance, keys) == set()


def test_an_edit_taken_back_leaves_nothing_stale(instance, project):
    """A catalog entry edited, refreshed (its images Unsynced), then edited back: the results on disk are current
    again, and Dagster shows them so, as the check and the schedule say."""
    keys, cursor, drawn = made_with_more_images(instance, project, 5)
    models = Path(project["models_file"])
    before = models.read_text()
    catalog = yaml.safe_load(before)
    next(m for m in catalog["models"] if m["name"] == "tiny-sd2")["num_inference_steps"] = 3
    models.write_text(yaml.safe_dump(catalog))
    _refresh(instance, project, ["model_catalog"])
    assert _stale(instance, keys) == {k for k, record in drawn.items() if record.model == "tiny-sd2"} != set()
    models.write_text(before)
    _refresh(instance, project, ["model_catalog"])
    assert _out_of_date_keys(instance) == set() and _schedule_keys(instance, project) == set()
    assert _stale(instance, keys) == set()


def test_latest_records_are_read_in_chunks_each_partitions_newest(instance, monkeypatch):
    """A full scan reads every image's latest record; SQLite binds at most 32,766 values per query, so they are
    fetched in chunks (here of 2), each partition's newest one."""
    key = dg.AssetKey("image_draw")
    partitions = [f"img{i}.png" for i in range(5)]
    instance.add_dynamic_partitions("images", partitions)
    for round_ in range(2):
        for partition in partitions:
            instance.report_runless_asset_event(
                dg.AssetMaterialization(key, partition=partition, metadata={"round": round_})
            )
    monkeypatch.setattr(draws, "PARTITIONS_PER_QUERY", 2)
    latest = draws.latest_materializations(instance, key, partitions[:4])
    assert sorted(latest) == partitions[:4]
    assert {record.asset_materialization.metadata["round"].value for record in latest.values()} == {1}
