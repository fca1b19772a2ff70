"""The shipped storages (SQLite, and PostgreSQL for teams) write a run's asset events in batches and record what
one-by-one writes do."""

import os
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest
import yaml

from random_diffusion_dagster.defs.source_versions import DATA_VERSION_TAG, IMAGE_FILES
from random_diffusion_dagster.runtime.instance_storage.event_writes import BATCH_SIZE_VARIABLE
from random_diffusion_dagster.runtime.instance_storage.postgres import BatchingPostgresEventLogStorage
from random_diffusion_dagster.runtime.instance_storage.sqlite import BatchingSqliteEventLogStorage

from helpers import make_image, write_catalog
from local_services import shipped_instance_config, throwaway_database
from test_assets import _diffuse_all

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DIFFUSED = dg.AssetKey("diffused_image")
BATCHED = (
    dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
    dg.DagsterEventType.ASSET_OBSERVATION,  # the versions of the sources the step read
    dg.DagsterEventType.ASSET_MATERIALIZATION,
)


def _recorded(instance, keys):
    """Per partition: its latest materialization's metadata and tags, and the data version Dagster's index holds."""
    versions = instance.event_log_storage.get_latest_tags_by_partition(
        DIFFUSED, dg.DagsterEventType.ASSET_MATERIALIZATION, [DATA_VERSION_TAG], asset_partitions=keys
    )
    recorded = {}
    for key in keys:
        (record,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=DIFFUSED, asset_partitions=[key]), limit=5
        ).records
        materialization = record.asset_materialization
        recorded[key] = (materialization.metadata, materialization.tags, versions[key][DATA_VERSION_TAG])
    read = instance.event_log_storage.get_latest_tags_by_partition(
        IMAGE_FILES.key, dg.DagsterEventType.ASSET_OBSERVATION, [DATA_VERSION_TAG], asset_partitions=keys
    )
    return recorded, {key: tags[DATA_VERSION_TAG] for key, tags in read.items()}


@contextmanager
def _sqlite_instance(home: Path):
    """The storage dagster.yaml names, under `home`."""
    with dg.instance_for_test(
        overrides={"storage": shipped_instance_config(PROJECT_ROOT, home)["storage"]}
    ) as instance:
        yield instance


@contextmanager
def _postgres_instance(home: Path):
    """The storage deploy/postgres/dagster.yaml names, on a new database of the local server."""
    storage = yaml.safe_load((PROJECT_ROOT / "deploy" / "postgres" / "dagster.yaml").read_text())["storage"]
    with throwaway_database("rdd_batches") as url:
        storage["custom"]["config"]["postgres_url"] = url
        with dg.instance_for_test(overrides={"storage": storage}) as instance:
            yield instance


STORAGES = {
    "sqlite": (_sqlite_instance, BatchingSqliteEventLogStorage),
    "postgres": (_postgres_instance, BatchingPostgresEventLogStorage),
}


@pytest.mark.parametrize("storage", STORAGES)
def test_a_run_records_its_planned_materializations_source_versions_and_results_in_batches_as_one_by_one_writes_do(
    storage, project, models_dir, tmp_path, monkeypatch, environ
):
    open_instance, event_log = STORAGES[storage]
    # One model and one size: the images are made in one batch, whose results are recorded together as it finishes.
    write_catalog(Path(project["models_file"]), models_dir, names=("tiny-sd15",))
    for shade, image in enumerate(sorted(Path(project["images_dir"]).iterdir())):
        make_image(image, color=(60 * shade, 90, 160))
    written_alone = []
    store_event = event_log.store_event

    def store_one(storage, event):
        if event.dagster_event and event.dagster_event.event_type in BATCHED:
            written_alone.append((event.dagster_event.event_type, event.dagster_event.partition))
        store_event(storage, event)

    monkeypatch.setattr(event_log, "store_event", store_one)
    environ.pop(BATCH_SIZE_VARIABLE, None)
    with open_instance(tmp_path / "batched") as instance:
        assert os.environ[BATCH_SIZE_VARIABLE] == "256"  # set by loading the storage
        keys, result = _diffuse_all(instance, project)
        assert result.success and len(keys) == 3
        # The images' planned materializations, sources' versions and results went in batches; only the
        # unpartitioned inputs' one by one.
        assert [partition for _, partition in written_alone if partition] == []
        batched, read = _recorded(instance, keys)
        assert instance.get_materialized_partitions(DIFFUSED) == set(keys)
        planned_by = {instance.get_latest_planned_materialization_info(DIFFUSED, key).run_id for key in keys}
        assert planned_by == {result.run_id}
        assert instance.get_latest_materialization_event(DIFFUSED).dagster_event.partition in keys

    monkeypatch.setenv(BATCH_SIZE_VARIABLE, "0")  # Dagster's one-by-one writes, on a second instance
    with open_instance(tmp_path / "one-by-one") as one_by_one:
        _diffuse_all(one_by_one, {**project, "output_dir": str(tmp_path / "one-by-one-outputs")})
        one_by_one_writes = [(kind.value, partition) for kind, partition in written_alone if partition]
        # Per image: both assets' planned materializations and materializations (its draw, its result), and the
        # source version the step read.
        per_image = [
            *BATCHED,
            dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
            dg.DagsterEventType.ASSET_MATERIALIZATION,
        ]
        assert sorted(one_by_one_writes) == sorted((kind.value, key) for kind in per_image for key in keys)
        expected, expected_read = _recorded(one_by_one, keys)
    assert read == expected_read and len(set(read.values())) == len(keys)  # each image's own content hash
    inputs = "dagster/input_data_version/"  # the versions each result was made from (its own depend on the run)
    for key in keys:
        metadata, tags, version = batched[key]
        assert version == tags[DATA_VERSION_TAG]  # the index has a version for every image, and the right one
        assert tags.keys() == expected[key][1].keys()
        assert {k: v for k, v in tags.items() if k.startswith(inputs)} == {
            k: v for k, v in expected[key][1].items() if k.startswith(inputs)
        }
        assert metadata.keys() == expected[key][0].keys()
        assert [metadata[name] for name in ("prompt", "model", "seed")] == [
            expected[key][0][name] for name in ("prompt", "model", "seed")
        ]
