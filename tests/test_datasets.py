"""Collections as people keep them: class-labelled folder trees and captions, through real materializations."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from random_diffusion_dagster.defs.assets import augmented_dataset
from random_diffusion_dagster.engine.images import partition_key_for, scan_images
from random_diffusion_dagster.engine.results import read_record, result_path

from helpers import make_image, source_paths, write_catalog
from test_assets import ALL_ASSETS, _diffuse_all, _partition_metadata, _resources

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _export(instance, project, include_sources=False, **dataset):
    """Materialize augmented_dataset over what the instance has recorded."""
    return dg.materialize(
        [*ALL_ASSETS, augmented_dataset],
        selection=["augmented_dataset"],
        instance=instance,
        resources=_resources(project, **dataset),
        run_config={"ops": {"augmented_dataset": {"config": {"include_sources": include_sources}}}},
        raise_on_error=False,
    )


@pytest.fixture
def labelled(tmp_path, models_dir):
    """A tree in the ImageFolder layout: two classes, a nested album, captions beside one image and in a
    metadata.jsonl for another, and one image with no caption."""
    images = tmp_path / "images"
    make_image(images / "cat" / "001.jpg", color=(200, 40, 40))
    (images / "cat" / "001.txt").write_text("a ginger cat on a sofa\n")
    make_image(images / "dog" / "002.png", color=(40, 200, 40))
    (images / "dog" / "metadata.jsonl").write_text(json.dumps({"file_name": "002.png", "text": "a dog in snow"}))
    make_image(images / "dog" / "puppies" / "003 (copy).png", color=(40, 40, 200))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# one template for the whole tree\n\na {photo|painting} of a {label}, {caption}\n")
    return {
        "images_dir": str(images),
        "output_dir": str(tmp_path / "outputs"),
        "prompts_file": str(prompts),
        "models_file": str(write_catalog(tmp_path / "models.yaml", models_dir, names=("tiny-sd15",))),
        "seed": 0,
    }


def test_a_tree_is_scanned_with_keys_from_paths_and_top_level_keys_as_before(tmp_path):
    images = tmp_path / "images"
    for name in (
        "top.png",
        "a b.png",
        "cat/001.jpg",
        "cat/kitten/x y.png",
        ".cache/hidden.png",
        "deep/" * 17 + "z.png",
    ):
        make_image(images / name)
    os.symlink(images / "cat", images / "linked")
    os.symlink(images, images / "cat" / "loop")
    scan = scan_images(images)
    keys = {source.relative_path: source.partition_key for source in scan.files}
    assert keys == {
        "top.png": "top.png",
        "a b.png": partition_key_for("a b.png"),  # a top-level key is what it always was
        "cat/001.jpg": "cat/001.jpg",
        "cat/kitten/x y.png": f"cat/kitten/{partition_key_for('x y.png')}",
    }
    reasons = {entry.name: entry.reason for entry in scan.skipped}
    assert reasons[".cache"].startswith("hidden folder") and reasons["linked"].startswith("symlinked folder")
    assert reasons["cat/loop"].startswith("symlinked folder") and "16 folders deep" in reasons["deep/" * 16 + "deep"]
    assert [s.relative_path for s in scan_images(images, recursive=False).files] == ["a b.png", "top.png"]
    assert result_path(tmp_path / "out", "cat/001.jpg") == (tmp_path / "out").resolve() / "cat" / "001.png"
    with pytest.raises(ValueError, match="is not a path under the images folder"):
        result_path(tmp_path / "out", "cat/../../etc")


def test_labels_and_captions_reach_the_prompt_and_the_png_and_a_missing_caption_fails_that_image_alone(
    labelled, environ
):
    with dg.instance_for_test() as instance:
        keys, result = _diffuse_all(instance, labelled)
        assert not result.success  # the image without a caption failed, by name
        outputs = labelled["output_dir"]
        cat, dog = (
            read_record(result_path(outputs, "cat/001.jpg")),
            read_record(result_path(outputs, "dog/002.png")),
        )
        assert cat.prompt.endswith("of a cat, a ginger cat on a sofa") and cat.source_file == "cat/001.jpg"
        assert (
            dog.prompt.endswith("of a dog, a dog in snow")
            and cat.prompt_template == "a {photo|painting} of a {label}, {caption}"
        )
        assert (result_path(outputs, "cat/001.jpg")).parent.name == "cat"
        puppy = f"dog/puppies/{partition_key_for('003 (copy).png')}"
        assert puppy in keys and read_record(result_path(outputs, "dog/puppies/003 (copy).png")) is None
        assert _partition_metadata(instance, "cat/001.jpg")["prompt"].endswith("a ginger cat on a sofa")
        failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
        assert f"\n- dog/puppies/003 (copy).png: {labelled['prompts_file']}, line 3: " in failure  # once, by its file
        assert "line 3: 'a {photo|painting} of a {label}, {caption}' uses {caption}, but the image has none" in failure
        assert "or set RANDOM_DIFFUSION_CAPTION_FALLBACK (the dataset resource's caption_fallback)" in failure

        environ["RANDOM_DIFFUSION_CAPTION_FALLBACK"] = " a  photo\n"  # as a command-line user sets it
        _, rerun = _diffuse_all(instance, labelled)
        assert rerun.success
        # The result keeps its source's own name, spaces and brackets included.
        assert (Path(outputs) / "dog" / "puppies" / "003 (copy).png.png").is_file()
        assert read_record(result_path(outputs, "dog/puppies/003 (copy).png")).prompt.endswith("of a dog, a photo")


def test_the_results_load_as_a_hugging_face_dataset_with_labels_captions_and_provenance(
    labelled, tmp_path, monkeypatch
):
    import datasets
    import pandas as pd

    from random_diffusion_dagster.defs.resources import DatasetResource

    export = tmp_path / "augmented"
    with dg.instance_for_test() as instance:
        _diffuse_all(instance, labelled, caption_fallback="a photo")
        listings, files_for = [], DatasetResource.files_for
        monkeypatch.setattr(
            DatasetResource, "files_for", lambda self, keys: listings.append(keys) or files_for(self, keys)
        )
        assert _export(instance, labelled, include_sources=True, dataset_dir=str(export)).success
        monkeypatch.undo()
        assert len(listings) == 1  # the export and its staleness pass share one look at the images folder
    loaded = datasets.load_dataset("imagefolder", data_dir=str(export), split="train")
    assert loaded.num_rows == 6  # three results and their three sources
    rows = sorted(zip(loaded["kind"], loaded["source_file"], loaded["label"], loaded["caption"], strict=True))
    assert rows[:3] == [
        ("augmented", "cat/001.jpg", "cat", "a ginger cat on a sofa"),
        ("augmented", "dog/002.png", "dog", "a dog in snow"),
        ("augmented", "dog/puppies/003 (copy).png", "dog", None),
    ]
    augmented = [row for row in loaded if row["kind"] == "augmented"]
    assert all(row["image"].mode == "RGB" and row["model"] == "tiny-sd15" for row in augmented)
    assert all(row["quality_passed"] for row in augmented)  # each result passed the default quality gates
    assert {row["prompt"].split(", ")[-1] for row in augmented} == {
        "a ginger cat on a sofa",
        "a dog in snow",
        "a photo",
    }
    manifest = pd.read_parquet(export / "manifest.parquet")
    assert len(manifest) == 6 and set(manifest["label"]) == {"cat", "dog"}
    assert manifest.loc[manifest["kind"] == "source", "quality_passed"].isna().all()  # sources are not judged

    # Without the fallback the caption-less image fails; its older result stays on disk but is not current, so the
    # dataset (like the report) leaves it out and says so.
    with dg.instance_for_test() as instance:
        _diffuse_all(instance, labelled)
        again = _export(instance, labelled, dataset_dir=str(export))
        assert again.success
        metadata = again.asset_materializations_for_node("augmented_dataset")[0].metadata
        assert (metadata["results"].value, metadata["images_failed"].value) == (2, 1)
        assert metadata["results_out_of_date"].value == 0
        assert datasets.load_dataset("imagefolder", data_dir=str(export), split="train")["source_file"] == [
            "cat/001.jpg",
            "dog/002.png",
        ]
        # A prompts edit: results made from the old prompts are exported as made, and counted and said.
        prompts = Path(labelled["prompts_file"])
        prompts.write_text(prompts.read_text().replace("{caption}", "{label}, {caption}"))
        stale = _export(instance, labelled, dataset_dir=str(export))
        metadata = stale.asset_materializations_for_node("augmented_dataset")[0].metadata
        assert (metadata["results"].value, metadata["results_out_of_date"].value) == (2, 2)
        said = [entry.user_message for entry in instance.all_logs(stale.run_id) if "out of date (" in entry.message]
        assert said[0].startswith("2 exported results are out of date (images: prompt changed: 2): "), said


def test_the_dataset_carries_each_images_caption_as_it_is_now(labelled, tmp_path):
    """A caption edit the prompts do not read leaves the results current (nothing to redo), so the dataset's caption
    column is the image's caption now, on its results and its source; a caption file that cannot be read keeps the
    caption the results were made with, and the log says why."""
    import datasets

    Path(labelled["prompts_file"]).write_text("a {photo|painting} of a {label}\n")
    images, export = Path(labelled["images_dir"]), tmp_path / "augmented"

    def exported_captions(instance) -> tuple[dict[tuple[str, str], str | None], str]:
        result = _export(instance, labelled, include_sources=True, dataset_dir=str(export))
        assert result.success
        assert result.asset_materializations_for_node("augmented_dataset")[0].metadata["results_out_of_date"].value == 0
        loaded = datasets.load_dataset("imagefolder", data_dir=str(export), split="train")
        return {(row["kind"], row["source_file"]): row["caption"] for row in loaded}, result.run_id

    with dg.instance_for_test() as instance:
        _diffuse_all(instance, labelled)
        (images / "cat" / "001.txt").write_text("a ginger cat asleep\n")
        captions, _ = exported_captions(instance)
        assert captions[("augmented", "cat/001.jpg")] == captions[("source", "cat/001.jpg")] == "a ginger cat asleep"
        assert captions[("augmented", "dog/002.png")] == "a dog in snow"

        (images / "dog" / "metadata.jsonl").write_text('{"file_name": "002.png", "text": "a dog in sn')
        captions, run_id = exported_captions(instance)
        assert captions[("augmented", "dog/002.png")] == "a dog in snow"  # as made
        said = [entry.user_message for entry in instance.all_logs(run_id) if "metadata.jsonl, line 1" in entry.message]
        assert said and said[0].endswith("Its rows keep the caption dog/002.png's results were made with."), said


def test_a_tree_of_splits_labels_by_the_folder_under_the_split_and_loads_as_those_splits(tmp_path, models_dir):
    """`train/<label>/...` and `test/<label>/...`, Hugging Face's ImageFolder layout with splits: `{label}` is the
    folder under the split, and the dataset keeps the splits, each with its metadata (`datasets` drops a
    metadata.jsonl above split folders). A name `datasets` reads as a split's elsewhere is warned of."""
    import datasets

    images = tmp_path / "images"
    for name, color in (
        ("train/cat/1.png", (200, 40, 40)),
        ("train/cup/2.png", (40, 200, 40)),
        ("test/cat/3.png", (9, 9, 9)),
    ):
        make_image(images / name, color=color)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a {label}\n")
    project = {
        "images_dir": str(images),
        "output_dir": str(tmp_path / "outputs"),
        "prompts_file": str(prompts),
        "models_file": str(write_catalog(tmp_path / "models.yaml", models_dir, names=("tiny-sd15",))),
        "seed": 0,
    }
    export = tmp_path / "augmented"
    with dg.instance_for_test() as instance:
        assert _diffuse_all(instance, project)[1].success
        result = _export(instance, project, include_sources=True, dataset_dir=str(export))
        assert result.success and not [e for e in instance.all_logs(result.run_id) if "reads as a split" in e.message]
    loaded = datasets.load_dataset("imagefolder", data_dir=str(export))
    assert sorted(loaded) == ["test", "train"]
    train = sorted(zip(loaded["train"]["kind"], loaded["train"]["label"], loaded["train"]["prompt"], strict=True))
    assert train == [
        ("augmented", "cat", "a photo of a cat"),
        ("augmented", "cup", "a photo of a cup"),
        ("source", "cat", None),
        ("source", "cup", None),
    ]
    assert loaded["test"]["source_file"] == ["test/cat/3.png"] * 2 and set(loaded["test"]["label"]) == {"cat"}
    assert sorted(path.name for path in (export / "train").iterdir()) == ["augmented", "metadata.jsonl", "source"]

    make_image(images / "cat" / "test_01.png", color=(1, 2, 3))  # outside the splits, with a name read as one
    with dg.instance_for_test() as instance:
        assert _diffuse_all(instance, project)[1].success
        result = _export(instance, project, dataset_dir=str(export))
        said = [e.user_message for e in instance.all_logs(result.run_id) if "reads as a split" in e.message]
    assert len(said) == 1 and said[0].startswith("4 of the dataset's files have a folder or file name"), said
    assert "(e.g. augmented/cat/test_01.png" in said[0]


def test_the_dataset_never_replaces_a_folder_the_project_did_not_write(labelled, tmp_path):
    theirs = tmp_path / "mine"
    (theirs / "keep.txt").parent.mkdir()
    (theirs / "keep.txt").write_text("my notes")
    with dg.instance_for_test() as instance:
        result = _export(instance, labelled, dataset_dir=str(theirs))
    assert not result.success and (theirs / "keep.txt").read_text() == "my notes"
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.to_string()
    assert "mine exists and was not written by this project" in failure


def test_the_shipped_labelled_sample_becomes_a_dataset_through_the_cli(tmp_path, models_dir):
    """The README's example: the labelled sample tree and its prompts, `random-diffusion run --variants 3 --dataset`."""
    import datasets

    sample = tmp_path / "labelled"
    shutil.copytree(PROJECT_ROOT / "data" / "labelled", sample)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "home"),
        "RANDOM_DIFFUSION_IMAGES_DIR": str(sample),
        "RANDOM_DIFFUSION_PROMPTS_FILE": str(PROJECT_ROOT / "data" / "labelled-prompts.txt"),
        "RANDOM_DIFFUSION_MODELS_FILE": str(write_catalog(tmp_path / "models.yaml", models_dir, names=("tiny-sd15",))),
        "RANDOM_DIFFUSION_OUTPUT_DIR": str(tmp_path / "outputs"),
        "RANDOM_DIFFUSION_DATASET_DIR": str(tmp_path / "dataset"),
        "OMP_NUM_THREADS": "1",
    }
    (tmp_path / "home").mkdir()
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "random-diffusion"), "run", "--variants", "3", "--dataset"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    assert f"Dataset: {tmp_path / 'dataset'}" in completed.stdout
    assert (tmp_path / "outputs" / "space" / "rocket.png").is_file()  # the results mirror the tree
    loaded = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "dataset"), split="train")
    assert sorted(loaded["label"]) == ["animal"] * 3 + ["drink"] * 3 + ["space"] * 9
    assert sorted(set(loaded["variant"])) == [0, 1, 2]
    assert all(caption in prompt for caption, prompt in zip(loaded["caption"], loaded["prompt"], strict=True))

    # A dataset folder the export would refuse is refused before anything runs (it was refused after every image)
    (tmp_path / "mine" / "notes.txt").parent.mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a folder of the user's")
    made = sorted((tmp_path / "outputs").rglob("*"))
    for folder, problem in (
        (tmp_path / "outputs" / "ds", "is inside the output folder"),
        (tmp_path / "mine", "exists"),
    ):
        refused = subprocess.run(
            [str(Path(sys.executable).parent / "random-diffusion"), "run", "--seed", "9", "--dataset"],
            env={**env, "RANDOM_DIFFUSION_DATASET_DIR": str(folder)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode == 2 and refused.stdout == "", refused.stdout + refused.stderr[-2000:]
        (line,) = refused.stderr.splitlines()
        assert line.startswith("error: ") and f"{folder} {problem}" in line and "RANDOM_DIFFUSION_DATASET_DIR" in line
    assert sorted((tmp_path / "outputs").rglob("*")) == made  # seed 9 made nothing


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=int)


def _run_figures_of(instance, result):
    tags = instance.get_run_by_id(result.run_id).tags
    return {name: int(tags[f"random_diffusion/{name}"]) for name in ("generated", "reused")}


def test_variants_differ_are_reproducible_and_raising_k_adds_only_the_new_ones(project, tmp_path):
    """K results per image, each its own draw; a fresh instance makes the same pixels; K 2 -> 3 makes one more per
    image and reuses the rest; the dataset holds every variant."""
    import pandas as pd

    with dg.instance_for_test() as instance:
        keys, result = _diffuse_all(instance, project, variants=2)
        assert result.success and _run_figures_of(instance, result) == {"generated": 6, "reused": 0}
        tags = instance.get_run_by_id(result.run_id).tags  # an image's variants share its batch: 3 sizes, 3 calls
        assert (tags["random_diffusion/pipeline_calls"], tags["random_diffusion/mean_batch_fill"]) == ("3", "0.5")
        outputs = project["output_dir"]
        sources = source_paths(project["images_dir"])
        first = {(k, v): _pixels(result_path(outputs, sources[k], v)) for k in keys for v in (0, 1)}
        for key in keys:
            zero = read_record(result_path(outputs, sources[key]))
            one = read_record(result_path(outputs, sources[key], 1))
            assert (zero.variant, one.variant) == (0, 1) and zero.seed != one.seed
            assert first[(key, 0)].shape != first[(key, 1)].shape or (first[(key, 0)] != first[(key, 1)]).any()
        variants = _partition_metadata(instance, keys[0])["variants"]
        assert [row.data["variant"] for row in variants.records] == [0, 1]

        _, more = _diffuse_all(instance, project, variants=3)
        assert more.success and _run_figures_of(instance, more) == {"generated": 3, "reused": 6}
        export = tmp_path / "augmented"
        full = _export(instance, project, dataset_dir=str(export), variants=3)
        assert full.success and not [e for e in instance.all_logs(full.run_id) if "more results in" in e.message]
        manifest = pd.read_parquet(export / "manifest.parquet")
        assert sorted(manifest["variant"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2] and manifest["file_name"].is_unique
        # An export that forgets the count has fewer per image, and says which results it left out and how.
        fewer = _export(instance, project, dataset_dir=str(tmp_path / "fewer"), variants=2)
        assert fewer.success and len(pd.read_parquet(tmp_path / "fewer" / "manifest.parquet")) == 6
        said = [e.user_message for e in instance.all_logs(fewer.run_id) if "more results in the output" in e.message]
        assert len(said) == 1 and said[0].startswith("3 images have more results in the output folder than this ")
        assert "~v2.png" in said[0] and "--variants K" in said[0] and "defaults: {variants: K}" in said[0]

    for path in [p for p in Path(outputs).rglob("*.png")]:
        path.unlink()
    with dg.instance_for_test() as fresh:
        _diffuse_all(fresh, project, variants=2)
    for (key, variant), pixels in first.items():  # the same draws, the same pixels (CPU, same batches)
        again = _pixels(result_path(outputs, sources[key], variant))
        assert again.shape == pixels.shape and np.abs(again.astype(int) - pixels).max() <= 1, (key, variant)


def test_a_broken_caption_file_fails_only_images_whose_prompt_names_caption(tmp_path, models_dir):
    from random_diffusion_dagster.engine.catalog import load_catalog
    from random_diffusion_dagster.engine.plan import Planner

    images = tmp_path / "images"
    make_image(images / "dog" / "002.png")
    (images / "dog" / "metadata.jsonl").write_text('{"file_name": "002.png", "text": "a dog"}\nnot json\n')
    catalog = load_catalog(write_catalog(tmp_path / "models.yaml", models_dir, names=("tiny-sd15",)))
    files = scan_images(images).files
    tasks, unplanned = Planner(["a photo of a {label}"], catalog, 0, str(tmp_path / "out")).plan(files)
    assert [t.prompt for t in tasks] == ["a photo of a dog"] and unplanned == {}
    tasks, unplanned = Planner(["{caption}"], catalog, 0, str(tmp_path / "out")).plan(files)
    assert tasks == [] and "metadata.jsonl, line 2: not JSON" in unplanned["dog/002.png"]


def test_an_empty_caption_is_named_as_empty_and_the_fallback_fills_it(tmp_path, models_dir):
    from random_diffusion_dagster.engine.catalog import load_catalog
    from random_diffusion_dagster.engine.plan import Planner

    images = tmp_path / "images"
    make_image(images / "cat" / "001.png")
    (images / "cat" / "001.txt").write_text("  \n")
    make_image(images / "dog" / "002.png")
    (images / "dog" / "metadata.jsonl").write_text('{"file_name": "002.png", "text": ""}\n')
    catalog = load_catalog(write_catalog(tmp_path / "models.yaml", models_dir, names=("tiny-sd15",)))
    files = scan_images(images).files
    tasks, unplanned = Planner(["a {label}, {caption}"], catalog, 0, str(tmp_path / "out")).plan(files)
    assert tasks == [] and sorted(unplanned) == ["cat/001.png", "dog/002.png"]
    assert all("uses {caption}, but its caption is empty: write its caption" in why for why in unplanned.values())
    planner = Planner(["a {label}, {caption}"], catalog, 0, str(tmp_path / "out"), caption_fallback="a photo")
    tasks, unplanned = planner.plan(files)
    assert sorted(task.prompt for task in tasks) == ["a cat, a photo", "a dog, a photo"] and unplanned == {}


def test_a_top_level_folder_named_as_the_output_folder_keeps_its_report_is_skipped_by_name(tmp_path):
    make_image(tmp_path / "images" / "report" / "contact_sheet.jpg")
    make_image(tmp_path / "images" / "animal" / "report" / "x.png")  # deeper down it mirrors nowhere special
    scan = scan_images(tmp_path / "images")
    assert [s.relative_path for s in scan.files] == ["animal/report/x.png"]
    assert "the output folder keeps its report/ there" in {e.name: e.reason for e in scan.skipped}["report"]


def test_case_distinct_sources_keep_distinct_variant_files(tmp_path):
    assert result_path(tmp_path, "UP.JPG", 1).name == "UP~v1.PNG"
    assert result_path(tmp_path, "UP.jpg", 1).name == "UP~v1.png"


def test_a_failed_variant_in_a_subfolder_is_recorded_where_the_report_reads_it(labelled, tmp_path):
    """One image's variant 1 is blocked by a user's file: the image's failure record is in the output folder's
    .failures (not its subfolder's), and its successful variant 0 does not clear it. The dataset leaves out the
    failed variant and keeps the image's current one (it left out the whole image)."""
    from random_diffusion_dagster.engine.results import read_failure

    outputs = Path(labelled["output_dir"])
    blocked = result_path(outputs, "cat/001.jpg", 1)
    make_image(blocked, color=(1, 2, 3))
    with dg.instance_for_test() as instance:
        _, result = _diffuse_all(instance, labelled, variants=2, caption_fallback="a photo")
        exported = _export(instance, labelled, variants=2, caption_fallback="a photo", dataset_dir=str(tmp_path / "ds"))
    assert not result.success and read_record(blocked) is None
    failure = read_failure(outputs, "cat/001.jpg")
    assert failure is not None and "a file not made by this project" in failure.error and failure.variants == (1,)
    assert read_record(result_path(outputs, "cat/001.jpg")).variant == 0
    assert exported.success
    metadata = exported.asset_materializations_for_node("augmented_dataset")[0].metadata
    assert (metadata["results"].value, metadata["images_failed"].value) == (5, 1)
    rows = [json.loads(line) for line in (tmp_path / "ds" / "metadata.jsonl").read_text().splitlines()]
    assert sorted((row["source_file"], row["variant"]) for row in rows if row["source_file"] == "cat/001.jpg") == [
        ("cat/001.jpg", 0)
    ]


def test_captions_go_into_prompts_as_written_and_a_bad_row_fails_only_its_image(tmp_path, models_dir):
    from random_diffusion_dagster.engine.catalog import load_catalog
    from random_diffusion_dagster.engine.plan import Planner

    images = tmp_path / "images"
    make_image(images / "a.png")
    make_image(images / "b.png")
    rows = [
        {"file_name": "a.png", "text": "a {stem} with {label} and {x|y} __w__"},
        {"file_name": "b.png", "text": "\x00"},
    ]
    (images / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    catalog = load_catalog(write_catalog(tmp_path / "models.yaml", models_dir, names=("tiny-sd15",)))
    tasks, unplanned = Planner(["{photo|picture}: {caption}"], catalog, 0, str(tmp_path / "o")).plan(
        scan_images(images).files
    )
    assert [t.prompt.split(": ", 1)[1] for t in tasks] == ["a {stem} with {label} and {x|y} __w__"]
    assert list(unplanned) == ["b.png"] and "row 2" in unplanned["b.png"]


def test_the_dataset_folder_may_not_lie_in_the_output_or_images_folder(labelled):
    for inside in (Path(labelled["output_dir"]) / "augmented", Path(labelled["images_dir"]) / "ds"):
        with dg.instance_for_test() as instance:
            result = _export(instance, labelled, dataset_dir=str(inside))
        failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.to_string()
        assert "is inside the" in failure and "RANDOM_DIFFUSION_DATASET_DIR at a folder outside both" in failure
        assert not inside.exists()


def test_a_catalog_strength_list_is_drawn_per_result(project, tmp_path, models_dir):
    """DA-Fusion draws each synthetic image's strength: `strengths` in the catalog, one drawn per variant."""
    catalog = write_catalog(tmp_path / "strengths.yaml", models_dir, names=("tiny-sd15",), strengths=[0.3, 0.6])
    with dg.instance_for_test() as instance:
        keys, result = _diffuse_all(instance, project, variants=4, models_file=str(catalog))
    assert result.success
    outputs = project["output_dir"]
    sources = source_paths(project["images_dir"])
    drawn = [read_record(result_path(outputs, sources[key], v)).strength for key in keys for v in range(4)]
    assert set(drawn) == {0.3, 0.6}


def test_one_variant_can_be_rerolled_and_the_new_draw_is_kept(project):
    with dg.instance_for_test() as instance:
        keys, _ = _diffuse_all(instance, project, variants=2)
        outputs = project["output_dir"]
        sources = source_paths(project["images_dir"])
        before = {(k, v): read_record(result_path(outputs, sources[k], v)) for k in keys for v in (0, 1)}
        reroll = {"ops": {"diffused_image": {"config": {"reroll": ["red.png~v1"]}}}}
        _, rerolled = _diffuse_all(instance, project, run_config=reroll, variants=2)
        assert _run_figures_of(instance, rerolled) == {"generated": 1, "reused": 5}
        new = read_record(result_path(outputs, "red.png", 1))
        assert new.roll == 1 and new.seed != before[("red.png", 1)].seed
        assert read_record(result_path(outputs, "red.png")).seed == before[("red.png", 0)].seed
        _, again = _diffuse_all(instance, project, variants=2)  # a plain run keeps the re-rolled draw
        assert _run_figures_of(instance, again) == {"generated": 0, "reused": 6}
        assert read_record(result_path(outputs, "red.png", 1)).seed == new.seed

        # An image named by its path (its key is green_photo.jpg-13be0805); a variant the run does not make and a
        # name that is no image are left alone, and the log says so.
        names = ["green photo.jpg~v1", "red.png~v2", "red.png~vx", "nothing.png"]
        _, named = _diffuse_all(
            instance, project, run_config={"ops": {"diffused_image": {"config": {"reroll": names}}}}, variants=2
        )
        assert _run_figures_of(instance, named) == {"generated": 1, "reused": 5}
        assert read_record(result_path(outputs, "green photo.jpg", 1)).roll == 1
        said = [e.user_message for e in instance.all_logs(named.run_id) if "reroll names" in e.message]
        assert said == [
            "reroll names ['nothing.png'], which are not among this run's images (name each by its partition key or "
            "its path under the images folder): left alone.",
            "reroll names ['red.png~v2', 'red.png~vx'], but this run makes 2 result(s) per image (~v0 to ~v1): left "
            "alone. Run with more variants (`--variants`, or the dataset resource's `variants`) to make or re-roll "
            "them.",
        ], said
