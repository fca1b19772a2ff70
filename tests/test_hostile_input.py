"""A hostile images folder, a corrupt model among good ones, and lost outputs.

Every file in the folder ends as exactly one of: a result, a per-image error naming the
file, or a skip reason in `source_images` metadata.
"""

import struct
import time
import zlib
from pathlib import Path

import dagster as dg
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
from random_diffusion_dagster.engine.images import load_rgb
from random_diffusion_dagster.engine.results import output_file_name

from helpers import make_image, result_file, write_catalog

ASSETS = [source_images, prompt_list, model_catalog, diffused_image, diffusion_report, results_readable_on_disk]


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims to be width x height but holds almost nothing: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
    return path


def write_hostile_folder(folder: Path) -> dict[str, set]:
    """Generate the folder; return which file names must end as results, errors and skips."""
    folder.mkdir(parents=True)
    good, errors, skipped = set(), set(), set()

    def add(kind: set, path: Path) -> None:
        kind.add(path.name)

    add(good, make_image(folder / "plain.jpg"))
    add(good, make_image(folder / "plain.png", color=(10, 200, 90)))  # same stem, other extension
    png_bytes = (folder / "plain.png").read_bytes()
    (folder / "really-a-png.jpg").write_bytes(png_bytes)  # wrong extension
    add(good, folder / "really-a-png.jpg")
    (folder / "no_extension").write_bytes(png_bytes)
    add(good, folder / "no_extension")
    Image.new("RGBA", (70, 50), (0, 0, 255, 60)).save(folder / "screenshot alpha.png")
    add(good, folder / "screenshot alpha.png")
    Image.new("CMYK", (60, 60), (0, 120, 200, 10)).save(folder / "scan-cmyk.jpg")
    add(good, folder / "scan-cmyk.jpg")
    Image.new("I;16", (64, 48), 50000).save(folder / "sixteen-bit.png")
    add(good, folder / "sixteen-bit.png")
    Image.new("L", (40, 40), 90).save(folder / "gray.tif")
    add(good, folder / "gray.tif")
    frames = [Image.new("P", (48, 48), i * 40) for i in range(3)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    add(good, folder / "animated.gif")
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.new("RGB", (80, 40), "orange").save(folder / "rotated.jpg", exif=exif)
    add(good, folder / "rotated.jpg")
    add(good, make_image(folder / "panorama.jpg", size=(2400, 150)))
    add(good, make_image(folder / "large.jpg", size=(3000, 2000)))
    add(good, make_image(folder / "café ☕ 日本語 photo.png", color=(120, 60, 30)))
    add(good, make_image(folder / "dots...and|pipes,[1].png", color=(30, 60, 120)))
    add(good, make_image(folder / ("long-" + "x" * 200 + ".png"), color=(90, 90, 90)))

    half = folder / "half-copied.png"
    half.write_bytes(png_bytes[: len(png_bytes) // 2])
    add(errors, half)
    add(errors, _png_header_only(folder / "bomb.png", 30000, 30000))
    add(errors, _png_header_only(folder / "just-over-limit.png", 10000, 9000))

    (folder / "notes.txt").write_text("shopping list")
    add(skipped, folder / "notes.txt")
    (folder / "fake.png").write_text("<html>not a png</html>")
    add(skipped, folder / "fake.png")
    (folder / "empty.jpg").write_bytes(b"")
    add(skipped, folder / "empty.jpg")
    return {"good": good, "errors": errors, "skipped": skipped}


@pytest.fixture
def hostile(project, tmp_path):
    expected = write_hostile_folder(tmp_path / "hostile")
    return {**project, "images_dir": str(tmp_path / "hostile")}, expected


def _resources(project):
    return {"dataset": DatasetResource(**project), "engine": DiffusionEngineResource(device="cpu", batch_size=4)}


def test_every_file_ends_as_a_result_an_error_or_a_skip(hostile):
    project, expected = hostile
    with dg.instance_for_test() as instance:
        scan = dg.materialize(ASSETS, selection=["source_images"], instance=instance, resources=_resources(project))
        metadata = scan.asset_materializations_for_node("source_images")[0].metadata
        skipped_table = {record.data["name"] for record in metadata["skipped_files"].value.records}
        keys = instance.get_dynamic_partitions("images")
        assert len(keys) == len(set(keys)) == len(expected["good"]) + len(expected["errors"])
        run = dg.materialize(
            ASSETS,
            selection=["prompt_list", "model_catalog", "image_draw", "diffused_image"],
            instance=instance,
            resources=_resources(project),
            tags=partition_range_tags(keys[0], keys[-1]),
            raise_on_error=False,
        )
        assert not run.success
        error = str(run.get_step_failure_events()[0].step_failure_data.error)

    outputs = {p.name for p in Path(project["output_dir"]).glob("*.png")}
    results = {name for name in expected["good"] | expected["errors"] if output_file_name(name) in outputs}
    failed = {name for name in expected["good"] | expected["errors"] if name in error}
    skips = {name for name in expected["skipped"] if name in skipped_table}
    assert results == expected["good"]
    assert failed == expected["errors"]
    assert skips == expected["skipped"]
    assert len(results) + len(failed) + len(skips) == len(list(Path(project["images_dir"]).iterdir()))
    assert "truncated" in error and "30000x30000" not in error
    # Pillow refuses this one itself, naming twice the limit (178956970): the project's limit and fix are shown.
    assert "far above the 89,478,485-pixel limit for source images" in error and "178956970" not in error
    assert "10000x9000 (90,000,000 pixels), above the 89,478,485-pixel limit" in error
    assert not [p for p in Path(project["output_dir"]).iterdir() if p.name.endswith(".tmp")]


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path):
    path = make_image(tmp_path / "big.jpg", size=(4000, 3000))
    started = time.perf_counter()
    image = load_rgb(path, min_side=256)
    assert image.size == (500, 375)  # JPEG draft: 1/8 scale, still above the model's side
    assert time.perf_counter() - started < 1.0


def test_a_corrupt_model_fails_only_the_images_that_drew_it(project, models_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken-model"
    shutil.copytree(models_dir / "tiny-sd14", broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 100)
    catalog = write_catalog(tmp_path / "mixed.yaml", models_dir, names=("tiny-sd15",))
    catalog.write_text(catalog.read_text() + f"- name: broken\n  path: {broken}\n")
    for index in range(6):
        make_image(Path(project["images_dir"]) / f"extra{index}.png", color=(index * 40, 80, 160))
    project = {**project, "models_file": str(catalog)}
    with dg.instance_for_test() as instance:
        dg.materialize(ASSETS, selection=["source_images"], instance=instance, resources=_resources(project))
        keys = instance.get_dynamic_partitions("images")
        run = dg.materialize(
            ASSETS,
            selection=["prompt_list", "model_catalog", "image_draw", "diffused_image"],
            instance=instance,
            resources=_resources(project),
            tags=partition_range_tags(keys[0], keys[-1]),
            raise_on_error=False,
        )
        error = str(run.get_step_failure_events()[0].step_failure_data.error)
    failed = [k for k in keys if f"- {k}:" in error]
    written = [k for k in keys if result_file(project["images_dir"], project["output_dir"], k).is_file()]
    assert failed and written and sorted(failed + written) == sorted(keys)
    assert "Model 'broken'" in error and "failed to load" in error


def test_check_and_catch_up_notice_a_lost_output(project):
    with dg.instance_for_test() as instance:
        dg.materialize(ASSETS, selection=["source_images"], instance=instance, resources=_resources(project))
        keys = instance.get_dynamic_partitions("images")
        dg.materialize(
            ASSETS,
            selection=["prompt_list", "model_catalog", "image_draw", "diffused_image"],
            instance=instance,
            resources=_resources(project),
            tags=partition_range_tags(keys[0], keys[-1]),
        )
        check = dg.AssetSelection.checks(results_readable_on_disk)
        passed = dg.materialize(ASSETS, selection=check, instance=instance, resources=_resources(project))
        assert passed.get_asset_check_evaluations()[0].passed
        result_file(project["images_dir"], project["output_dir"], keys[1]).write_bytes(b"corrupted")
        failed = dg.materialize(ASSETS, selection=check, instance=instance, resources=_resources(project))
        evaluation = failed.get_asset_check_evaluations()[0]
        assert not evaluation.passed and keys[1] in evaluation.metadata["partitions"].value
