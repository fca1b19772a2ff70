"""Model comparisons: every catalog model on chosen images, on a real instance with the tiny models."""

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from random_diffusion_dagster.defs.assets import (
    comparison_report,
    diffused_image,
    model_catalog,
    model_comparison,
    prompt_list,
    source_images,
)
from random_diffusion_dagster.defs.resources import DatasetResource, DiffusionEngineResource
from random_diffusion_dagster.defs.run_ranges import partition_range_tags
from random_diffusion_dagster.engine.comparison import grid_size
from random_diffusion_dagster.engine.plan import snapshot_source
from random_diffusion_dagster.engine.results import read_record
from random_diffusion_dagster.runtime.cli import _compared_images, main

from helpers import make_image, write_catalog

ASSETS = [source_images, prompt_list, model_catalog, diffused_image, model_comparison, comparison_report]
MODELS = ("tiny-sd15", "tiny-sd2", "tiny-sd14")


def _project(root, models_dir, names=MODELS):
    make_image(root / "images" / "red.png", color=(200, 40, 40))
    make_image(root / "images" / "green.jpg", size=(60, 90), color=(40, 200, 40))
    make_image(root / "images" / "blue.png", size=(100, 40), color=(40, 40, 200))
    (root / "prompts.txt").write_text("a red fox\nan ice castle\nthe sea at night\n")
    catalog = write_catalog(root / "models.yaml", models_dir, names=names)
    return {
        "images_dir": str(root / "images"),
        "output_dir": str(root / "outputs"),
        "prompts_file": str(root / "prompts.txt"),
        "models_file": str(catalog),
        "seed": 0,
    }


def _materialize(instance, project, selection, tags=None, run_config=None):
    resources = {"dataset": DatasetResource(**project), "engine": DiffusionEngineResource(device="cpu")}
    return dg.materialize(
        ASSETS,
        selection=selection,
        instance=instance,
        resources=resources,
        tags=tags or {},
        run_config=run_config,
        raise_on_error=False,
    )


def _compare(instance, project, first, last, config=None):
    """One ranged run over images first..last x every catalog model, as the CLI and a backfill launch it."""
    models = instance.get_dynamic_partitions("models")
    tags = partition_range_tags(
        str(dg.MultiPartitionKey({"image": first, "model": models[0]})),
        str(dg.MultiPartitionKey({"image": last, "model": models[-1]})),
    )
    run_config = {"ops": {"model_comparison": {"config": config}}} if config else None
    return _materialize(instance, project, ["prompt_list", "model_catalog", "model_comparison"], tags, run_config)


def _loads_logged(instance, run_id):
    return sum("Loaded model" in (event.user_message or "") for event in instance.all_logs(run_id))


def _cell(instance, image, model):
    key = dg.MultiPartitionKey({"image": image, "model": model})
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("model_comparison"), asset_partitions=[key]), limit=1
    ).records
    return {name: value.value for name, value in records[0].asset_materialization.metadata.items()}


@pytest.fixture(scope="module")
def compared(tmp_path_factory, models_dir):
    """Three images diffused; two of them compared across the three-model catalog; the report drawn."""
    project = _project(tmp_path_factory.mktemp("comparison"), models_dir)
    with dg.instance_for_test() as instance:
        _materialize(instance, project, ["source_images", "model_catalog"])
        keys = instance.get_dynamic_partitions("images")
        diffused = _materialize(
            instance,
            project,
            ["prompt_list", "model_catalog", "image_draw", "diffused_image"],
            partition_range_tags(keys[0], keys[-1]),
        )
        chosen = keys[:2]
        comparison = _compare(instance, project, chosen[0], chosen[-1])
        report = _materialize(instance, project, ["comparison_report"])
        assert diffused.success and comparison.success and report.success
        yield {
            "instance": instance,
            "project": project,
            "images": chosen,
            "comparison": comparison,
            "report": report.asset_materializations_for_node("comparison_report")[0].metadata,
        }


def test_model_catalog_registers_one_models_partition_per_catalog_model(compared):
    assert compared["instance"].get_dynamic_partitions("models") == list(MODELS)


def test_each_cell_uses_its_images_own_drawn_prompt_and_seed(compared):
    instance, project = compared["instance"], compared["project"]
    dataset = DatasetResource(**project)
    planner = dataset.planner(dataset.prompts(), dataset.catalog())
    for image in compared["images"]:
        path = f"{project['images_dir']}/{image}"
        drawn = planner.task(image, path, snapshot_source(path))
        for model in MODELS:
            metadata = _cell(instance, image, model)
            assert (metadata["prompt"], metadata["seed"], metadata["model"]) == (drawn.prompt, str(drawn.seed), model)
            record = read_record(metadata["output_path"])
            assert metadata["output_path"].endswith(f"/comparisons/{image}/{model}.png")
            assert (record.prompt, record.seed, record.model) == (drawn.prompt, drawn.seed, model)


def test_the_cell_of_the_drawn_model_is_pixel_identical_to_the_diffused_image(compared):
    instance = compared["instance"]
    for image in compared["images"]:
        diffused = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("diffused_image"), asset_partitions=[image]), limit=1
        ).records[0]
        diffused_path = diffused.asset_materialization.metadata["output_path"].value
        drawn_model = diffused.asset_materialization.metadata["model"].value
        cell = _cell(instance, image, drawn_model)
        assert cell["fingerprint"] == diffused.asset_materialization.metadata["fingerprint"].value
        assert np.array_equal(np.asarray(Image.open(cell["output_path"])), np.asarray(Image.open(diffused_path)))
        assert cell["output_path"] != diffused_path  # comparisons never overwrite a diffused result
        for name in ("inference_seconds", "pipeline_load_seconds", "total_seconds", "rss_peak_mb", "device"):
            assert name in cell


def test_a_comparison_run_loads_each_model_once(compared):
    instance, run_id = compared["instance"], compared["comparison"].run_id
    assert _loads_logged(instance, run_id) == len(MODELS)
    assert instance.get_run_by_id(run_id).tags["random_diffusion/pipeline_loads"] == str(len(MODELS))
    assert instance.get_run_by_id(run_id).tags["random_diffusion/generated"] == str(2 * len(MODELS))


def test_the_report_draws_one_labelled_grid_per_compared_image(compared):
    report, project = compared["report"], compared["project"]
    assert report["images"].value == 2
    labels = report["labels"].value
    assert set(labels) == set(compared["images"])
    for image in compared["images"]:
        assert labels[image] == {"columns": ["source", *MODELS], "rows": ["catalog settings"]}
        with Image.open(f"{project['output_dir']}/comparisons/{image}/grid.png") as grid:
            assert grid.size == grid_size(1 + len(MODELS), 1)
    summary = {record.data["model"]: record.data for record in report["summary"].value.records}
    assert set(summary) == set(MODELS) and all(row["cells"] == 2 and row["images"] == 2 for row in summary.values())
    assert all(row["mean_inference_s"] > 0 and row["peak_rss_mb"] > 0 for row in summary.values())
    assert report["grid"].value.count("data:image/jpeg;base64,") == 2


def test_strength_and_steps_axes_become_rows_and_a_removed_model_loses_its_column(tmp_path, models_dir):
    project = _project(tmp_path, models_dir, names=MODELS[:2])
    with dg.instance_for_test() as instance:
        _materialize(instance, project, ["source_images", "model_catalog"])
        image = instance.get_dynamic_partitions("images")[0]
        result = _compare(instance, project, image, image, {"strengths": [0.5, 1.0], "steps": [2, 4]})
        assert result.success and _loads_logged(instance, result.run_id) == 2  # 8 images, one load per model
        files = _cell(instance, image, "tiny-sd2")["variant_files"]
        assert list(files) == [
            "strength 0.5, steps 2",
            "strength 0.5, steps 4",
            "strength 1, steps 2",
            "strength 1, steps 4",
        ]
        assert files["strength 0.5, steps 4"].endswith(f"/comparisons/{image}/tiny-sd2-s0.5-steps4.png")
        record = read_record(files["strength 1, steps 2"])
        assert (record.strength, record.num_inference_steps) == (1.0, 2)

        write_catalog(tmp_path / "models.yaml", models_dir, names=MODELS[:1])
        assert _materialize(instance, project, ["model_catalog"]).success
        assert instance.get_dynamic_partitions("models") == [MODELS[0]]
        report = _materialize(instance, project, ["comparison_report"])
        labels = report.asset_materializations_for_node("comparison_report")[0].metadata["labels"].value[image]
        assert labels["columns"] == ["source", MODELS[0]] and len(labels["rows"]) == 4
        with Image.open(tmp_path / "outputs" / "comparisons" / image / "grid.png") as grid:
            assert grid.size == grid_size(2, 4)


def test_a_bad_strength_is_refused_naming_the_value_before_any_model_loads(tmp_path, models_dir):
    project = _project(tmp_path, models_dir, names=MODELS[:1])
    with dg.instance_for_test() as instance:
        _materialize(instance, project, ["source_images", "model_catalog"])
        image = instance.get_dynamic_partitions("images")[0]
        for config, expected in (
            ({"strengths": [1.5]}, "strength 1.5 is outside (0, 1]"),
            ({"strengths": [0.1], "steps": [4]}, "runs no denoising step"),
            ({"steps": [100000]}, "steps 100000 is outside 1 to 1000"),  # the catalog's bound: no 6-minute cell
        ):
            result = _compare(instance, project, image, image, config)
            assert not result.success
            error = str(result.get_step_failure_events()[0].step_failure_data.error)
            assert expected in error and any(
                fix in error for fix in ("raise the strength", "at most 1", "in that range")
            )
            assert _loads_logged(instance, result.run_id) == 0
        assert not (tmp_path / "outputs" / "comparisons").exists()


def test_compare_command_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = capsys.readouterr().out
    for option in ("IMAGE", "--strength", "--steps", "--seed", "--batch-size", "--max-partitions-per-run"):
        assert option in text


@pytest.mark.parametrize("partitions", ["image", "folder"])
def test_compare_names_an_image_by_key_by_path_under_the_images_folder_or_by_path_to_the_file(tmp_path, partitions):
    """With image partitions a nested image named by its path, or by a path whose key is not the path itself (a
    space), was not found: only its file name was looked up, as if it were at the top."""
    images = tmp_path / "images"
    nested, top = make_image(images / "animal" / "x y.jpg"), make_image(images / "top.png")
    dataset = DatasetResource(images_dir=str(images), partitions=partitions)
    files = dataset.source_files()
    key = next(file.partition_key for file in files if file.name == "x y.jpg")
    assert key.startswith("animal/x_y.jpg-")  # the key is not the path
    registered = sorted({dataset.granularity.partition_of(file.partition_key) for file in files})
    names = [key, "animal/x y.jpg", str(nested), "top.png", str(top), "x y.jpg", "animal/top.png"]
    wanted, unknown = _compared_images(dataset, registered, names)
    assert wanted == [key, key, key, "top.png", "top.png"]
    assert unknown == ["x y.jpg", "animal/top.png"]  # a nested file by its name alone: which folder's is unsaid


def test_folder_cells_compare_the_named_images_each_with_its_own_draw_and_grid(tmp_path, models_dir):
    """RANDOM_DIFFUSION_PARTITIONS=folder: a cell is a folder x a model; run config `images` picks images in it, and
    the report merges a cell's comparisons, so two runs over one folder give each image its grid."""
    images = tmp_path / "images"
    for index, color in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
        make_image(images / "cat" / f"c{index}.png", color=color)
    make_image(images / "dog" / "d0.png", color=(120, 120, 40))
    (images / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "prompts.txt").write_text("a {label} in the snow\nan ice castle\n")
    project = {
        "images_dir": str(images),
        "output_dir": str(tmp_path / "outputs"),
        "prompts_file": str(tmp_path / "prompts.txt"),
        "models_file": str(write_catalog(tmp_path / "models.yaml", models_dir, names=MODELS[:2])),
        "seed": 0,
        "partitions": "folder",
    }
    with dg.instance_for_test() as instance:
        assert _materialize(instance, project, ["source_images", "model_catalog"]).success
        assert instance.get_dynamic_partitions("images") == ["cat", "dog"]
        first = _compare(instance, project, "cat", "cat", {"images": ["cat/c0.png", "cat/c2.png"]})
        assert first.success and _loads_logged(instance, first.run_id) == 2
        cell = _cell(instance, "cat", MODELS[1])
        assert (cell["images"], cell["generated"], cell["not_made"]) == (2, 2, 0)
        assert set(cell["compared_files"]) == {"cat/c0.png", "cat/c2.png"}
        dataset = DatasetResource(**project)
        planner = dataset.planner(dataset.prompts(), dataset.catalog())
        for image, files in cell["compared_files"].items():
            path = f"{project['images_dir']}/{image}"
            drawn = planner.task(image, path, snapshot_source(path))
            record = read_record(files["catalog settings"])
            assert (record.prompt, record.seed, record.model) == (drawn.prompt, drawn.seed, MODELS[1])
            assert files["catalog settings"].endswith(f"/comparisons/{image}/{MODELS[1]}.png")

        whole = _compare(instance, project, "cat", "dog")  # as a UI backfill launches it: every image of each folder
        assert whole.success
        assert _cell(instance, "dog", MODELS[0])["images"] == 1
        cat = _cell(instance, "cat", MODELS[0])
        assert (cat["images"], cat["generated"], cat["reused"]) == (3, 1, 2)  # c0 and c2 were compared already
        report = _materialize(instance, project, ["comparison_report"])
        metadata = report.asset_materializations_for_node("comparison_report")[0].metadata
        assert set(metadata["labels"].value) == {"cat/c0.png", "cat/c1.png", "cat/c2.png", "dog/d0.png"}
        for image in metadata["labels"].value:
            with Image.open(tmp_path / "outputs" / "comparisons" / image / "grid.png") as grid:
                assert grid.size == grid_size(1 + 2, 1)
        cells = {record.data["model"]: record.data["cells"] for record in metadata["summary"].value.records}
        assert cells == {MODELS[0]: 2, MODELS[1]: 2}

        absent = _compare(instance, project, "dog", "dog", {"images": ["cat/c1.png"]})
        error = str(absent.get_step_failure_events()[0].step_failure_data.error)
        assert not absent.success and "none of the images run config `images` names is in folder 'dog'" in error
