"""Real Dagster materializations through the tiny pipelines, on a real temporary instance."""

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from random_diffusion_dagster.defs.assets import (
    diffused_image,
    diffusion_report,
    model_catalog,
    prompt_list,
    source_images,
)
from random_diffusion_dagster.defs.checks import results_readable_on_disk
from random_diffusion_dagster.defs.resources import DatasetResource, DiffusionEngineResource
from random_diffusion_dagster.defs.run_ranges import partition_range_tags
from random_diffusion_dagster.engine.images import partition_key_for
from random_diffusion_dagster.engine.results import read_record

from helpers import make_image, result_file

ALL_ASSETS = [source_images, prompt_list, model_catalog, diffused_image, diffusion_report]


def _resources(project, engine=None, **dataset):
    return {
        "dataset": DatasetResource(**{**project, **dataset}),
        "engine": engine or DiffusionEngineResource(device="cpu"),
    }


def _materialize(instance, project, selection, tags=None, run_config=None, engine=None, **dataset):
    return dg.materialize(
        ALL_ASSETS,
        selection=selection,
        instance=instance,
        resources=_resources(project, engine, **dataset),
        tags=tags or {},
        run_config=run_config,
        raise_on_error=False,
    )


def _diffuse_all(instance, project, run_config=None, engine=None, **dataset):
    """Register the images, then one ranged run over every partition (as a backfill's run)."""
    _materialize(instance, project, ["source_images"], engine=engine, **dataset)
    keys = instance.get_dynamic_partitions("images")
    result = _materialize(
        instance,
        project,
        ["prompt_list", "model_catalog", "image_draw", "diffused_image"],
        tags=partition_range_tags(keys[0], keys[-1]),
        run_config=run_config,
        engine=engine,
        **dataset,
    )
    return keys, result


def _partition_metadata(instance, key):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("diffused_image"), asset_partitions=[key]), limit=1
    ).records
    return {name: value.value for name, value in records[0].asset_materialization.metadata.items()}


def _run_figures(instance, result):
    """The run's totals, from its tags (where the run page shows them)."""
    tags = instance.get_run_by_id(result.run_id).tags
    return {k.removeprefix("random_diffusion/"): v for k, v in tags.items() if k.startswith("random_diffusion/")}


def _pixels(path):
    return np.asarray(Image.open(path))


def test_source_images_registers_partitions_and_lists_skipped_files(instance, project):
    Path(project["images_dir"], "notes.txt").write_text("not an image")
    result = _materialize(instance, project, ["source_images"])
    assert result.success
    assert instance.get_dynamic_partitions("images") == ["blue.webp", partition_key_for("green photo.jpg"), "red.png"]
    metadata = result.asset_materializations_for_node("source_images")[0].metadata
    assert metadata["count"].value == 3 and metadata["skipped"].value == 1
    skipped = {record.data["name"]: record.data["reason"] for record in metadata["skipped_files"].value.records}
    assert "notes.txt" in skipped and "data:image/jpeg;base64," in metadata["preview"].value


def test_one_ranged_run_materializes_every_partition_with_its_own_metadata(instance, project):
    keys, result = _diffuse_all(instance, project)
    assert result.success
    assert instance.get_materialized_partitions(dg.AssetKey("diffused_image")) == set(keys)
    per_partition = {key: _partition_metadata(instance, key) for key in keys}
    for key, metadata in per_partition.items():
        for field in (
            "prompt",
            "model",
            "seed",
            "strength",
            "num_inference_steps",
            "guidance_scale",
            "source_size",
            "output_size",
            "pipeline_load_seconds",
            "inference_seconds",
            "total_seconds",
            "rss_peak_mb",
            "device",
            "output_path",
            "preview",
        ):
            assert field in metadata, (key, field)
        assert Path(metadata["output_path"]) == result_file(project["images_dir"], project["output_dir"], key)
        assert str(read_record(metadata["output_path"]).seed) == metadata["seed"]  # a setting: text, not plotted
        assert isinstance(metadata["inference_seconds"], float)  # a measurement: plotted
        assert "vram_peak_allocated_mb" not in metadata and metadata["device"] == "cpu"  # no GPU, no VRAM figure
    assert len({m["seed"] for m in per_partition.values()}) == len(keys)
    assert {m["source_size"] for m in per_partition.values()} == {"80x60", "60x90", "100x40"}
    # The source's aspect ratio is kept (padding to multiples of 8 is cropped off); a thin image keeps
    # a short side of at least 32 px.
    assert {m["output_size"] for m in per_partition.values()} == {"64x48", "43x64", "80x32"}
    run = _run_figures(instance, result)
    models_used = {m["model"] for m in per_partition.values()}
    assert run["pipeline_loads"] == str(len(models_used)) and run["generated"] == str(len(keys))
    assert all("generated" not in m and "pipeline_loads" not in m for m in per_partition.values())


def test_a_run_reads_the_registered_partitions_a_fixed_number_of_times_however_many_it_covers(
    instance, project, monkeypatch
):
    """Dagster's per-partition metadata call reads every registered key each time: with 100,000 images registered,
    a run of 128 would read 12.8 million keys. A run reads them as often for 15 partitions as for 3."""
    for index in range(12):
        make_image(Path(project["images_dir"]) / f"extra{index:02d}.png", color=(10 * index, 90, 160))
    _materialize(instance, project, ["source_images"])
    keys = instance.get_dynamic_partitions("images")
    reads_by_run_size = {}
    for covered in (keys[:3], keys):
        reads = []
        with monkeypatch.context() as patch:
            for name in ("get_dynamic_partitions", "has_dynamic_partition"):
                patch.setattr(dg.DagsterInstance, name, _counted(getattr(dg.DagsterInstance, name), reads))
            result = _materialize(
                instance,
                project,
                ["prompt_list", "model_catalog", "image_draw", "diffused_image"],
                tags=partition_range_tags(covered[0], covered[-1]),
            )
        assert result.success
        reads_by_run_size[len(covered)] = len(reads)
    assert reads_by_run_size[3] == reads_by_run_size[15], reads_by_run_size
    assert instance.get_materialized_partitions(dg.AssetKey("diffused_image")) == set(keys)
    for key in keys:
        result = result_file(project["images_dir"], project["output_dir"], key)
        assert _partition_metadata(instance, key)["output_path"] == str(result)


def _counted(method, calls: list):
    def counted(self, *args, **kwargs):
        calls.append(method.__name__)
        return method(self, *args, **kwargs)

    return counted


def test_same_seed_reproduces_pixels_and_a_new_seed_rerolls(instance, project):
    keys, _ = _diffuse_all(instance, project)
    first = {
        k: (_partition_metadata(instance, k), _pixels(result_file(project["images_dir"], project["output_dir"], k)))
        for k in keys
    }
    for path in Path(project["output_dir"]).glob("*.png"):
        path.unlink()
    _diffuse_all(instance, project)
    for key in keys:
        metadata = _partition_metadata(instance, key)
        assert (metadata["prompt"], metadata["model"], metadata["seed"]) == (
            first[key][0]["prompt"],
            first[key][0]["model"],
            first[key][0]["seed"],
        )
        assert metadata["reused_existing"] is False
        assert np.array_equal(_pixels(metadata["output_path"]), first[key][1])
    _, result = _diffuse_all(instance, project, seed=7)
    assert result.success
    assert all(_partition_metadata(instance, k)["seed"] != first[k][0]["seed"] for k in keys)


def test_run_config_prompt_list_overrides_the_file(instance, project):
    override = {"ops": {"prompt_list": {"config": {"prompt_list": ["cat dancing in rain"]}}}}
    keys, result = _diffuse_all(instance, project, run_config=override)
    assert result.success
    assert {_partition_metadata(instance, k)["prompt"] for k in keys} == {"cat dancing in rain"}


def test_empty_prompt_override_fails_with_a_clear_error(instance, project):
    _materialize(instance, project, ["source_images"])
    result = _materialize(
        instance, project, ["prompt_list"], run_config={"ops": {"prompt_list": {"config": {"prompt_list": [" "]}}}}
    )
    assert not result.success
    assert "prompt list from run config `prompt_list` is empty" in str(
        result.get_step_failure_events()[0].step_failure_data.error
    )


def test_a_submitted_list_with_use_prompts_file_is_refused_as_contradictory(instance, project):
    config = {"prompt_list": ["cat dancing in rain"], "use_prompts_file": True}  # the list silently won
    result = _materialize(instance, project, ["prompt_list"], run_config={"ops": {"prompt_list": {"config": config}}})
    assert not result.success
    error = str(result.get_step_failure_events()[0].step_failure_data.error)
    assert "prompt_list and use_prompts_file: true ask for two different prompt lists" in error


def test_a_bad_image_fails_the_run_naming_it_and_a_rerun_redoes_only_it(instance, project):
    bad = make_image(Path(project["images_dir"]) / "bad.png")
    original = bad.read_bytes()
    bad.write_bytes(original[:70])  # truncated after the header: discovered, but cannot be decoded
    keys, result = _diffuse_all(instance, project)
    assert "bad.png" in keys and not result.success
    error = str(result.get_step_failure_events()[0].step_failure_data.error)
    assert "1 of 4 images failed; the 3 finished are saved and recorded" in error and "- bad.png: " in error
    good = [k for k in keys if k != "bad.png"]
    assert all(result_file(project["images_dir"], project["output_dir"], k).is_file() for k in good)
    assert not (Path(project["output_dir"]) / "bad.png.png").exists()

    bad.write_bytes(original)  # the user fixes the file
    _, rerun = _diffuse_all(instance, project)
    assert rerun.success
    run = _run_figures(instance, rerun)
    assert run["generated"] == "1" and run["reused"] == "3"
    assert (run["batch_size"], run["pipeline_calls"]) == ("1", "1") and int(run["batch_size_limit"]) > 1
    assert all(_partition_metadata(instance, k)["reused_existing"] for k in good)
    assert _partition_metadata(instance, "bad.png")["reused_existing"] is False
    # A reused result's timings are its making run's: said in words, not plotted as this run's.
    reused = _partition_metadata(instance, good[0])
    assert "inference_seconds" not in reused and "batch_size" not in reused
    assert reused["when_made"].startswith("reused; made 20") and " inference " in reused["when_made"]
    assert " peak RSS " in reused["when_made"]  # the making run's memory, on a CPU too
    assert isinstance(_partition_metadata(instance, "bad.png")["inference_seconds"], float)

    _, all_reused = _diffuse_all(instance, project)
    figures = _run_figures(instance, all_reused)
    assert figures["generated"] == "0" and figures["images_per_second"] == "" and figures["batch_size"] == ""


def test_report_summarises_per_model_and_draws_a_contact_sheet(instance, project):
    keys, _ = _diffuse_all(instance, project)
    result = _materialize(instance, project, ["diffusion_report"])
    assert result.success
    metadata = result.asset_materializations_for_node("diffusion_report")[0].metadata
    assert metadata["images"].value == len(keys) and metadata["failures"].value == 0
    summary = pd.read_csv(metadata["summary_csv"].value)
    models = {_partition_metadata(instance, k)["model"] for k in keys}
    assert set(summary["model"]) == models and summary["images"].sum() == len(keys)
    assert (summary["mean_inference_s"] > 0).all() and (
        summary["p95_inference_s"] >= summary["mean_inference_s"] - 1e-9
    ).all()
    assert (summary["peak_rss_mb"] > 0).all()  # memory on a CPU too: the process's peak
    shown = {column.name for column in metadata["summary"].value.schema.columns}
    assert "rss_mb" in shown and "vram_reserved_mb" not in shown  # no GPU memory on a CPU: left out
    with Image.open(metadata["contact_sheet_path"].value) as sheet:
        assert sheet.height >= 128 * len(keys)
    inline = metadata["contact_sheet"].value  # every pair fits inline; tests/test_report.py has one that does not
    assert inline.startswith("![contact sheet](data:image/jpeg;base64,")
    note = f"Each source beside its result; contact_sheet_path (`{sheet.filename}`) captions them with prompt, model"
    assert inline.endswith(f")\n\n{note} and seed.")


def test_partition_preview_shows_source_beside_result_and_report_tables_are_tables(instance, project):
    import base64
    import io
    import re

    keys, _ = _diffuse_all(instance, project)
    preview = _partition_metadata(instance, "red.png")["preview"]
    data = base64.b64decode(re.search(r"base64,([A-Za-z0-9+/=]+)", preview).group(1))
    with Image.open(io.BytesIO(data)) as strip:  # two 4:3 pictures side by side, "source" and "result" under them
        assert strip.width > 2.4 * strip.height
        band = np.asarray(strip.convert("L"))[-strip.height // 12 :]  # the label band, white but for its words
        halves = np.array_split(band, 2, axis=1)
        assert all((half < 128).sum() > 10 for half in halves) and (band > 200).mean() > 0.8
    report = _materialize(instance, project, ["diffusion_report"]).asset_materializations_for_node("diffusion_report")
    summary = report[0].metadata["summary"].value
    assert [c.name for c in summary.schema.columns][:2] == ["model", "images"]
    assert sum(record.data["images"] for record in summary.records) == len(keys)


def test_the_check_in_a_diffusion_run_reads_that_runs_results_and_alone_reads_them_all(instance, project):
    keys, _ = _diffuse_all(instance, project)
    result_file(project["images_dir"], project["output_dir"], keys[0]).unlink()  # a result lost after it was recorded
    make_image(Path(project["images_dir"]) / "late.png", color=(90, 90, 10))
    _materialize(instance, project, ["source_images"])
    resources = _resources(project)
    in_run = dg.materialize(
        ALL_ASSETS + [results_readable_on_disk],
        selection=dg.AssetSelection.assets("prompt_list", "model_catalog", "image_draw", "diffused_image")
        | dg.AssetSelection.checks(results_readable_on_disk),
        instance=instance,
        resources=resources,
        partition_key="late.png",
    )
    (evaluation,) = in_run.get_asset_check_evaluations()
    assert evaluation.passed and evaluation.metadata["checked"].value == 1  # this run's one result, not all four
    alone = dg.materialize(
        ALL_ASSETS + [results_readable_on_disk],
        selection=dg.AssetSelection.checks(results_readable_on_disk),
        instance=instance,
        resources=resources,
    )
    (evaluation,) = alone.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.metadata["checked"].value == len(keys) + 1
    assert keys[0] in evaluation.metadata["partitions"].value


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"device": "banana"}, "'banana' is not a torch device: use cuda, cuda:1, mps or cpu"),
        ({"dtype": "float8"}, "'float8' is not one of auto, float16, bfloat16, float32"),
        ({"compile_mode": "fast"}, "'fast' is not a torch.compile mode: use one of default, reduce-overhead"),
        ({"torch_threads": 0}, "torch_threads\n  Input should be greater than or equal to 1"),
        ({"memory_budget_mb": -5}, "memory_budget_mb\n  Input should be greater than 0"),
    ],
)
def test_an_unusable_engine_setting_fails_the_run_naming_it_before_any_image(instance, project, setting, message):
    """Launchpad config passes Dagster's type check; these values failed deep in torch (or, -5 MiB, never)."""
    _materialize(instance, project, ["source_images"])
    keys = instance.get_dynamic_partitions("images")
    result = dg.materialize(
        ALL_ASSETS,
        selection=["prompt_list", "model_catalog", "image_draw", "diffused_image"],
        instance=instance,
        resources={"dataset": DatasetResource(**project), "engine": DiffusionEngineResource.configure_at_launch()},
        run_config={"resources": {"engine": {"config": setting}}},
        tags=partition_range_tags(keys[0], keys[-1]),
        raise_on_error=False,
    )
    assert not result.success
    # The engine starts with the run, before any step: its failure is the run's resource failure.
    failures = [event for event in result.all_events if event.event_type_value == "RESOURCE_INIT_FAILURE"]
    errors = [str(event.event_specific_data.error) for event in failures]
    assert any(message in error for error in errors), errors
    assert not list(Path(project["output_dir"]).glob("*.png"))
