"""LoRA entries in the random draw, on the tiny SD 1.5-style model and the tiny LoRAs built for it (demo/lora.py):
one loaded base shared by its entries, exactly the entry's adapters per batch, A1111's hashes in the PNG, staleness
per entry, named catalog errors, and a real Dagster run."""

import dataclasses
import hashlib
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from random_diffusion_dagster.demo.lora import TinyLoraRecipe, build_tiny_lora, lora_file
from random_diffusion_dagster.engine.catalog import CatalogError, load_catalog
from random_diffusion_dagster.engine.images import scan_folder
from random_diffusion_dagster.engine.pipelines import PipelineCache, Speedups, model_hash
from random_diffusion_dagster.engine.plan import Planner, snapshot_source
from random_diffusion_dagster.engine.prompts import load_prompts
from random_diffusion_dagster.engine.results import PARAMETERS_CHUNK, read_record
from random_diffusion_dagster.engine.runner import run_tasks

from helpers import FAST_DEFAULTS, assert_same_pixels, make_image
from test_assets import _diffuse_all, _partition_metadata, _run_figures

PROMPTS = ["a lighthouse", "a red fox", "an ice castle"]


def _catalog(path: Path, models_dir: Path, entries: list[dict], base: str = "tiny-sd15") -> Path:
    """`entries` on `base`, each with its `loras` as (LoRA name, weight) pairs written relative to the catalog."""
    models = []
    for entry in entries:
        written = {"name": entry["name"], "path": str(models_dir / entry.get("base", base))}
        if entry.get("loras"):
            written["loras"] = [
                {"path": os.path.relpath(lora_file(models_dir, name), path.parent), "weight": weight}
                for name, weight in entry["loras"]
            ]
        models.append(written)
    path.write_text(yaml.safe_dump({"defaults": FAST_DEFAULTS, "models": models}))
    return path


def _three_entries(tmp_path, models_dir, weight_a=0.8):
    return load_catalog(
        _catalog(
            tmp_path / "models.yaml",
            models_dir,
            [
                {"name": "sd15-lora-a", "loras": [("tiny-lora-a", weight_a)]},
                {"name": "sd15-lora-ab", "loras": [("tiny-lora-b", 1.0), ("tiny-lora-a", -0.5)]},
                {"name": "sd15-plain"},  # sorted last: it runs after the LoRA entries, on the same base
            ],
        )
    )


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


def _images(folder: Path, count: int) -> Path:
    for index in range(count):
        make_image(folder / f"img{index}.png", color=(40 * index % 256, 200 - 30 * index, 90 + 20 * index))
    return folder


def _task(spec, source: Path, output_dir: Path, name: str):
    """The source's task with `spec` alone (one model: the same prompt and seed whatever the spec)."""
    return Planner(["a lighthouse"], [spec], 0, str(output_dir)).task(
        name, str(source), snapshot_source(source), relative_path=name
    )


def _addnet_hash(path: Path) -> str:
    """A1111's LoRA hash, computed here independently: sha256 of the bytes after the safetensors header."""
    data = path.read_bytes()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little") :]).hexdigest()[:12]


def test_a_lora_changes_pixels_weight_zero_gives_the_base_and_the_png_names_base_and_adapters(tmp_path, models_dir):
    specs = load_catalog(
        _catalog(
            tmp_path / "models.yaml",
            models_dir,
            [
                {"name": "plain"},
                {"name": "watercolor", "loras": [("tiny-lora-a", 0.8)]},
                {"name": "off", "loras": [("tiny-lora-a", 0.0)]},
                {"name": "both", "loras": [("tiny-lora-a", 0.8), ("tiny-lora-b", 1.5)]},
            ],
        )
    )
    source = make_image(tmp_path / "src.png", size=(64, 64))
    tasks = [_task(spec, source, tmp_path / "out", f"{spec.name}.png") for spec in specs]
    assert len({t.seed for t in tasks}) == 1 and len({t.fingerprint for t in tasks}) == 4
    cache = PipelineCache(device="cpu")
    summary = run_tasks(tasks, cache, log=lambda m: None)
    assert [r.status for r in summary.results] == ["generated"] * 4, [r.error for r in summary.results]
    assert cache.loads == 1 and cache.adapter_loads == 2
    plain, watercolor, off, both = (_pixels(t.output_path) for t in tasks)
    assert np.abs(watercolor - plain).mean() > 0.1 and not np.array_equal(both, watercolor)
    assert np.array_equal(off, plain)  # weight 0: the adapter adds exactly nothing

    base_hash = model_hash(specs[0])
    hash_a, hash_b = (_addnet_hash(lora_file(models_dir, name)) for name in ("tiny-lora-a", "tiny-lora-b"))
    with Image.open(tasks[3].output_path) as image:
        parameters = image.text[PARAMETERS_CHUNK]
    prompt_line, settings_line = parameters.splitlines()
    assert prompt_line == "a lighthouse <lora:tiny-lora-a:0.8> <lora:tiny-lora-b:1.5>"
    assert f"Model hash: {base_hash}, Model: both," in settings_line
    assert settings_line.endswith(f'Lora hashes: "tiny-lora-a: {hash_a}, tiny-lora-b: {hash_b}"')
    record = read_record(tasks[3].output_path)
    assert record.model_hash == base_hash
    assert record.loras == [
        {"name": "tiny-lora-a", "weight": 0.8, "hash": hash_a},
        {"name": "tiny-lora-b", "weight": 1.5, "hash": hash_b},
    ]
    with Image.open(tasks[0].output_path) as image:
        assert "Lora hashes" not in image.text[PARAMETERS_CHUNK] and "<lora:" not in image.text[PARAMETERS_CHUNK]
    assert read_record(tasks[0].output_path).loras is None  # as in records written before adapters existed


def test_an_sdxl_lora_changes_its_bases_pixels_quietly_and_the_png_names_it(tmp_path, models_dir):
    """Most LoRAs people use are SDXL's: one made for the tiny SDXL UNet loads on it, changes the picture, and
    diffusers' notice that it has no keys for either text encoder stays off the console (the run logs its own
    line for each adapter load)."""
    import diffusers

    unet = diffusers.UNet2DConditionModel.from_pretrained(models_dir / "tiny-sdxl", subfolder="unet")
    adapter = build_tiny_lora(unet, TinyLoraRecipe("tiny-xl-style", seed=7), tmp_path / "loras" / "xl.safetensors")
    catalog = _catalog(tmp_path / "models.yaml", models_dir, [{"name": "xl"}, {"name": "xl-style"}], base="tiny-sdxl")
    document = yaml.safe_load(catalog.read_text())
    document["models"][1]["loras"] = [{"path": "loras/xl.safetensors", "weight": 0.8}]
    catalog.write_text(yaml.safe_dump(document))
    plain, styled = load_catalog(catalog)
    notices = []
    lora_logger = logging.getLogger("diffusers.loaders.lora_base")  # its filters act before any handler
    handler = logging.Handler()
    handler.emit = lambda record: notices.append(record.getMessage())
    lora_logger.addHandler(handler)
    source = make_image(tmp_path / "src.png", size=(64, 64))
    tasks = [_task(spec, source, tmp_path / "out", f"{spec.name}.png") for spec in (plain, styled)]
    try:
        summary = run_tasks(tasks, PipelineCache(device="cpu"), log=lambda m: None)
    finally:
        lora_logger.removeHandler(handler)
    assert [r.status for r in summary.results] == ["generated"] * 2, [r.error for r in summary.results]
    assert np.abs(_pixels(tasks[1].output_path) - _pixels(tasks[0].output_path)).mean() > 0.1
    with Image.open(tasks[1].output_path) as image:
        parameters = image.text[PARAMETERS_CHUNK]
    assert parameters.startswith("a lighthouse <lora:xl:0.8>\n")
    assert f'Lora hashes: "xl: {_addnet_hash(adapter)}"' in parameters
    assert not [n for n in notices if "No LoRA keys" in n], notices


def test_entries_on_one_base_load_it_once_and_switching_adapters_leaves_no_residue(tmp_path, models_dir):
    catalog = _three_entries(tmp_path, models_dir)
    images = scan_folder(_images(tmp_path / "images", 4))
    # A run seed whose draw gives every entry at least one of the eight results (two variants per image).
    for run_seed in range(100):
        tasks, _ = Planner(PROMPTS, catalog, run_seed, str(tmp_path / "out"), variants=2).plan(images)
        if {t.model.name for t in tasks} == {spec.name for spec in catalog}:
            break
    lines = []
    cache = PipelineCache(device="cpu", log=lines.append)
    summary = run_tasks(tasks, cache, batch_size=2, log=lambda m: None)
    assert [r.status for r in summary.results] == ["generated"] * 8, [r.error for r in summary.results]
    assert summary.pipeline_loads == cache.loads == 1 and cache.adapter_loads == 2
    assert [line.split(" for ")[0].split(" on ")[0] for line in lines if line.startswith("Loaded")] == [
        "Loaded model 'sd15-lora-a'",  # the first entry loads the base...
        "Loaded LoRA 'tiny-lora-a'",
        "Loaded LoRA 'tiny-lora-b'",  # ...the next adds only its missing adapter, the plain entry nothing
    ]
    for task in tasks:  # each alone, with a fresh cache: the base with only this entry's adapters ever loaded
        alone = dataclasses.replace(task, output_path=str(tmp_path / "alone" / Path(task.output_path).name))
        assert run_tasks([alone], PipelineCache(device="cpu"), log=lambda m: None).results[0].status == "generated"
        assert_same_pixels(_pixels(alone.output_path), _pixels(task.output_path), task.model.name)


def test_editing_a_lora_weight_stales_exactly_the_images_drawn_with_that_entry(tmp_path, models_dir):
    images = scan_folder(_images(tmp_path / "images", 6))
    before = _three_entries(tmp_path, models_dir, weight_a=0.8)
    assert "loras" not in before[2].result_settings()  # a plain entry's settings, as before adapters existed
    first, _ = Planner(PROMPTS, before, 3, str(tmp_path / "out")).plan(images)
    cache = PipelineCache(device="cpu")
    assert {r.status for r in run_tasks(first, cache, log=lambda m: None).results} == {"generated"}
    after = _three_entries(tmp_path, models_dir, weight_a=0.6)
    second, _ = Planner(PROMPTS, after, 3, str(tmp_path / "out")).plan(images)
    assert [t.model.name for t in second] == [t.model.name for t in first]  # the draw stays: weights are not draws
    assert "sd15-lora-a" in {t.model.name for t in first} and len({t.model.name for t in first}) > 1
    changed = {t.key for t, u in zip(first, second, strict=True) if t.fingerprint != u.fingerprint}
    assert changed == {t.key for t in first if t.model.name == "sd15-lora-a"}
    rerun = run_tasks(second, cache, log=lambda m: None)
    assert {r.task.key for r in rerun.with_status("generated")} == changed
    assert {r.task.key for r in rerun.with_status("reused")} == {t.key for t in first} - changed
    assert read_record(rerun.with_status("generated")[0].task.output_path).loras[0]["weight"] == 0.6
    assert rerun.pipeline_loads == 0  # the weight is set per batch on the resident base: nothing reloads


def test_a_shared_base_is_evicted_only_with_every_entry_on_it(tmp_path, models_dir):
    a, ab, plain = _three_entries(tmp_path, models_dir)
    (other,) = load_catalog(_catalog(tmp_path / "other.yaml", models_dir, [{"name": "sd2"}], base="tiny-sd2"))
    lines = []
    cache = PipelineCache(device="cpu", max_models=1, log=lines.append)
    for spec in (a, plain, ab, a):
        cache.get(spec)
    assert cache.loads == 1 and cache.evictions == 0 and cache.resident == ["sd15-plain", "sd15-lora-ab", "sd15-lora-a"]
    cache.evict("sd15-lora-a")  # another entry still runs on the base: it stays
    assert cache.evictions == 0 and cache.resident == ["sd15-plain", "sd15-lora-ab"]
    cache.get(other)  # one base at most: the tiny-sd15 base goes with both its entries
    assert cache.resident == ["sd2"] and cache.evictions == 1 and cache.loads == 2
    assert "Evicted model 'sd15-plain', 'sd15-lora-ab'" in lines[-2]
    pipeline, seconds = cache.get(a)
    assert seconds > 0 and cache.loads == 3 and cache.adapter_loads == 3  # reloaded with its adapter
    assert pipeline.get_active_adapters() and cache.resident == ["sd15-lora-a"]


def test_a_run_takes_the_entries_of_one_base_together_however_their_names_sort(tmp_path, models_dir):
    """`b-sd2` sorts between two LoRA entries on tiny-sd15: taken by name, one resident model loaded tiny-sd15,
    tiny-sd2, then tiny-sd15 again."""
    catalog = _catalog(
        tmp_path / "models.yaml",
        models_dir,
        [
            {"name": "a-lora", "loras": [("tiny-lora-a", 1.0)]},
            {"name": "b-sd2", "base": "tiny-sd2"},
            {"name": "c-lora", "loras": [("tiny-lora-b", 1.0)]},
        ],
    )
    source = make_image(tmp_path / "src.png", size=(64, 64))
    tasks = [_task(spec, source, tmp_path / "out", f"{spec.name}.png") for spec in load_catalog(catalog)]
    summary = run_tasks(tasks, PipelineCache(device="cpu", max_models=1), log=lambda m: None)
    assert [r.status for r in summary.results] == ["generated"] * 3
    assert summary.pipeline_loads == 2


def test_a_lora_base_is_not_compiled_and_its_plain_entries_share_it(tmp_path, models_dir):
    a, _ab, plain = _three_entries(tmp_path, models_dir)
    lines = []
    cache = PipelineCache(device="cpu", speedups=Speedups(compile_unet=True), log=lines.append)
    pipeline, _ = cache.get(a)
    assert not hasattr(pipeline.unet, "_orig_mod")  # compiling fuses the projections the adapters attach to
    assert any("Not compiling the UNet or transformer of model 'sd15-lora-a'" in line for line in lines)
    assert cache.get(plain)[0] is pipeline and cache.loads == 1


def test_a_lora_made_for_another_base_fails_its_images_by_name_and_leaves_the_base_clean(tmp_path, models_dir):
    catalog = _catalog(
        tmp_path / "models.yaml",
        models_dir,
        [{"name": "sd2-with-sd15-lora", "loras": [("tiny-lora-a", 1.0)]}, {"name": "sd2"}],
        base="tiny-sd2",
    )
    wrong, plain = load_catalog(catalog)
    source = make_image(tmp_path / "src.png", size=(64, 64))
    tasks = [_task(spec, source, tmp_path / "out", f"{spec.name}.png") for spec in (wrong, plain)]
    cache = PipelineCache(device="cpu")
    diffusers_said = []  # what diffusers' logger lets through, to the console of `random-diffusion run`
    handler = logging.Handler()
    handler.emit = lambda record: diffusers_said.append(record.getMessage())
    logging.getLogger("diffusers.loaders.peft").addHandler(handler)
    try:
        failed, made = run_tasks(tasks, cache, log=lambda m: None).results
    finally:
        logging.getLogger("diffusers.loaders.peft").removeHandler(handler)
    assert failed.status == "failed" and "sd2-with-sd15-lora" in failed.error and "tiny-lora-a" in failed.error
    assert "does not fit this base (Stable Diffusion 1.x/2.x): it was made for another kind of model (" in failed.error
    assert re.search(r"\(\S+to_k\.lora_A\.weight is 4x32 in the file and 4x48 in the base\)", failed.error), (
        failed.error
    )
    assert diffusers_said == []  # its layer-by-layer dump of peft's error: the message above says it in one line
    assert made.status == "generated" and cache.loads == 1
    fresh = dataclasses.replace(tasks[1], output_path=str(tmp_path / "fresh.png"))
    run_tasks([fresh], PipelineCache(device="cpu"), log=lambda m: None)
    assert np.array_equal(_pixels(fresh.output_path), _pixels(tasks[1].output_path))


@pytest.mark.parametrize(
    ("loras", "message"),
    [
        ([{"path": "loras/missing.safetensors"}], "loras/missing.safetensors (`loras` item 1) does not exist: fix its"),
        ([{"path": "LORA_A", "weight": 80}], "`weight` must be a number from -4 to 4"),
        ([{"path": "LORA_A", "weight": "0.8"}], "`weight` must be a number from -4 to 4 (unquoted"),
        (
            [{"path": "LORA_A", "scale": 0.8}],
            "`loras` item 1: unknown keys ['scale']; an adapter has ['path', 'weight']",
        ),
        ([{"weight": 0.8}], "`loras` item 1 needs `path`"),
        ("LORA_A", "`loras` must be a list of adapters"),
        ([{"path": "loras/watercolor.ckpt"}], "is not a .safetensors file"),
        ([{"path": "LORA_A"}, {"path": "LORA_A", "weight": 0.5}], "is listed twice"),
        (
            [{"path": "LORA_A"}, {"path": "other/LORA_A"}],
            "have one name, 'tiny-lora-a', and results name their adapters by file name",
        ),
        # A1111's `<lora:name:weight>` and `Lora hashes: "a: h, b: h"` would read another name
        ([{"path": "other/ink:2.safetensors"}], "has ':' in its name, which the `<lora:name:weight>` tags"),
        ([{"path": "other/ink, paper.safetensors"}], "has ',' in its name"),
    ],
)
def test_bad_lora_entries_fail_with_named_errors(tmp_path, models_dir, loras, message):
    real = lora_file(models_dir, "tiny-lora-a")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / real.name).write_bytes(real.read_bytes())  # another file of the same name
    for odd in ("ink:2.safetensors", "ink, paper.safetensors"):
        (tmp_path / "other" / odd).write_bytes(real.read_bytes())

    def named(value):
        value = value.replace("LORA_A", real.name if value.startswith("other/") else str(real))
        return str(tmp_path / value) if value.startswith("other/") else value

    loras = (
        str(real)
        if loras == "LORA_A"
        else [{k: named(v) if isinstance(v, str) else v for k, v in i.items()} for i in loras]
    )
    catalog = tmp_path / "models.yaml"
    entry = {"name": "sd15-watercolor", "path": str(models_dir / "tiny-sd15"), "loras": loras}
    catalog.write_text(yaml.safe_dump({"models": [entry]}))
    with pytest.raises(CatalogError) as error:
        load_catalog(catalog)
    assert str(error.value).startswith(f"{catalog}: model 'sd15-watercolor': ")
    assert message in str(error.value)


def test_one_materialization_draws_from_a_base_and_two_loras_with_one_load(instance, project, models_dir, tmp_path):
    catalog = _catalog(
        tmp_path / "lora-catalog.yaml",
        models_dir,
        [
            {"name": "sd15"},
            {"name": "sd15-a", "loras": [("tiny-lora-a", 0.8)]},
            {"name": "sd15-b", "loras": [("tiny-lora-b", 1)]},
        ],
    )
    project = {**project, "models_file": str(catalog)}
    images, specs = scan_folder(project["images_dir"]), load_catalog(catalog)
    # A run seed whose draw gives the three images the three entries.
    prompts = load_prompts(project["prompts_file"])
    seed = next(
        s for s in range(100) if len({t.model.name for t in Planner(prompts, specs, s, "o").plan(images)[0]}) == 3
    )
    keys, result = _diffuse_all(instance, project, seed=seed)
    assert result.success and len(keys) == 3
    drawn = {key: _partition_metadata(instance, key)["model"] for key in keys}
    assert sorted(drawn.values()) == ["sd15", "sd15-a", "sd15-b"]
    assert _run_figures(instance, result)["pipeline_loads"] == "1"  # every entry ran on the one loaded base
    for key, model in drawn.items():
        record = read_record(_partition_metadata(instance, key)["output_path"])
        assert [lora["name"] for lora in record.loras or []] == {
            "sd15": [],
            "sd15-a": ["tiny-lora-a"],
            "sd15-b": ["tiny-lora-b"],
        }[model]
