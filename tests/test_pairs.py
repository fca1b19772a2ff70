"""Inputs that come in pairs: a mask or control images per source, matched by path, through real materializations
of tiny inpainting and ControlNet models."""

import re
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from random_diffusion_dagster.defs.out_of_date import current_planner, out_of_date, summary
from random_diffusion_dagster.defs.resources import DatasetResource
from random_diffusion_dagster.demo.paired import TINY_INPAINT, controlnet_dir
from random_diffusion_dagster.engine.catalog import load_catalog
from random_diffusion_dagster.engine.images import scan_images
from random_diffusion_dagster.engine.pairs import MASK, PairFolders, canny_edges
from random_diffusion_dagster.engine.pipelines import PipelineCache
from random_diffusion_dagster.engine.plan import snapshot_source
from random_diffusion_dagster.engine.results import read_record, result_path
from random_diffusion_dagster.engine.runner import run_tasks

from helpers import FAST_DEFAULTS, make_image
from test_assets import _diffuse_all, _partition_metadata

SIZE = (64, 64)


def _mask(path, size=SIZE):
    """White (repaint) on the right half, black (keep) on the left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = Image.new("L", size, 0)
    mask.paste(255, (size[0] // 2, 0, size[0], size[1]))
    mask.save(path)
    return path


def _pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def _catalog(target, models_dir, **entry):
    """One entry on tiny-sd15 (or the model `entry` names) with `entry`'s keys, at 64 px and 4 steps, strength 1."""
    entry = {"name": "paired", "path": str(models_dir / "tiny-sd15"), **entry}
    defaults = {**FAST_DEFAULTS, "resolution": 64, "strength": 1.0, "quality": {"min_change": 0}}
    target.write_text(yaml.safe_dump({"defaults": defaults, "models": [entry]}))
    return target


@pytest.fixture
def paired(tmp_path):
    """cat/a.png and cat/b.png, dog/c.png; masks in a masks folder, one beside its source; a depth control folder."""
    images = tmp_path / "images"
    for name, color in (("cat/a.png", (200, 60, 40)), ("cat/b.png", (40, 160, 200)), ("dog/c.png", (90, 200, 90))):
        make_image(images / name, size=SIZE, color=color)
    masks = tmp_path / "masks"
    _mask(masks / "cat" / "a.png")
    _mask(images / "dog" / "c.mask.png")  # beside its source
    controls = tmp_path / "controls"
    for name in ("cat/a.png", "cat/b.png", "dog/c.png"):
        make_image(controls / "depth" / name, size=SIZE, color=(120, 120, 120))
    (tmp_path / "prompts.txt").write_text("a {label} in the snow\n")
    return {
        "images_dir": str(images),
        "output_dir": str(tmp_path / "outputs"),
        "prompts_file": str(tmp_path / "prompts.txt"),
        "masks_dir": str(masks),
        "controls_dir": str(controls),
        "seed": 0,
    }


def test_masks_and_controls_are_matched_by_stem_across_nested_folders(paired):
    images = paired["images_dir"]
    scan = scan_images(images, recursive=True)
    assert [file.partition_key for file in scan.files] == ["cat/a.png", "cat/b.png", "dog/c.png"]  # no c.mask.png
    _mask(Path(images) / "dog" / "gone.mask.png")  # its image deleted: still a mask, not a source, and said
    scan = scan_images(images, recursive=True)
    assert [file.partition_key for file in scan.files] == ["cat/a.png", "cat/b.png", "dog/c.png"]
    assert [(s.name, s.reason.split(":")[0]) for s in scan.skipped] == [
        ("dog/gone.mask.png", "a mask beside no image named gone.*")
    ]
    folders = PairFolders(paired["masks_dir"], paired["controls_dir"])
    found = {file.relative_path: folders.find(file.path, file.relative_path, MASK) for file in scan.files}
    assert found["cat/b.png"] is None
    assert str(found["cat/a.png"]).endswith("masks/cat/a.png")
    assert str(found["dog/c.png"]).endswith("images/dog/c.mask.png")
    assert str(folders.find(f"{images}/cat/b.png", "cat/b.png", "depth")).endswith("controls/depth/cat/b.png")
    assert folders.find(f"{images}/cat/b.png", "cat/b.png", "normal") is None
    assert set(folders.versions(f"{images}/cat/a.png", "cat/a.png")) == {MASK, "depth"}


def test_an_inpainting_entry_repaints_inside_the_mask_only_and_a_bad_pair_fails_that_image_alone(
    paired, tmp_path, models_dir
):
    """cat/a has a mask in the masks folder, dog/c one beside it, cat/b none; a wrong-size mask fails by name."""
    _mask(tmp_path / "masks" / "cat" / "b.png", size=(32, 32))
    catalog = _catalog(
        tmp_path / "models.yaml", models_dir, path=str(models_dir / TINY_INPAINT), inpaint={"mask_blur": 0}
    )
    project = {**paired, "models_file": str(catalog)}
    with dg.instance_for_test() as instance:
        _keys, result = _diffuse_all(instance, project)
        assert not result.success
        error = str(result.get_step_failure_events()[0].step_failure_data.error)
        assert "b.png is 32x32 but its source is 64x64" in error and "resize it to match" in error
        for key in ("cat/a.png", "dog/c.png"):
            source = _pixels(f"{paired['images_dir']}/{key}")
            output = str(result_path(paired["output_dir"], key))
            made = _pixels(output)
            assert (made[:, :32] == source[:, :32]).all()  # kept outside the mask, exactly
            assert np.abs(made[:, 32:] - source[:, 32:]).mean() > 5  # repainted inside it
            record = read_record(output)
            assert record.pairs[0]["role"] == MASK and len(record.pairs[0]["sha256"]) == 64
            metadata = _partition_metadata(instance, key)
            assert metadata["model"] == "paired" and metadata["pairs"] == f"mask: {record.pairs[0]['file']}"
        assert read_record(result_path(paired["output_dir"], "dog/c.png")).pairs[0]["file"] == "c.mask.png"

        # The missing mask: a named error, or (the entry's choice) a plain img2img run.
        (tmp_path / "masks" / "cat" / "b.png").unlink()
        planner = DatasetResource(**project).planner(["a cat"], load_catalog(catalog))
        _tasks, unplanned = planner.plan(scan_images(paired["images_dir"], True).files)
        assert "model 'paired' needs a mask and there is none" in unplanned["cat/b.png"]
        assert "if_unpaired: run_without" in unplanned["cat/b.png"]
        _catalog(catalog, models_dir, inpaint=True, if_unpaired="run_without")  # tiny-sd15: a 4-channel UNet
        _keys, rerun = _diffuse_all(instance, project)
        assert rerun.success
        record = read_record(result_path(paired["output_dir"], "cat/b.png"))
        assert record.pairs == [{"role": MASK, "run_without": True}]


def test_a_mask_edit_stales_only_its_image(paired, tmp_path, models_dir):
    catalog = _catalog(tmp_path / "models.yaml", models_dir, inpaint=True, if_unpaired="run_without")
    project = {**paired, "models_file": str(catalog)}
    with dg.instance_for_test() as instance:
        assert _diffuse_all(instance, project)[1].success
        dataset = DatasetResource(**project)
        assert not out_of_date(instance, dataset, current_planner(instance, dataset)).reasons
        mask = _mask(tmp_path / "masks" / "cat" / "a.png")
        Image.open(mask).rotate(90).save(mask)
        found = out_of_date(instance, dataset, current_planner(instance, dataset))
        assert found.reasons == {"cat/a.png": "mask or control image changed"}
        # cat/b ran without a mask: one added is a pair change too, as is dog/c's taken away (it was "catalog").
        _mask(tmp_path / "masks" / "cat" / "b.png")
        (Path(paired["images_dir"]) / "dog" / "c.mask.png").unlink()
        found = out_of_date(instance, dataset, current_planner(instance, dataset))
        assert set(found.reasons.values()) == {"mask or control image changed"} and len(found.reasons) == 3
        # An entry that needs its mask: each image without one is counted once as "cannot be planned".
        _catalog(catalog, models_dir, inpaint=True)
        (tmp_path / "masks" / "cat" / "b.png").unlink()
        found = out_of_date(instance, dataset, current_planner(instance, dataset))
        assert summary(found.reasons, found.images).endswith("(cannot be planned: 2, mask or control image changed: 1)")
        assert "dog/c.png: model 'paired' needs a mask" in found.reasons["dog/c.png"]


def test_a_canny_controlnet_changes_the_output_and_its_control_image_is_kept(paired, tmp_path, models_dir):
    canny = {"path": str(controlnet_dir(models_dir, "tiny-controlnet-canny")), "control": "canny", "scale": 1.0}
    plain = _catalog(tmp_path / "plain.yaml", models_dir)
    controlled = _catalog(tmp_path / "models.yaml", models_dir, controlnets=[canny])
    outputs = {}
    for name, catalog in (("plain", plain), ("controlled", controlled)):
        project = {**paired, "models_file": str(catalog), "output_dir": str(tmp_path / name)}
        with dg.instance_for_test() as instance:
            assert _diffuse_all(instance, project)[1].success
        outputs[name] = result_path(project["output_dir"], "cat/a.png")
    assert np.abs(_pixels(outputs["plain"]) - _pixels(outputs["controlled"])).mean() > 1
    record = read_record(outputs["controlled"])
    assert record.pairs == [
        {"role": "canny", "file": ".controls/a.png.canny.png", "controlnet": "tiny-controlnet-canny", "scale": 1.0}
    ]
    kept = tmp_path / "controlled" / "cat" / ".controls" / "a.png.canny.png"
    source = Image.open(f"{paired['images_dir']}/cat/a.png").convert("RGB")
    assert (_pixels(kept) == np.asarray(canny_edges(source), dtype=np.int16)).all()
    with Image.open(outputs["controlled"]) as image:
        assert 'ControlNet 0: "Module: canny, Model: tiny-controlnet-canny, Weight: 1"' in image.text["parameters"]


def test_two_entries_on_one_controlnet_load_it_once_and_each_reads_its_own_control_folder(paired, tmp_path, models_dir):
    """Entries with the depth ControlNet at 0.5, at 1.0, and at both (two ControlNets reading one control image, each
    named with its scale in the record: the record kept only the last)."""
    folder = str(controlnet_dir(models_dir, "tiny-controlnet-depth"))
    scales = {"depth-0.5": [0.5], "depth-1.0": [1.0], "depth-twice": [0.5, 1.0]}
    document = {
        "defaults": {**FAST_DEFAULTS, "resolution": 64, "strength": 1.0},
        "models": [
            {
                "name": name,
                "path": str(models_dir / "tiny-sd15"),
                "controlnets": [{"path": folder, "control": "depth", "scale": scale} for scale in entry_scales],
            }
            for name, entry_scales in scales.items()
        ],
    }
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(document))
    dataset = DatasetResource(**paired, models_file=str(tmp_path / "models.yaml"))
    catalog = dataset.catalog()
    files = dataset.source_files()
    tasks = [
        dataset.planner(["a cat"], [spec]).task(f.partition_key, f.path, snapshot_source(f.path), None, f.relative_path)
        for spec in catalog
        for f in files
    ]
    assert all(task.pairs[0].path.endswith(f"controls/depth/{task.source_file}") for task in tasks)
    cache = PipelineCache(device="cpu")
    summary = run_tasks(tasks, cache, log=lambda message: None)
    assert [r.status for r in summary.results] == ["generated"] * 9
    assert (cache.loads, cache.controlnet_loads) == (1, 1)
    for result in summary.results:
        recorded = [(pair["role"], pair["scale"]) for pair in result.record.pairs]
        assert recorded == [("depth", scale) for scale in scales[result.task.model.name]]


def _plan(dataset, spec, prompts=("a cat",)):
    planner = dataset.planner(list(prompts), [spec])
    files = dataset.source_files()
    return [planner.task(f.partition_key, f.path, snapshot_source(f.path), None, f.relative_path) for f in files]


def test_a_batch_of_masked_images_with_two_controlnets_gives_each_image_its_pixels_alone(paired, tmp_path, models_dir):
    """One entry inpainting with a computed canny and a depth folder ControlNet: diffusers' ControlNet inpaint
    pipeline on tiny-sd15's modules, each image with its own mask and controls, batched as alone."""
    _mask(tmp_path / "masks" / "cat" / "b.png")
    for index, name in enumerate(("cat/a.png", "cat/b.png", "dog/c.png")):  # a control image of its own each
        make_image(tmp_path / "controls" / "depth" / name, size=SIZE, color=(60 * index, 200 - 60 * index, 90))
    controlnets = [
        {"path": str(controlnet_dir(models_dir, "tiny-controlnet-canny")), "control": "canny", "scale": 0.8},
        {"path": str(controlnet_dir(models_dir, "tiny-controlnet-depth")), "control": "depth", "scale": 1.0},
    ]
    catalog = _catalog(tmp_path / "models.yaml", models_dir, inpaint=True, controlnets=controlnets)
    spec = load_catalog(catalog)[0]
    results = {}
    for batch_size in (3, 1):
        project = {**paired, "models_file": str(catalog), "output_dir": str(tmp_path / f"out{batch_size}")}
        dataset = DatasetResource(**project)
        cache = PipelineCache(device="cpu")
        summary = run_tasks(_plan(dataset, spec), cache, batch_size=batch_size, log=lambda message: None)
        assert [r.status for r in summary.results] == ["generated"] * 3, [r.error for r in summary.results]
        assert (cache.loads, cache.controlnet_loads) == (1, 2)
        results[batch_size] = summary.results
    assert [r.record.batch_size for r in results[3]] == [3, 3, 3]
    for together, alone in zip(results[3], results[1], strict=True):
        difference = np.abs(_pixels(together.task.output_path) - _pixels(alone.task.output_path))
        assert difference.max() <= 1
        source = _pixels(together.task.source_path)
        assert (_pixels(together.task.output_path)[:, :18] == source[:, :18]).all()  # past the blur (3 x 4 px)
        assert [pair["role"] for pair in together.record.pairs] == [MASK, "canny", "depth"]
    with Image.open(results[3][0].task.output_path) as image:
        parameters = image.text["parameters"]
    assert "Mask blur: 4" in parameters and 'ControlNet 1: "Module: depth, Model: tiny-controlnet-depth' in parameters


@pytest.mark.parametrize("name", ["tiny-sdxl", "tiny-sd3", "tiny-flux"])
def test_every_family_inpaints_inside_the_mask_and_keeps_the_rest(paired, tmp_path, models_dir, name):
    catalog = _catalog(
        tmp_path / "models.yaml",
        models_dir,
        path=str(models_dir / name),
        inpaint={"mask_blur": 0},
        guidance_scale=1.0,
        if_unpaired="run_without",
    )
    dataset = DatasetResource(**paired, models_file=str(catalog))
    tasks = [task for task in _plan(dataset, load_catalog(catalog)[0]) if task.mask is not None]
    summary = run_tasks(tasks, PipelineCache(device="cpu"), log=lambda message: None)
    assert [r.status for r in summary.results] == ["generated"] * 2, [r.error for r in summary.results]
    for result in summary.results:
        made, source = _pixels(result.task.output_path), _pixels(result.task.source_path)
        assert (made[:, :32] == source[:, :32]).all()
        assert np.abs(made[:, 32:] - source[:, 32:]).mean() > 2


def test_a_comparison_cell_reads_the_pairs_of_its_own_model(paired, tmp_path, models_dir):
    """Cells of a plain and an inpainting entry: the inpainting cell runs with the image's mask, and an image without
    one fails that cell alone by name, also where the image's own draw is the inpainting entry (that draw's missing
    mask failed every cell of the image)."""
    from test_comparison import _cell, _compare
    from test_comparison import _materialize as _materialize_comparison

    document = {
        "defaults": {**FAST_DEFAULTS, "resolution": 64, "strength": 1.0, "quality": {"min_change": 0}},
        "models": [
            {"name": "plain", "path": str(models_dir / "tiny-sd15")},
            {"name": "inpaint", "path": str(models_dir / "tiny-sd15"), "inpaint": True, "weight": 1000},
        ],
    }
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(document))
    project = {**paired, "models_file": str(tmp_path / "models.yaml")}
    dataset = DatasetResource(**project)
    _planned, unplanned = dataset.planner(["a cat"], dataset.catalog()).plan(dataset.source_files())
    assert "cat/b.png: model 'inpaint' needs a mask" in unplanned["cat/b.png"]  # its own draw is the inpainting one
    with dg.instance_for_test() as instance:
        _materialize_comparison(instance, project, ["source_images", "model_catalog"])
        result = _compare(instance, project, "cat/a.png", "cat/b.png")
        assert not result.success
        error = str(result.get_step_failure_events()[0].step_failure_data.error)
        assert (
            "1 of 4 comparison cells failed" in error
            and "\n- cat/b.png|inpaint: cat/b.png: model 'inpaint' needs" in error
        )
        inpainted = read_record(_cell(instance, "cat/a.png", "inpaint")["output_path"])
        assert [pair["role"] for pair in inpainted.pairs] == [MASK]
        assert read_record(_cell(instance, "cat/b.png", "plain")["output_path"]).pairs is None


def test_a_masks_folder_inside_the_images_folder_is_refused_before_any_work(paired):
    inside = {**paired, "masks_dir": f"{paired['images_dir']}/masks"}
    with pytest.raises(OSError, match="its images would be diffused as sources. Point RANDOM_DIFFUSION_MASKS_DIR"):
        DatasetResource(**inside, models_file="unused.yaml").check_folders()


def test_only_masked_padding_inpaints_each_image_alone_and_an_inpainting_model_refuses_an_image_without_mask(
    paired, tmp_path, models_dir
):
    catalog = _catalog(
        tmp_path / "models.yaml",
        models_dir,
        path=str(models_dir / TINY_INPAINT),
        inpaint={"mask_blur": 0, "padding": 8},
        if_unpaired="run_without",
    )
    dataset = DatasetResource(**paired, models_file=str(catalog))
    summary = run_tasks(_plan(dataset, load_catalog(catalog)[0]), PipelineCache(device="cpu"), log=lambda m: None)
    by_key = {result.task.key: result for result in summary.results}
    for key in ("cat/a.png", "dog/c.png"):  # masked: cut out around the mask, inpainted, pasted back
        result = by_key[key]
        assert result.status == "generated" and result.record.batch_size == 1
        made, source = _pixels(result.task.output_path), _pixels(result.task.source_path)
        assert (made[:, :32] == source[:, :32]).all() and np.abs(made[:, 32:] - source[:, 32:]).mean() > 2
    assert by_key["cat/b.png"].status == "failed"  # no mask, and this model reads one
    assert "is an inpainting model (its UNet reads a mask), so `if_unpaired: run_without`" in by_key["cat/b.png"].error


def test_a_one_pixel_mask_line_is_judged_with_the_pixels_around_it_and_the_batch_keeps_every_result(
    paired, tmp_path, models_dir
):
    """A mask that is one line ("remove a wire", unblurred) made scikit-image's SSIM divide by zero on its 1-pixel
    box, which failed the whole run; the gates now measure the line with the pixels around it."""
    wire = Image.new("L", SIZE, 0)
    ImageDraw.Draw(wire).line([(32, 4), (32, 60)], fill=255, width=1)
    wire.save(tmp_path / "masks" / "cat" / "a.png")
    catalog = _catalog(tmp_path / "models.yaml", models_dir, inpaint={"mask_blur": 0}, if_unpaired="run_without")
    dataset = DatasetResource(**paired, models_file=str(catalog))
    summary = run_tasks(
        _plan(dataset, load_catalog(catalog)[0]), PipelineCache(device="cpu"), batch_size=3, log=lambda m: None
    )
    assert [r.status for r in summary.results] == ["generated"] * 3, [r.error for r in summary.results]
    by_key = {result.task.key: result for result in summary.results}
    (attempt,) = by_key["cat/a.png"].record.quality["attempts"]
    assert 0 < attempt["change"] <= 1  # measured: the line was repainted
    made, source = _pixels(by_key["cat/a.png"].task.output_path), _pixels(by_key["cat/a.png"].task.source_path)
    assert (np.abs(made - source).sum(axis=2) > 0).sum(axis=0).nonzero()[0].tolist() == [32]  # only the line


def test_a_sixteen_bit_mask_and_a_bad_inpaint_setting_are_refused_by_name(paired, tmp_path, models_dir):
    mask = tmp_path / "masks" / "cat" / "a.png"
    Image.new("I;16", SIZE, 40000).save(mask)
    catalog = _catalog(tmp_path / "models.yaml", models_dir, inpaint=True, if_unpaired="run_without")
    dataset = DatasetResource(**paired, models_file=str(catalog))
    tasks = [task for task in _plan(dataset, load_catalog(catalog)[0]) if task.key == "cat/a.png"]
    (result,) = run_tasks(tasks, PipelineCache(device="cpu"), log=lambda m: None).results
    assert result.status == "failed" and "has pixel mode I;16" in result.error and "8-bit grayscale" in result.error
    _catalog(catalog, models_dir, inpaint={"mask_blur": 4, "padding": -8})
    with pytest.raises(ValueError, match=r"`inpaint: \{padding\}` must be a whole number of pixels from 0 to 4096"):
        load_catalog(catalog)


def test_a_pair_matches_its_source_as_shown_upright(paired, tmp_path, models_dir):
    """A phone photo stored 64x48 with EXIF orientation 6 is shown (and diffused) 48x64: so must its mask be."""
    photo = make_image(tmp_path / "photo.png", size=(64, 48))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(photo).save(f"{paired['images_dir']}/cat/phone.jpg", exif=exif, quality=95)
    _mask(tmp_path / "masks" / "cat" / "phone.png", size=(48, 64))
    _mask(tmp_path / "masks" / "cat" / "b.png", size=(64, 48))  # b is stored and shown 64x64: refused
    catalog = _catalog(tmp_path / "models.yaml", models_dir, inpaint={"mask_blur": 0}, if_unpaired="run_without")
    dataset = DatasetResource(**paired, models_file=str(catalog))
    tasks = [task for task in _plan(dataset, load_catalog(catalog)[0]) if task.key in ("cat/phone.jpg", "cat/b.png")]
    results = {r.task.key: r for r in run_tasks(tasks, PipelineCache(device="cpu"), log=lambda m: None).results}
    assert results["cat/phone.jpg"].status == "generated" and results["cat/phone.jpg"].record.output_size == "48x64"
    assert "b.png is 64x48 but its source is 64x64" in results["cat/b.png"].error


def test_odd_files_where_a_mask_would_be_are_passed_over_or_refused_by_name(paired, tmp_path, models_dir):
    """A device, a FIFO or a folder named like a mask is no mask (reading one would hang or fail the run); two masks
    for one image, a transparent-layer mask and a mask with nothing to repaint are told apart."""
    import os

    masks = tmp_path / "masks"
    (masks / "cat" / "a.png").unlink()
    (masks / "cat" / "a.png").symlink_to("/dev/zero")
    os.mkfifo(masks / "cat" / "b.png")
    (masks / "dog").mkdir()
    (masks / "dog" / "c.png").mkdir()  # and c's mask beside it, images/dog/c.mask.png, stays the one
    folders = DatasetResource(**paired, models_file="unused.yaml").pair_folders()
    images = paired["images_dir"]
    assert folders.find(f"{images}/cat/a.png", "cat/a.png", MASK) is None
    assert folders.find(f"{images}/cat/b.png", "cat/b.png", MASK) is None
    assert str(folders.find(f"{images}/dog/c.png", "dog/c.png", MASK)).endswith("dog/c.mask.png")
    assert set(folders.versions(f"{images}/cat/a.png", "cat/a.png")) == {"depth"}  # no hang

    _mask(masks / "dog" / "c.jpg")  # a second mask for dog/c: which one is meant cannot be told
    with pytest.raises(ValueError, match=r"dog/c.png has 2 files for its mask: .*c.mask.png, .*c.jpg; keep one"):
        DatasetResource(**paired, models_file="unused.yaml").pair_folders().find(
            f"{images}/dog/c.png", "dog/c.png", MASK
        )
    (masks / "dog" / "c.jpg").unlink()

    (masks / "cat" / "a.png").unlink()
    layer = Image.new("RGBA", SIZE, (255, 255, 255, 0))  # white paint on the right half of a transparent layer
    layer.paste((255, 255, 255, 255), (32, 0, 64, 64))
    layer.save(masks / "cat" / "a.png")
    Image.new("L", SIZE, 0).save(masks / "cat" / "b2.png")
    make_image(Path(images) / "cat" / "b2.png", size=SIZE)
    catalog = _catalog(tmp_path / "models.yaml", models_dir, inpaint={"mask_blur": 0}, if_unpaired="run_without")
    dataset = DatasetResource(**paired, models_file=str(catalog))
    tasks = [task for task in _plan(dataset, load_catalog(catalog)[0]) if task.key in ("cat/a.png", "cat/b2.png")]
    results = {r.task.key: r for r in run_tasks(tasks, PipelineCache(device="cpu"), log=lambda m: None).results}
    made, source = _pixels(results["cat/a.png"].task.output_path), _pixels(results["cat/a.png"].task.source_path)
    assert (made[:, :32] == source[:, :32]).all() and np.abs(made[:, 32:] - source[:, 32:]).mean() > 2
    assert "b2.png is black everywhere, so nothing would be repainted" in results["cat/b2.png"].error


def test_controlnet_entries_that_cannot_work_are_refused_by_name(paired, tmp_path, models_dir):
    canny = str(controlnet_dir(models_dir, "tiny-controlnet-canny"))
    for controlnet, expected in (
        ({"path": str(models_dir / "tiny-sd15" / "unet"), "control": "canny"}, "is no diffusers ControlNet"),
        ({"path": "controlnets/typo", "control": "canny"}, f"ControlNet folder {tmp_path}/controlnets/typo "),
        ({"path": "controlnets/typo", "control": "canny"}, "(`controlnets` item 1) does not exist: fix its `path`"),
        ({"path": canny, "control": "mask"}, "`control: mask` would read the inpainting mask as a control image"),
    ):
        with pytest.raises(ValueError, match=re.escape(expected)):
            load_catalog(_catalog(tmp_path / "models.yaml", models_dir, controlnets=[controlnet]))
    # An SD 1.5-shaped ControlNet on an SD 2-shaped model (text width 48): refused by name before any image runs.
    catalog = _catalog(
        tmp_path / "models.yaml",
        models_dir,
        path=str(models_dir / "tiny-sd2"),
        controlnets=[{"path": canny, "control": "canny"}],
    )
    dataset = DatasetResource(**paired, models_file=str(catalog))
    summary = run_tasks(_plan(dataset, load_catalog(catalog)[0]), PipelineCache(device="cpu"), log=lambda m: None)
    assert {r.status for r in summary.results} == {"failed"}
    assert "was made for another kind of model (text width 32" in summary.results[0].error

    for folder, expected in (
        ({"controls_dir": paired["masks_dir"]}, "one kind of pair would be read as the other"),
        ({"masks_dir": f"{paired['output_dir']}/masks"}, "results would be read as pairs"),
    ):
        with pytest.raises(OSError, match=expected):
            DatasetResource(**{**paired, **folder}, models_file="unused.yaml").check_folders()
