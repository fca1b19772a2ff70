"""Partitions of a folder or a shard (RANDOM_DIFFUSION_PARTITIONS): stable keys, real runs over folder partitions that
reuse every unchanged image, manifests that match the PNGs, and switching granularity without redoing anything."""

import os
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest

from random_diffusion_dagster.defs.automation.new_images_sensor import decide, new_images_sensor
from random_diffusion_dagster.defs.checks import results_up_to_date
from random_diffusion_dagster.defs.out_of_date import current_planner, out_of_date, summary
from random_diffusion_dagster.defs.resources import DatasetResource
from random_diffusion_dagster.defs.run_ranges import RANGE_END_TAG, RANGE_START_TAG
from random_diffusion_dagster.engine.granularity import Granularity
from random_diffusion_dagster.engine.images import SourceFile
from random_diffusion_dagster.engine.manifest import manifest_path, read_manifest
from random_diffusion_dagster.engine.results import read_record
from random_diffusion_dagster.settings import SettingError, max_partitions_per_run, partition_granularity

from helpers import make_image, write_catalog
from local_services import apply_partition_requests
from test_assets import ALL_ASSETS, _materialize, _partition_metadata, _resources
from test_cli import BIN, _env

SETTLED = time.time() - 3600  # files older than the sensor's settle time
DIFFUSION = ["prompt_list", "model_catalog", "image_draw", "diffused_image"]


def _image(path: Path, color) -> Path:
    make_image(path, size=(48, 40), color=color)
    os.utime(path, (SETTLED, SETTLED))
    return path


@pytest.fixture
def tree(tmp_path, models_dir):
    """Two class folders (3 and 2 images), a file in cat/ that is not an image, one image at the top."""
    images = tmp_path / "images"
    for index in range(3):
        _image(images / "cat" / f"c{index}.jpg", (200, 40 * index, 40))
    for index in range(2):
        _image(images / "dog" / f"d{index}.jpg", (40, 200, 60 * index))
    _image(images / "top.jpg", (90, 90, 200))
    (images / "cat" / "notes.md").write_text("not an image")
    os.utime(images / "cat" / "notes.md", (SETTLED, SETTLED))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a {label} in the snow\nan ice castle\n")
    return {
        "images_dir": str(images),
        "output_dir": str(tmp_path / "outputs"),
        "prompts_file": str(prompts),
        "models_file": str(write_catalog(tmp_path / "models.yaml", models_dir)),
        "seed": 0,
    }


def _tick(instance, project, cursor=None, **dataset):
    resources = {"dataset": DatasetResource(**project, **dataset)}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = new_images_sensor(context)
    apply_partition_requests(instance, result)
    return result


def _run(instance, project, request, **dataset):
    """One run as the daemon would launch the sensor's request (its range tags, or its one partition)."""
    first = request.tags.get(RANGE_START_TAG, request.partition_key)
    last = request.tags.get(RANGE_END_TAG, request.partition_key)
    tags = {RANGE_START_TAG: first, RANGE_END_TAG: last}
    return _materialize(instance, project, DIFFUSION, tags, **dataset)


def test_granularity_is_a_setting_with_a_named_error_for_bad_values(environ, tree):
    assert [str(Granularity.parse(text)) for text in ("image", " Folder ", "shard:16")] == [
        "image",
        "folder",
        "shard:16",
    ]
    for bad in ("folders", "shard", "shard:0", "shard:x", "image:2"):
        with pytest.raises(ValueError, match="write image .*folder .*shard:N"):
            Granularity.parse(bad)
    environ["RANDOM_DIFFUSION_PARTITIONS"] = "shards:8"
    with pytest.raises(SettingError, match="RANDOM_DIFFUSION_PARTITIONS='shards:8'.*shard:N"):
        partition_granularity()
    with pytest.raises(ValueError, match="dataset.partitions: 'perfolder' is not a partition granularity"):
        DatasetResource(**tree, partitions="perfolder")
    environ["RANDOM_DIFFUSION_PARTITIONS"] = "folder"
    assert DatasetResource(**tree).granularity == Granularity("folder")
    assert max_partitions_per_run() == 5  # folders are 5 to a run; images are 512 to a run
    del environ["RANDOM_DIFFUSION_PARTITIONS"]
    assert max_partitions_per_run() == 512 and DatasetResource(**tree).partitions == "image"


def test_folder_and_shard_keys_stay_put_as_files_come_and_go():
    keys = [f"img{index:05d}.png" for index in range(2000)] + ["cat/001.jpg", "cat/kitten/x.png"]
    folder, shards = Granularity("folder"), Granularity("shard", 16)
    assert [folder.partition_of(key) for key in keys[-3:]] == [".", "cat", "cat/kitten"]
    before = {key: shards.partition_of(key) for key in keys}
    after = {key: shards.partition_of(key) for key in [*keys[::2], "new.png"]}  # half gone, one new
    assert all(after[key] == before[key] for key in keys[::2])
    counts = shards.group(keys)
    assert sorted(counts) == [f"shard-{index:02d}-of-16" for index in range(16)]
    assert max(len(group) for group in counts.values()) < 2 * len(keys) / 16  # spread, not piled up


def test_folder_partitions_run_whole_folders_and_a_new_image_costs_one_image(instance, tree):
    folder = {"partitions": "folder"}
    first = _tick(instance, tree, **folder)
    assert instance.get_dynamic_partitions("images") == [".", "cat", "dog"]
    assert len(first.run_requests) == 1  # one ranged run over the new partitions
    result = _run(instance, tree, first.run_requests[0], **folder)
    assert result.success  # notes.md is left out, as the sensor leaves it out of image partitions
    outputs = Path(tree["output_dir"])
    made = sorted(p.relative_to(outputs).as_posix() for p in outputs.rglob("*.png"))
    assert made == ["cat/c0.png", "cat/c1.png", "cat/c2.png", "dog/d0.png", "dog/d1.png", "top.png"]
    # What the check, report and dataset read of a folder: its images, not notes.md.
    assert list(DatasetResource(**tree, **folder).source_paths(["cat"])) == ["cat/c0.jpg", "cat/c1.jpg", "cat/c2.jpg"]

    cat = _partition_metadata(instance, "cat")
    assert (cat["images"], cat["generated"], cat["reused"], cat["not_made"]) == (3, 3, 0, 0)
    assert [row.data["image"] for row in cat["results"].records] == ["cat/c0.jpg", "cat/c1.jpg", "cat/c2.jpg"]
    rows = read_manifest(manifest_path(tree["output_dir"], "cat"))
    assert cat["manifest"] == str(manifest_path(tree["output_dir"], "cat"))
    for row in rows:  # the manifest holds each PNG's own record
        record = read_record(outputs / row["file"])
        assert (row["prompt"], row["model"], row["seed"], row["fingerprint"]) == (
            record.prompt,
            record.model,
            record.seed,
            record.fingerprint,
        )
        assert row["prompt"] in ("a cat in the snow", "an ice castle")
    assert {row["source_file"] for row in rows} == {"cat/c0.jpg", "cat/c1.jpg", "cat/c2.jpg"}
    draw = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("image_draw"), asset_partitions=["dog"]), limit=1
    ).records[0]
    assert draw.asset_materialization.metadata["images"].value == 2
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("diffused_image"), "quality_gates")]
    )
    assert check  # judged per partition

    # One new image in cat: the sensor asks for cat alone; its run makes one image and reuses two.
    pngs = {p: p.stat().st_mtime_ns for p in outputs.rglob("*.png")}
    _image(Path(tree["images_dir"]) / "cat" / "c3.jpg", (10, 10, 10))
    second = _tick(instance, tree, first.cursor, **folder)
    assert [r.partition_key for r in second.run_requests] == ["cat"]
    assert [e.partition for e in second.asset_events] == ["cat"]  # its new version: cat's result is stale
    _run(instance, tree, second.run_requests[0], **folder)
    cat = _partition_metadata(instance, "cat")
    assert (cat["images"], cat["generated"], cat["reused"]) == (4, 1, 3)
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in pngs.items())  # nothing rewritten
    assert len(read_manifest(manifest_path(tree["output_dir"], "cat"))) == 4

    # A prompts edit: the catch-up asks for the folders, each image judged on its own.
    dataset = DatasetResource(**tree, **folder)
    assert not out_of_date(instance, dataset, current_planner(instance, dataset)).reasons
    Path(tree["prompts_file"]).write_text("a {label} at night\nan ice castle\n")
    found = out_of_date(instance, dataset, current_planner(instance, dataset))
    assert found.images == 7 and set(found.reasons.values()) == {"prompt changed"}
    drew_label = {key for key, judged in found.judged.items() if judged.made[0].prompt.endswith("snow")}
    assert set(found.reasons) == drew_label  # only the images whose line changed, by image key
    stale_folders = {key.rpartition("/")[0] or "." for key in found.reasons}
    # The check lists them under the partitions the UI shows, and names no total it did not count.
    check = dg.AssetSelection.checks(results_up_to_date)
    resources = _resources(tree, **folder)
    dg.materialize([*ALL_ASSETS, results_up_to_date], selection=check, instance=instance, resources=resources)
    record = instance.get_latest_asset_check_evaluation_record(results_up_to_date.check_key)
    listed = record.event.dagster_event.asset_check_evaluation_data.metadata["partitions"].value.splitlines()
    assert sorted(listed) == sorted(
        f"- {key.rpartition('/')[0] or '.'}: {key}: prompt changed" for key in found.reasons
    )
    (request,) = found.run_requests(lambda first: f"catch-up:{first}")
    keys = instance.get_dynamic_partitions("images")
    covered = keys[keys.index(request.tags[RANGE_START_TAG]) : keys.index(request.tags[RANGE_END_TAG]) + 1]
    assert stale_folders <= set(covered)


def test_switching_granularity_reuses_every_result(instance, tree):
    (Path(tree["images_dir"]) / "cat" / "notes.md").unlink()
    first = _tick(instance, tree)
    assert len(instance.get_dynamic_partitions("images")) == 6
    assert _run(instance, tree, first.run_requests[0]).success
    outputs = Path(tree["output_dir"])
    pngs = {p: p.stat().st_mtime_ns for p in outputs.rglob("*.png")}
    assert len(pngs) == 6
    for granularity, partitions in (("folder", 3), ("shard:2", 2)):
        _materialize(instance, tree, ["source_images"], partitions=granularity)  # registers the new partitions
        keys = instance.get_dynamic_partitions("images")
        assert len(keys) == partitions
        tags = {RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]}
        result = _materialize(
            instance,
            tree,
            DIFFUSION,
            tags,
            partitions=granularity,
        )
        assert result.success
        reused = [_partition_metadata(instance, key)["reused"] for key in keys]
        assert sum(reused) == 6 and all(_partition_metadata(instance, key)["generated"] == 0 for key in keys)
        assert all(p.stat().st_mtime_ns == mtime for p, mtime in pngs.items())
        # A pass over some of them (the check's, after a run) cannot count the others' images: it names no total.
        grouped = DatasetResource(**tree, partitions=granularity)
        some = out_of_date(instance, grouped, current_planner(instance, grouped), only=keys[:1])
        assert some.images is None and summary({"cat/c0.jpg": "prompt changed"}, some.images).startswith("1 image is")
        # Switched back, before the sensor replaces these partitions: they hold no image (`plan` counts none).
        image_partitions = DatasetResource(**tree)
        found = out_of_date(instance, image_partitions, current_planner(instance, image_partitions))
        assert (found.images, found.reasons) == (0, {})


def test_a_folder_partition_lists_its_own_folder_as_the_whole_scan_finds_it(tmp_path):
    images = tmp_path / "images"
    for name in ("top.png", "cat/001.jpg", "cat/kitten/x y.png", "a b/002.png", "report/r.png", ".hidden/h.png"):
        make_image(images / name)
    (images / "cat" / "001.txt").write_text("a caption, not an image")
    os.symlink(images / "cat", images / "linked")
    dataset = DatasetResource(images_dir=str(images), output_dir=str(tmp_path / "outputs"), partitions="folder")
    whole = Granularity("folder").group(file.partition_key for file in dataset.source_files())
    assert sorted(whole) == [".", "a_b-7dbde935", "cat", "cat/kitten"]
    for key, image_keys in whole.items():
        files, missing = dataset.files_for([key])
        assert [file.partition_key for file in files] == image_keys and not missing
    for skipped in ("linked", "report", "nowhere"):  # folders the whole scan leaves out name no files
        files, missing = dataset.files_for([skipped])
        assert not files and skipped in missing
    flat = DatasetResource(**{**dataset.model_dump(), "recursive": False})
    assert [file.partition_key for file in flat.files_for([".", "cat"])[0]] == ["top.png"]


def test_run_makes_two_folders_of_a_dozen_images_and_a_rerun_reuses_them(tmp_path, models_dir):
    """The generation check of the million-images benchmark, small: `random-diffusion run` with folder partitions."""
    images = tmp_path / "images"
    for index in range(24):
        make_image(images / f"class{index % 2}" / f"{index:03d}.jpg", size=(32, 32), color=(index * 2, 90, 200 - index))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a {label} in watercolor\na {label} at night\n")
    project = {
        "images_dir": str(images),
        "output_dir": str(tmp_path / "outputs"),
        "prompts_file": str(prompts),
        "models_file": str(write_catalog(tmp_path / "models.yaml", models_dir)),
    }
    env = _env(project, tmp_path / "home") | {"RANDOM_DIFFUSION_PARTITIONS": "folder"}
    command = [str(BIN / "random-diffusion"), "run"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert "over 2 folders: succeeded" in first.stdout  # one run over both (5 folders to a run)
    for folder in ("class0", "class1"):
        rows = read_manifest(manifest_path(project["output_dir"], folder))
        assert len(rows) == 12 and {row["status"] for row in rows} == {"generated"}
        assert {row["prompt"] for row in rows} <= {f"a {folder} in watercolor", f"a {folder} at night"}
        assert all((Path(project["output_dir"]) / row["file"]).is_file() for row in rows)
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "over 2 folders: succeeded" in again.stdout, again.stderr[-3000:]
    rows = read_manifest(manifest_path(project["output_dir"], "class0"))
    assert {row["status"] for row in rows} == {"reused"}

    named = ["class0/000.jpg", str(images / "class1" / "001.jpg")]  # by key, and by path
    compared = subprocess.run([*command[:1], "compare", *named], env=env, capture_output=True, text=True, timeout=600)
    assert compared.returncode == 0, compared.stdout[-2000:] + compared.stderr[-3000:]
    assert "over 2 images in 2 folders x 2 models: succeeded" in compared.stdout
    for key in ("class0/000.jpg", "class1/001.jpg"):
        assert f"Grid: {project['output_dir']}/comparisons/{key}/grid.png" in compared.stdout
    assert len(list(Path(project["output_dir"], "comparisons").rglob("*.png"))) == 6  # 2 images x 2 models, 2 grids


def _file(relative: str, size: int, mtime_s: int, ctime_s: int) -> SourceFile:
    folder, _, name = relative.rpartition("/")
    return SourceFile(name, f"/images/{relative}", size, mtime_s * 10**9, ctime_s * 10**9, folder)


def test_a_folder_runs_once_all_its_files_settled_and_switching_granularity_starts_afresh():
    now, folder = 10_000 * 10**9, Granularity("folder")
    settled, settling = _file("cat/a.png", 10, 1_000, 1_000), _file("cat/b.png", 10, 9_990, 9_990)
    dog, notes = _file("dog/c.png", 10, 1_000, 1_000), _file("bird/notes.md", 10, 1_000, 1_000)
    fish = [_file("fish/a.md", 10, 1_000, 1_000), _file("fish/b.png", 10, 1_000, 1_000)]
    not_images = {"notes.md": "not an image", "a.md": "not an image"}.get
    first = decide({}, [], [settled, settling, dog, notes, *fish], now, lambda f: not_images(f.name), folder)
    assert first.new_keys == ["dog", "fish"] and first.cursor["waiting"] == {"cat/b.png": "10:9990000000000"}
    assert first.skipped == {"notes.md": "not an image", "a.md": "not an image"}  # a folder of no images: none
    second = decide(first.cursor, ["dog", "fish"], [settled, settling, dog], now + 30 * 10**9, lambda f: None, folder)
    assert second.new_keys == ["cat"] and second.cursor["granularity"] == "folder"
    # The same unchanged files under image partitions: every file is looked at again, folders give way to images.
    images = decide(second.cursor, ["dog", "cat"], [settled, settling, dog], now + 60 * 10**9, lambda f: None)
    assert images.new_keys == ["cat/a.png", "cat/b.png", "dog/c.png"] and images.gone == ["cat", "dog"]
    again = decide(images.cursor, images.kept, [settled, settling, dog], now + 90 * 10**9, lambda f: None, folder)
    assert again.new_keys == ["cat", "dog"] and sorted(again.gone) == ["cat/a.png", "cat/b.png", "dog/c.png"]
