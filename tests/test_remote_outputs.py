"""Outputs at an fsspec URL (here the in-memory filesystem), as a multi-machine setup would use s3://."""

import datetime

import dagster as dg
import fsspec
import pytest

from random_diffusion_dagster.defs.automation.catch_up_schedule import catch_up_schedule
from random_diffusion_dagster.defs.checks import results_readable_on_disk
from random_diffusion_dagster.defs.resources import DatasetResource, DiffusionEngineResource
from random_diffusion_dagster.engine.results import read_record

from helpers import result_file
from test_assets import ALL_ASSETS, _diffuse_all, _partition_metadata

URL = "memory://rdd-test/outputs"


@pytest.fixture
def remote_project(project):
    store = fsspec.filesystem("memory").store
    store.clear()
    yield {**project, "output_dir": URL}
    store.clear()


def test_results_report_check_and_catch_up_work_on_an_fsspec_url(remote_project):
    memory = fsspec.filesystem("memory")
    with dg.instance_for_test() as instance:
        keys, result = _diffuse_all(instance, remote_project)
        assert result.success
        for key in keys:
            path = f"{URL}/{result_file(remote_project['images_dir'], '', key)}"
            assert _partition_metadata(instance, key)["output_path"] == path
            assert read_record(path).fingerprint == _partition_metadata(instance, key)["fingerprint"]
        assert not [p for p in memory.find("/rdd-test") if p.endswith(".tmp")]

        resources = {"dataset": DatasetResource(**remote_project), "engine": DiffusionEngineResource(device="cpu")}
        report = dg.materialize(
            ALL_ASSETS + [results_readable_on_disk],
            selection=["diffusion_report"],
            instance=instance,
            resources=resources,
        )
        assert report.asset_materializations_for_node("diffusion_report")[0].metadata["images"].value == len(keys)
        assert memory.exists("/rdd-test/outputs/report/contact_sheet.png")
        check = dg.materialize(
            ALL_ASSETS + [results_readable_on_disk],
            selection=dg.AssetSelection.checks(results_readable_on_disk),
            instance=instance,
            resources=resources,
        )
        assert check.get_asset_check_evaluations()[0].passed

        with dg.build_schedule_context(
            instance=instance,
            resources={"dataset": resources["dataset"]},
            scheduled_execution_time=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
        ) as context:
            assert isinstance(catch_up_schedule(context), dg.SkipReason)

        _, rerun = _diffuse_all(instance, remote_project)
        assert instance.get_run_by_id(rerun.run_id).tags["random_diffusion/reused"] == str(len(keys))
