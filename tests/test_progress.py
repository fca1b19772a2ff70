"""Progress as it happens: a long run records each image as it is written, while the run goes on, once per run,
with the provenance Dagster's staleness reads; the run's log has one line per batch."""

import re
from collections import Counter
from pathlib import Path

import dagster as dg
from test_staleness import _stale

from random_diffusion_dagster.defs.resources import DiffusionEngineResource
from random_diffusion_dagster.defs.source_versions import DATA_VERSION_TAG

from helpers import make_image, write_catalog
from test_assets import _diffuse_all

DIFFUSED = dg.AssetKey("diffused_image")
BATCH_LINE = re.compile(r"^\[(\d+)/(\d+)\] model ")
INPUTS = ("image_draw", "image_file")  # the prompt list and catalog reach a result through its draw


def _step_log(instance, run_id):
    """The diffused_image step's entries in the run's event log, in the order they were stored."""
    return [entry for entry in instance.all_logs(run_id) if entry.step_key == "diffused_image"]


def _position(entries, entry) -> int:
    return next(i for i, candidate in enumerate(entries) if candidate is entry)


def _materializations(entries):
    return [
        e
        for e in entries
        if e.dagster_event
        and e.dagster_event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION
        and e.dagster_event.asset_key == DIFFUSED
    ]


def test_a_long_run_records_each_image_as_its_batch_is_written_once_with_provenance(instance, project, models_dir):
    """Six images, one per batch: what the UI shows green and a backfill counts arrives while the run goes on."""
    for i in range(3):
        make_image(Path(project["images_dir"]) / f"more{i}.png", color=(30 * i, 90, 10))
    write_catalog(Path(project["models_file"]), models_dir, names=("tiny-sd15",))  # six batches of one, in order
    keys, result = _diffuse_all(instance, project, engine=DiffusionEngineResource(device="cpu", batch_size=1))
    assert result.success and len(keys) == 6

    entries = _step_log(instance, result.run_id)
    lines = [e for e in entries if not e.dagster_event and BATCH_LINE.match(e.user_message)]
    assert [BATCH_LINE.match(e.user_message).groups() for e in lines] == [(str(i), "6") for i in range(1, 7)]
    materializations = _materializations(entries)
    assert Counter(e.dagster_event.partition for e in materializations) == Counter(keys)  # once each, this run
    # Recorded as they were written, not at the step's end: all but the last two images before the last is made.
    last_line = _position(entries, lines[-1])
    assert len([e for e in materializations if _position(entries, e) < last_line]) >= len(keys) - 2
    step_output = next(e for e in entries if e.dagster_event and e.dagster_event.event_type_value == "STEP_OUTPUT")
    assert all(_position(entries, e) < _position(entries, step_output) for e in materializations)  # none at the end

    tags = [e.asset_materialization.tags for e in materializations]
    assert all(t == tags[0] for t in tags)  # Dagster gives a step's partitions one provenance
    assert tags[0]["dagster/code_version"] == result.run_id  # no code version on the asset: the run's id, as Dagster
    assert all(tags[0][f"dagster/input_data_version/{name}"] for name in INPUTS)
    assert all(tags[0][f"dagster/input_event_pointer/{name}"].isdigit() for name in INPUTS)
    assert instance.event_log_storage.get_latest_tags_by_partition(
        DIFFUSED, dg.DagsterEventType.ASSET_MATERIALIZATION, [DATA_VERSION_TAG], asset_partitions=keys
    ) == {key: {DATA_VERSION_TAG: tags[0][DATA_VERSION_TAG]} for key in keys}
    assert _stale(instance, keys) == set()


def test_an_image_with_several_variants_is_recorded_once_when_all_are_written(instance, project):
    """Its variants run in separate batches here; the partition is recorded when the last one is on disk, with all."""
    engine = DiffusionEngineResource(device="cpu", batch_size=1)
    keys, result = _diffuse_all(instance, project, engine=engine, variants=2)
    assert result.success
    materializations = _materializations(_step_log(instance, result.run_id))
    assert Counter(e.dagster_event.partition for e in materializations) == Counter(keys)
    for entry in materializations:
        variants = entry.asset_materialization.metadata["variants"].value.records
        assert [row.data["variant"] for row in variants] == [0, 1]

    keys, again = _diffuse_all(instance, project, engine=engine, variants=3)  # two reused, one new per image
    materializations = _materializations(_step_log(instance, again.run_id))
    assert again.success and Counter(e.dagster_event.partition for e in materializations) == Counter(keys)
    for entry in materializations:
        rows = [row.data for row in entry.asset_materialization.metadata["variants"].value.records]
        assert [(row["variant"], row["reused"]) for row in rows] == [(0, True), (1, True), (2, False)]


def test_a_failing_run_records_its_written_images_with_provenance(instance, project):
    """They were recorded bare (no data version) before the step failed; now as in a run that succeeds."""
    broken = Path(project["images_dir"]) / "broken.png"
    make_image(broken)
    broken.write_bytes(broken.read_bytes()[:60])  # registered as an image, fails to decode in the run
    keys, result = _diffuse_all(instance, project)
    assert not result.success
    finished = set(keys) - {"broken.png"}
    materializations = _materializations(_step_log(instance, result.run_id))
    assert Counter(e.dagster_event.partition for e in materializations) == Counter(finished)
    assert all(DATA_VERSION_TAG in (e.asset_materialization.tags or {}) for e in materializations)
    assert _stale(instance, sorted(finished)) == set()
