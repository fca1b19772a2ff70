"""The team setup: the shipped PostgreSQL instance config against the real server on 127.0.0.1:5432."""

import os
import shutil
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import psycopg2
import pytest
import yaml

from random_diffusion_dagster.defs.assets import (
    diffused_image,
    diffusion_report,
    model_catalog,
    prompt_list,
    source_images,
)
from random_diffusion_dagster.defs.automation.new_images_sensor import new_images_sensor
from random_diffusion_dagster.defs.resources import DatasetResource, DiffusionEngineResource

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from helpers import result_file
from local_services import throwaway_database  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def database():
    with throwaway_database("rdd_test") as url:
        yield url


# The first case writes every event alone (Dagster's default, which the storage replaces with batches), the second
# a run's events in batches, as the shipped storage does unless told otherwise.
@pytest.mark.parametrize(("scheme", "event_batch_size"), [("postgresql", "0"), ("postgresql+psycopg2", None)])
def test_shipped_config_stores_the_whole_flow_in_postgres(
    database, project, tmp_path, monkeypatch, environ, scheme, event_batch_size
):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "deploy" / "postgres" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", database.replace("postgresql://", f"{scheme}://", 1))
    environ.pop("DAGSTER_EVENT_BATCH_SIZE", None)  # the storage sets it, unless the case does
    if event_batch_size:
        environ["DAGSTER_EVENT_BATCH_SIZE"] = event_batch_size
    for path in Path(project["images_dir"]).iterdir():
        past = time.time() - 300
        os.utime(path, (past, past))

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert os.environ["DAGSTER_EVENT_BATCH_SIZE"] == (event_batch_size or "256")
        assert instance.run_storage.postgres_url.startswith("postgresql+psycopg2://")
        pools = instance.get_concurrency_config().pool_config
        assert pools.default_pool_limit == 1 and pools.pool_granularity.value == "run"

        resources = {"dataset": DatasetResource(**project), "engine": DiffusionEngineResource(device="cpu")}
        with dg.build_sensor_context(instance=instance, resources={"dataset": resources["dataset"]}) as context:
            tick = new_images_sensor(context)
        (add,) = tick.dynamic_partitions_requests
        instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))
        (request,) = tick.run_requests
        assets = [source_images, prompt_list, model_catalog, diffused_image, diffusion_report]
        run = dg.materialize(
            assets,
            selection=["prompt_list", "model_catalog", "image_draw", "diffused_image"],
            instance=instance,
            resources=resources,
            tags=request.tags,
        )
        assert run.success
        # Each partition keeps its own metadata, batched or not.
        records = instance.fetch_materializations(dg.AssetKey("diffused_image"), limit=10).records
        metadata = {r.partition_key: r.asset_materialization.metadata for r in records}
        assert len(metadata) == 3 and len({m["seed"].value for m in metadata.values()}) == 3
        for key, m in metadata.items():
            assert m["output_path"].value == str(result_file(project["images_dir"], project["output_dir"], key))
        report = dg.materialize(assets, selection=["diffusion_report"], instance=instance, resources=resources)
        assert report.asset_materializations_for_node("diffusion_report")[0].metadata["images"].value == 3

    with psycopg2.connect(database) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM runs")
        assert cursor.fetchone()[0] == 2
        cursor.execute("SELECT count(*) FROM dynamic_partitions WHERE partitions_def_name = 'images'")
        assert cursor.fetchone()[0] == 3
        cursor.execute(
            "SELECT count(DISTINCT partition) FROM event_logs "
            "WHERE dagster_event_type = 'ASSET_MATERIALIZATION' AND asset_key = %s",
            ('["diffused_image"]',),
        )
        assert cursor.fetchone()[0] == 3


def test_an_instance_config_naming_the_storage_s_earlier_class_still_loads_it(database, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    config = (PROJECT_ROOT / "deploy" / "postgres" / "dagster.yaml").read_text()
    (home / "dagster.yaml").write_text(config.replace("BatchingPostgresStorage", "Psycopg2PostgresStorage"))
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", database)
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "0")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.event_log_storage).__name__ == "BatchingPostgresEventLogStorage"


def test_an_instance_config_with_postgres_db_fields_connects_through_psycopg2(database, tmp_path, monkeypatch):
    """The `postgres_db` form (user, host, database as fields) gets the driver that works, as URLs do."""
    home = tmp_path / "home"
    home.mkdir()
    fields = urlsplit(database)
    storage = {
        "module": "random_diffusion_dagster.runtime.instance_storage.postgres",
        "class": "BatchingPostgresStorage",
        "config": {
            "postgres_db": {
                "username": fields.username,
                "hostname": fields.hostname,
                "port": fields.port,
                "db_name": fields.path.lstrip("/"),
            }
        },
    }
    (home / "dagster.yaml").write_text(yaml.safe_dump({"storage": {"custom": storage}}))
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "0")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.run_storage.postgres_url.startswith("postgresql+psycopg2://")
        instance.add_dynamic_partitions("images", ["a.png"])
        assert instance.get_dynamic_partitions("images") == ["a.png"]
