"""Step storage: the values prompt_list and model_catalog hand to diffused_image, on a folder every worker reaches."""

import os
from pathlib import Path

import dagster as dg
import pytest

from random_diffusion_dagster.defs.assets import diffused_image, model_catalog, prompt_list, source_images
from random_diffusion_dagster.defs.resources import DatasetResource, DiffusionEngineResource
from random_diffusion_dagster.defs.run_ranges import partition_range_tags
from random_diffusion_dagster.defs.step_io_manager import SharedStepStorage
from random_diffusion_dagster.engine.results import read_record
from random_diffusion_dagster.settings import SettingError, step_storage_location

from helpers import result_file

ASSETS = [source_images, prompt_list, model_catalog, diffused_image]


def _materialize(instance, project, storage, selection, **kwargs):
    resources = {
        "dataset": DatasetResource(**project),
        "engine": DiffusionEngineResource(device="cpu"),
        "io_manager": SharedStepStorage(base_dir=str(storage)),
    }
    return dg.materialize(
        ASSETS, selection=selection, instance=instance, resources=resources, raise_on_error=False, **kwargs
    )


def test_diffused_image_reads_values_another_instance_wrote_to_step_storage(tmp_path, project):
    storage = tmp_path / "step-values"
    override = {"ops": {"prompt_list": {"config": {"prompt_list": ["a lighthouse at dusk"]}}}}
    # two machines: each its own DAGSTER_HOME, one shared step storage folder
    with dg.instance_for_test() as box_a, dg.instance_for_test() as box_b:
        assert _materialize(box_a, project, storage, ["prompt_list", "model_catalog"], run_config=override).success
        _materialize(box_b, project, storage, ["source_images"])
        key = box_b.get_dynamic_partitions("images")[0]
        result = _materialize(
            box_b, project, storage, ["image_draw", "diffused_image"], tags=partition_range_tags(key, key)
        )
    assert result.success
    assert read_record(result_file(project["images_dir"], project["output_dir"], key)).prompt == "a lighthouse at dusk"
    # no half-written leftovers beside the three values
    assert sorted(os.listdir(storage)) == ["model_catalog.pickle", "prompt_list.pickle", "source_images.pickle"]


def test_diffused_image_without_its_inputs_in_step_storage_says_to_materialize_them_first(tmp_path, project):
    with dg.instance_for_test() as instance:
        _materialize(instance, project, tmp_path / "empty", ["source_images"])
        key = instance.get_dynamic_partitions("images")[0]
        tags = partition_range_tags(key, key)
        result = _materialize(instance, project, tmp_path / "empty", ["image_draw", "diffused_image"], tags=tags)
    assert not result.success
    (failure,) = [event for event in result.all_events if event.is_step_failure]
    message = failure.step_failure_data.error.to_string()
    assert f"not found at {tmp_path / 'empty'}" in message and "materialize" in message
    assert "RANDOM_DIFFUSION_STEP_STORAGE" in message


def test_step_storage_defaults_to_dagster_local_storage_on_one_box(monkeypatch):
    monkeypatch.delenv("RANDOM_DIFFUSION_STEP_STORAGE", raising=False)
    monkeypatch.delenv("RANDOM_DIFFUSION_EXECUTOR", raising=False)
    assert step_storage_location() is None
    from random_diffusion_dagster.definitions import defs

    assert "io_manager" not in defs.resources  # Dagster's own, under DAGSTER_HOME


def test_step_storage_keeps_urls_and_resolves_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("RANDOM_DIFFUSION_STEP_STORAGE", "s3://bucket/step-values")
    assert step_storage_location() == "s3://bucket/step-values"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RANDOM_DIFFUSION_STEP_STORAGE", "step-values")
    assert step_storage_location() == str(Path(tmp_path, "step-values").resolve())


@pytest.mark.parametrize("executor", ["celery", "k8s"])
def test_several_machine_executors_need_step_storage(monkeypatch, executor):
    monkeypatch.delenv("RANDOM_DIFFUSION_STEP_STORAGE", raising=False)
    monkeypatch.setenv("RANDOM_DIFFUSION_EXECUTOR", executor)
    monkeypatch.setenv("RANDOM_DIFFUSION_CELERY_BROKER", "redis://broker-host:6379/0")  # one the boxes share
    with pytest.raises(SettingError, match="set RANDOM_DIFFUSION_STEP_STORAGE to a folder or fsspec URL"):
        step_storage_location()
