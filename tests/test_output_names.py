"""Result file names a person recognises (`coffee.jpg` -> `coffee.png`), unique and stable, and the move of
results written under the old names (`<key>.png`) without losing or redoing any of them."""

import dataclasses
import datetime
import shutil
from pathlib import Path

import dagster as dg
import fsspec
import pytest
from PIL import Image, PngImagePlugin

from random_diffusion_dagster.defs.automation.catch_up_schedule import catch_up_schedule
from random_diffusion_dagster.defs.checks import results_readable_on_disk
from random_diffusion_dagster.defs.resources import DatasetResource, DiffusionEngineResource
from random_diffusion_dagster.defs.run_ranges import partition_range_tags
from random_diffusion_dagster.engine.catalog import load_catalog
from random_diffusion_dagster.engine.images import partition_key_for, scan_folder
from random_diffusion_dagster.engine.pipelines import PipelineCache
from random_diffusion_dagster.engine.plan import Planner
from random_diffusion_dagster.engine.report import build_report
from random_diffusion_dagster.engine.results import (
    adopt_earlier_result,
    keyed_result_path,
    output_file_name,
    path_inside,
    read_record,
    result_path,
    variant_file_name,
)
from random_diffusion_dagster.engine.runner import run_tasks

from helpers import make_image, source_paths, write_catalog
from test_assets import ALL_ASSETS, _partition_metadata
from test_intake import _adversarial_names

# Sources whose results move: `.jpg`/`.JPG` ones, a file without an extension (whose oldest name, `coffee.png`,
# is the new name of `coffee.jpg`) and a name with spaces (named by its key before); `tea.png` keeps its name.
SOURCES = ("coffee.jpg", "IMG_7.JPG", "coffee", "tea.png", "harbour at dusk.jpg")
NEW_NAMES = {
    "coffee.jpg": "coffee.png",
    "IMG_7.JPG": "IMG_7.PNG",
    "coffee": "coffee..png",
    "tea.png": "tea.png.png",
    "harbour at dusk.jpg": "harbour at dusk.png",
}


@pytest.mark.parametrize(
    ("source_path", "result"),
    [
        ("coffee.jpg", "coffee.png"),
        ("IMG_0042.JPG", "IMG_0042.PNG"),
        ("coffee.png", "coffee.png.png"),
        ("coffee.webp", "coffee.webp.png"),
        ("coffee.jpeg", "coffee.jpeg.png"),
        ("photo.2024.jpg", "photo.2024.jpg.png"),
        ("coffee", "coffee..png"),
        ("harbour at dusk.jpg", "harbour at dusk.png"),
        ("cat/IMG 0042 (copy).jpg", "cat/IMG 0042 (copy).png"),
        ("Été à Paris/Ünïcödé 日本.JPG", "Été à Paris/Ünïcödé 日本.PNG"),
        ("x~v2.jpg", f"{partition_key_for('x~v2.jpg')}~.png"),  # `~` marks variants
        ("coffee.", f"{partition_key_for('coffee.')}~.png"),  # would meet `coffee`'s `coffee..png`
        ("a\\b/c.jpg", partition_key_for("a\\b") + "~/c.png"),
        ("b" * 130 + ".jpg", f"{partition_key_for('b' * 130 + '.jpg')}~.png"),  # too long with its extension
    ],
)
def test_a_result_keeps_its_sources_name_and_folders_with_the_extension_changed(source_path, result):
    assert output_file_name(source_path) == result


def test_result_names_are_unique_over_adversarial_names_folders_and_variants():
    stems = ["coffee", "coffee.png", "coffee.jpg", "a.b", "IMG_1", "x-", "x_", "x~v2", "x~", "harbour at dusk"]
    extensions = ["", ".jpg", ".JPG", ".jpeg", ".png", ".PNG", ".webp", ".jpg.png", ".png.jpg", ".", "~v1.png"]
    names = list(dict.fromkeys(_adversarial_names() + [s + e for s in stems for e in extensions]))
    names = [name for name in names if name not in (".", "..")]  # no file has these names
    # Names shaped like what a replaced name becomes: `x~v2.jpg` -> `<key>~.png`, and a kept name equal to that key.
    crafted = [partition_key_for(name) for name in ("x~v2.jpg", "a\\b", "coffee.")]
    folders = ["", "cat", "a\\b", *crafted, "Été", "x~"]
    paths = [f"{folder}/{name}" if folder else name for folder in folders for name in names + crafted]
    results = {}
    for path in paths:
        for variant in (0, 1, 2):
            result = variant_file_name(output_file_name(path), variant)
            assert result not in results, f"{path!r} ~v{variant} and {results.get(result)!r} share {result!r}"
            assert result.lower().endswith(".png") and result.count("/") == path.count("/")
            results[result] = (path, variant)
    assert len(results) == 3 * len(paths) > 20_000


def _planner(folder: Path, output_dir, models_dir) -> Planner:
    catalog = write_catalog(folder / "models.yaml", models_dir, names=("tiny-sd15",))
    return Planner(["a red fox"], load_catalog(catalog), 0, str(output_dir))


def test_same_stem_sources_in_one_folder_get_their_own_results(tmp_path, models_dir):
    images = tmp_path / "images"
    names = ["coffee.jpg", "coffee.JPG", "coffee.png", "coffee.webp", "coffee", "coffee.png.jpg"]
    for index, name in enumerate(names):
        make_image(images / name, size=(64, 48), color=(40 * index, 90, 200 - 30 * index))
    tasks, _ = _planner(tmp_path, tmp_path / "outputs", models_dir).plan(scan_folder(images))
    summary = run_tasks(tasks, PipelineCache(device="cpu"), log=lambda m: None)
    assert [r.status for r in summary.results] == ["generated"] * len(names)
    written = sorted(p.name for p in (tmp_path / "outputs").iterdir() if p.is_file())
    assert written == sorted(
        ["coffee.png", "coffee.PNG", "coffee.png.png", "coffee.webp.png", "coffee..png", "coffee.png.jpg.png"]
    )
    for name in names:  # each file holds its own source's result
        assert read_record(tmp_path / "outputs" / output_file_name(name)).source_file == name


def test_a_result_name_stays_when_other_files_come_and_go(tmp_path, models_dir):
    images, outputs = tmp_path / "images", tmp_path / "outputs"
    make_image(images / "coffee.jpg")
    planner = _planner(tmp_path, outputs, models_dir)

    def coffee_output() -> str:
        tasks, _ = planner.plan(scan_folder(images))
        return next(t.output_path for t in tasks if t.key == "coffee.jpg")

    alone = coffee_output()
    for name in ("coffee.png", "coffee", "coffee.webp"):
        make_image(images / name, color=(10, 200, 10))
    crowded = coffee_output()
    (images / "coffee.png").unlink()
    assert alone == crowded == coffee_output() == str(outputs.resolve() / "coffee.png")


def _oldest_path(outputs, key: str):
    """`<key>.png`: where the first versions wrote a result."""
    return path_inside(outputs, f"{key}.png")


def _old_deployment_outputs(images: Path, outputs, planner: Planner) -> dict[str, bytes]:
    """Results made by the engine under the names used before (`<key>.png`), as an older version left them."""
    tasks, _ = planner.plan(scan_folder(images))
    legacy = [dataclasses.replace(t, output_path=str(_oldest_path(outputs, t.key))) for t in tasks]
    summary = run_tasks(legacy, PipelineCache(device="cpu"), log=lambda m: None)
    assert [r.status for r in summary.results] == ["generated"] * len(tasks)
    assert read_record(_oldest_path(outputs, "coffee.jpg")).output_file == "coffee.jpg.png"
    return {t.source_file: location_bytes(t.output_path) for t in legacy}


def location_bytes(path) -> bytes:
    with fsspec.open(str(path), "rb") as handle:
        return handle.read()


def _make_sources(images: Path) -> None:
    for index, name in enumerate(SOURCES):
        make_image(images / name, size=(64, 48), color=(60 * index, 120, 200 - 40 * index))


def _assert_moved_intact(outputs: Path, old: dict[str, bytes]) -> None:
    """Every old result is now under its new name, byte for byte; no old name is left but `tea.png.png`."""
    for name, data in old.items():
        assert (outputs / NEW_NAMES[name]).read_bytes() == data, name
    assert sorted(p.name for p in outputs.iterdir() if p.is_file()) == sorted(NEW_NAMES.values())


def test_a_run_reuses_results_left_under_old_names_and_moves_them(tmp_path, models_dir):
    images, outputs = tmp_path / "images", tmp_path / "outputs"
    _make_sources(images)
    planner = _planner(tmp_path, outputs, models_dir)
    old = _old_deployment_outputs(images, outputs, planner)
    assert sorted(p.name for p in outputs.glob("*.png")) == sorted(f"{partition_key_for(name)}.png" for name in SOURCES)

    tasks, _ = planner.plan(scan_folder(images))
    summary = run_tasks(tasks, PipelineCache(device="cpu"), log=lambda m: None)
    assert {r.task.source_file: r.status for r in summary.results} == dict.fromkeys(SOURCES, "reused")
    _assert_moved_intact(outputs, old)


def test_a_jpg_result_moving_first_moves_the_extensionless_neighbours_old_result_aside(tmp_path, models_dir):
    images, outputs = tmp_path / "images", tmp_path / "outputs"
    _make_sources(images)
    old = _old_deployment_outputs(images, outputs, _planner(tmp_path, outputs, models_dir))
    # `coffee.png` holds the old result of `coffee`; it is where `coffee.jpg`'s result goes now.
    assert adopt_earlier_result(outputs, "coffee.jpg") == outputs.resolve() / "coffee.png"
    assert (outputs / "coffee.png").read_bytes() == old["coffee.jpg"]
    assert (outputs / "coffee..png").read_bytes() == old["coffee"]
    assert not (outputs / "coffee.jpg.png").exists()
    # Looking `coffee` up afterwards leaves `coffee.jpg`'s result where it is.
    assert adopt_earlier_result(outputs, "coffee") == outputs.resolve() / "coffee..png"
    assert read_record(outputs / "coffee.png").key == "coffee.jpg"


def test_a_result_under_its_new_name_wins_over_a_leftover_old_one(tmp_path, models_dir):
    images, outputs = tmp_path / "images", tmp_path / "outputs"
    make_image(images / "coffee.jpg")
    planner = _planner(tmp_path, outputs, models_dir)
    old = _old_deployment_outputs_for(images, outputs, planner)
    current = tmp_path / "current.png"
    shutil.copy(outputs / "coffee.jpg.png", current)
    Image.open(current).save(outputs / "coffee.png", pnginfo=_png_info_of(current))  # same record, other bytes
    newer = (outputs / "coffee.png").read_bytes()
    assert newer != old
    assert adopt_earlier_result(outputs, "coffee.jpg") == outputs.resolve() / "coffee.png"
    assert (outputs / "coffee.png").read_bytes() == newer
    assert (outputs / "coffee.jpg.png").read_bytes() == old  # left alone, never deleted


def _old_deployment_outputs_for(images: Path, outputs: Path, planner: Planner) -> bytes:
    tasks, _ = planner.plan(scan_folder(images))
    (task,) = [dataclasses.replace(t, output_path=str(_oldest_path(outputs, t.key))) for t in tasks]
    run_tasks([task], PipelineCache(device="cpu"), log=lambda m: None)
    return Path(task.output_path).read_bytes()


def _png_info_of(path: Path) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    with Image.open(path) as image:
        for key, value in image.text.items():
            info.add_itxt(key, value)
    return info


def test_old_named_results_count_for_the_schedule_check_report_and_a_run(tmp_path, models_dir):
    """An older deployment: Dagster recorded every partition, its files are under the old names."""
    images, outputs = tmp_path / "images", tmp_path / "outputs"
    _make_sources(images)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\nan ice castle\n")
    project = {
        "images_dir": str(images),
        "output_dir": str(outputs),
        "prompts_file": str(prompts),
        "models_file": str(write_catalog(tmp_path / "models.yaml", models_dir)),
        "seed": 0,
    }
    dataset = DatasetResource(**project)
    resources = {"dataset": dataset, "engine": DiffusionEngineResource(device="cpu")}
    assets = ALL_ASSETS + [results_readable_on_disk]
    with dg.instance_for_test() as instance:
        dg.materialize(assets, selection=["source_images"], instance=instance, resources=resources)
        keys = instance.get_dynamic_partitions("images")
        tags = partition_range_tags(keys[0], keys[-1])
        selection = ["prompt_list", "model_catalog", "image_draw", "diffused_image"]
        assert dg.materialize(assets, selection=selection, instance=instance, resources=resources, tags=tags).success
        for path in [p for p in outputs.iterdir() if p.is_file()]:
            path.unlink()
        old = _old_deployment_outputs(images, outputs, dataset.planner(dataset.prompts(), dataset.catalog()))
        saved = tmp_path / "old-outputs"
        shutil.copytree(outputs, saved)

        def back_to_old_names() -> None:
            shutil.rmtree(outputs)
            shutil.copytree(saved, outputs)

        with dg.build_schedule_context(
            instance=instance,
            resources={"dataset": dataset},
            scheduled_execution_time=datetime.datetime(2026, 1, 1, 3, tzinfo=datetime.timezone.utc),
        ) as context:
            assert isinstance(catch_up_schedule(context), dg.SkipReason)  # nothing missing, nothing redone
        _assert_moved_intact(outputs, old)

        back_to_old_names()
        check = dg.materialize(
            assets, selection=dg.AssetSelection.checks(results_readable_on_disk), instance=instance, resources=resources
        )
        assert check.get_asset_check_evaluations()[0].passed
        _assert_moved_intact(outputs, old)

        back_to_old_names()
        report = build_report(outputs, source_paths(images), images)
        assert (report.image_count, report.failure_count) == (len(SOURCES), 0)
        _assert_moved_intact(outputs, old)

        back_to_old_names()
        run = dg.materialize(assets, selection=selection, instance=instance, resources=resources, tags=tags)
        assert run.success
        sources = source_paths(images)
        for key in keys:
            metadata = _partition_metadata(instance, key)
            assert metadata["reused_existing"] is True, key
            assert metadata["output_path"] == str(result_path(outputs, sources[key]))
        _assert_moved_intact(outputs, old)


def test_old_named_results_move_on_an_fsspec_url(tmp_path, models_dir):
    url = "memory://rdd-names/outputs"
    memory = fsspec.filesystem("memory")
    memory.store.clear()
    images = tmp_path / "images"
    _make_sources(images)
    planner = _planner(tmp_path, url, models_dir)
    try:
        old = _old_deployment_outputs(images, url, planner)
        tasks, _ = planner.plan(scan_folder(images))
        summary = run_tasks(tasks, PipelineCache(device="cpu"), log=lambda m: None)
        assert {r.status for r in summary.results} == {"reused"}
        for name, data in old.items():
            assert location_bytes(f"{url}/{NEW_NAMES[name]}") == data
        names = sorted(path.rsplit("/", 1)[-1] for path in memory.find("/rdd-names/outputs"))
        assert names == sorted(NEW_NAMES.values())
    finally:
        memory.store.clear()


def test_results_and_variants_named_by_their_key_before_move_to_their_sources_names(tmp_path, models_dir):
    """The version before named a spaced file's results by its key (`harbour_at_dusk.jpg-f9e295aa.png`,
    `..._f9e295aa~v1.png`); a run with both variants reuses them under the source's own name."""
    images, outputs = tmp_path / "images", tmp_path / "outputs"
    make_image(images / "cat" / "harbour at dusk.jpg")
    planner = dataclasses.replace(_planner(tmp_path, outputs, models_dir), variants=2)
    tasks, _ = planner.plan(scan_folder(images))
    key = tasks[0].key
    earlier = [dataclasses.replace(t, output_path=str(keyed_result_path(outputs, key, t.variant))) for t in tasks]
    run_tasks(earlier, PipelineCache(device="cpu"), log=lambda m: None)
    assert sorted(p.name for p in (outputs / "cat").iterdir()) == [
        "harbour_at_dusk.jpg-f9e295aa.png",
        "harbour_at_dusk.jpg-f9e295aa~v1.png",
    ]
    made = [Path(t.output_path).read_bytes() for t in earlier]

    tasks, _ = planner.plan(scan_folder(images))
    summary = run_tasks(tasks, PipelineCache(device="cpu"), log=lambda m: None)
    assert [r.status for r in summary.results] == ["reused", "reused"]
    assert sorted(p.name for p in (outputs / "cat").iterdir()) == ["harbour at dusk.png", "harbour at dusk~v1.png"]
    assert [(outputs / "cat" / name).read_bytes() for name in ("harbour at dusk.png", "harbour at dusk~v1.png")] == made


def test_a_result_left_under_its_key_where_another_source_is_named_now_moves_to_its_own_name(tmp_path, models_dir):
    """`harbour at dusk.jpg`'s earlier result is `harbour_at_dusk.jpg-f9e295aa.png`: the new name of a file literally
    called `harbour_at_dusk.jpg-f9e295aa`. Planning that file moves the old result to `harbour at dusk.png` first,
    so neither image loses its result or overwrites the other's."""
    images, outputs = tmp_path / "images", tmp_path / "outputs"
    make_image(images / "harbour at dusk.jpg")
    planner = _planner(tmp_path, outputs, models_dir)
    (task,) = planner.plan(scan_folder(images))[0]
    old = dataclasses.replace(task, output_path=str(keyed_result_path(outputs, task.key)))
    run_tasks([old], PipelineCache(device="cpu"), log=lambda m: None)
    made = Path(old.output_path).read_bytes()
    make_image(images / "harbour_at_dusk.jpg-f9e295aa", color=(5, 150, 90))
    assert output_file_name("harbour_at_dusk.jpg-f9e295aa") == Path(old.output_path).name

    tasks, _ = planner.plan([f for f in scan_folder(images) if f.name == "harbour_at_dusk.jpg-f9e295aa"])
    assert (outputs / "harbour at dusk.png").read_bytes() == made  # moved aside before anything is written
    summary = run_tasks(tasks, PipelineCache(device="cpu"), log=lambda m: None)
    assert [r.status for r in summary.results] == ["generated"]
    assert read_record(outputs / "harbour_at_dusk.jpg-f9e295aa.png").source_file == "harbour_at_dusk.jpg-f9e295aa"
    tasks, _ = planner.plan(scan_folder(images))
    assert {r.status for r in run_tasks(tasks, PipelineCache(device="cpu"), log=lambda m: None).results} == {"reused"}
