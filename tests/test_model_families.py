"""SDXL, SD3.5 and Flux.1 img2img end to end on tiny random-weight pipelines the project builds (demo/families.py):
loading, batching, negative prompts, emphasis, truncation, single-file SDXL and a Dagster materialization."""

import dataclasses
import re

import dagster as dg
import numpy as np
import pytest
import torch
from PIL import Image

from random_diffusion_dagster.defs.assets import diffused_image, model_catalog, prompt_list, source_images
from random_diffusion_dagster.defs.resources import DatasetResource, DiffusionEngineResource
from random_diffusion_dagster.defs.run_ranges import partition_range_tags
from random_diffusion_dagster.demo.lora import lora_file
from random_diffusion_dagster.engine.catalog import load_catalog, parse_catalog
from random_diffusion_dagster.engine.families import prompt_truncated
from random_diffusion_dagster.engine.images import content_size, scan_images
from random_diffusion_dagster.engine.pipelines import (
    ModelLoadError,
    PipelineCache,
    Speedups,
    estimate_bytes,
    is_compiled,
    load_pipeline,
)
from random_diffusion_dagster.engine.plan import Planner, snapshot_source
from random_diffusion_dagster.engine.results import read_record
from random_diffusion_dagster.engine.runner import run_tasks
from random_diffusion_dagster.engine.weighting import weighted_embeddings_sdxl

from helpers import assert_same_pixels, make_image, write_catalog

FAMILIES = {
    "tiny-sdxl": "StableDiffusionXLImg2ImgPipeline",
    "tiny-sd3": "StableDiffusion3Img2ImgPipeline",
    "tiny-flux": "FluxImg2ImgPipeline",
}
PROMPTS = ["a red fox", "an ice castle at night", "a lighthouse"]


def _spec(models_dir, tmp_path, name, **overrides):
    return load_catalog(write_catalog(tmp_path / f"{name}.yaml", models_dir, names=(name,), **overrides))[0]


def _sources(tmp_path, count=3, size=(96, 60)):
    """Same-size images (one batch), different content; at resolution 64 they run as 64x40 content."""
    colors = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]
    return [make_image(tmp_path / "in" / f"{i}.png", size=size, color=colors[i % 4]) for i in range(count)]


def _task(spec, line, source, out):
    """The task of `source` with the prompt list `[line]`: each image gets the prompt the test gives it."""
    return Planner([line], [spec], 0, str(out)).task(source.name, str(source), snapshot_source(source))


def _run(tasks, batch_size=4):
    return run_tasks(tasks, PipelineCache(device="cpu"), batch_size=batch_size, log=lambda message: None).results


def _pixels(path):
    return np.asarray(Image.open(path), dtype=np.int16)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_family_loads_as_its_img2img_class_and_a_batch_gives_each_image_its_pixels_alone(
    models_dir, tmp_path, name
):
    spec = _spec(models_dir, tmp_path, name)
    pipeline = load_pipeline(spec, "cpu")
    assert type(pipeline).__name__ == FAMILIES[name]
    assert estimate_bytes(spec) == sum(p.stat().st_size for p in (models_dir / name).rglob("*.safetensors"))
    sources = _sources(tmp_path)
    batched = _run([_task(spec, line, s, tmp_path / "batched") for line, s in zip(PROMPTS, sources, strict=True)])
    pairs = enumerate(zip(PROMPTS, sources, strict=True))
    alone = [_run([_task(spec, line, s, tmp_path / f"alone{i}")])[0] for i, (line, s) in pairs]
    assert [r.status for r in batched + alone] == ["generated"] * 6, [r.error for r in batched + alone]
    assert [r.record.batch_size for r in batched] == [3, 3, 3]
    for together, single in zip(batched, alone, strict=True):
        assert together.record.prompt == single.record.prompt and together.record.seed == single.record.seed
        assert np.abs(_pixels(together.task.output_path) - _pixels(single.task.output_path)).max() <= 1
    # Different prompts, different pictures: the prompts reached the model.
    assert np.abs(_pixels(batched[0].task.output_path) - _pixels(batched[1].task.output_path)).max() > 0
    record = batched[0].record
    # SD3 and Flux.1 work on sides that are multiples of 16 (8 x their 2x2 patches): 64x40 runs padded to 64x48.
    assert record.model_input_size == ("64x40" if name == "tiny-sdxl" else "64x48")
    assert record.output_size == "64x40" and not record.prompt_truncated


def test_negative_prompts_reach_sdxl_and_sd3_and_the_png_says_so(models_dir, tmp_path):
    (source,) = _sources(tmp_path, 1)
    for name in ("tiny-sdxl", "tiny-sd3"):
        spec = _spec(models_dir, tmp_path, name)
        with_negative, without = _run(
            [
                _task(spec, '--prompt "a red fox" --negative_prompt "blurry, dark"', source, tmp_path / f"{name}-n"),
                _task(spec, "a red fox", source, tmp_path / f"{name}-plain"),
            ]
        )
        assert with_negative.status == without.status == "generated", (with_negative.error, without.error)
        assert np.abs(_pixels(with_negative.task.output_path) - _pixels(without.task.output_path)).max() > 0, name
        with Image.open(with_negative.task.output_path) as image:
            assert image.text["parameters"].startswith("a red fox\nNegative prompt: blurry, dark\n")
            assert "CFG scale: 7.5," in image.text["parameters"]


def test_flux_refuses_negative_prompts_by_name_and_takes_guidance_as_its_distilled_value(models_dir, tmp_path):
    sources = _sources(tmp_path, 2)
    spec = _spec(models_dir, tmp_path, "tiny-flux", guidance_scale=3.5)
    line = _task(spec, '--prompt "a red fox" --negative_prompt "blurry"', sources[0], tmp_path / "line")
    plain = _task(spec, "a red fox", sources[1], tmp_path / "line")
    refused, made = _run([line, plain])
    assert refused.status == "failed" and made.status == "generated", made.error
    assert "model 'tiny-flux' (Flux.1) takes no negative prompt" in refused.error
    assert "'blurry' (from the prompt line's --negative_prompt)" in refused.error
    # The fix named is the one that reaches the text where it came from: here the line, not the entry.
    assert "Drop --negative_prompt from the prompt line" in refused.error and "negative_prompt: " not in refused.error
    # The catalog's negative prompt (here from `defaults:`) is refused the same way, naming where it came from.
    entry = _spec(models_dir, tmp_path, "tiny-flux", negative_prompt="ugly")
    (from_catalog,) = _run([_task(entry, "a red fox", sources[0], tmp_path / "entry")])
    assert from_catalog.status == "failed" and "the catalog's `negative_prompt`" in from_catalog.error
    assert "`negative_prompt: \"\"` on the 'tiny-flux' entry" in from_catalog.error
    assert "--negative_prompt" not in from_catalog.error
    # guidance_scale is the transformer's distilled guidance input: another value, another picture; the PNG says
    # what ran as Forge writes it (no classifier-free guidance, so CFG scale 1).
    with Image.open(made.task.output_path) as image:
        assert "CFG scale: 1, Distilled CFG Scale: 3.5," in image.text["parameters"]
    (stronger,) = _run([_task(dataclasses.replace(spec, guidance_scale=9.0), "a red fox", sources[1], tmp_path / "g")])
    assert np.abs(_pixels(stronger.task.output_path) - _pixels(made.task.output_path)).max() > 0
    assert stronger.record.guidance_scale == 9.0 and made.record.guidance_scale == 3.5


def test_emphasis_reaches_the_sdxl_embeddings_of_both_encoders_and_the_pooled_one(models_dir, tmp_path):
    spec = _spec(models_dir, tmp_path, "tiny-sdxl", prompt_weighting=True)
    pipeline = load_pipeline(spec, "cpu")
    with torch.inference_mode():
        weighted = weighted_embeddings_sdxl(pipeline, ["a red fox", "a (red:1.5) fox"], ["", ""])
        plain, _negative, pooled, _negative_pooled = pipeline.encode_prompt(
            ["a red fox"], device="cpu", do_classifier_free_guidance=False
        )
    # Without emphasis: exactly the pipeline's own embeddings (both encoders' penultimate states, CLIP-G's pooled).
    assert weighted["prompt_embeds"].shape == (2, 77, 32 + 48)
    assert torch.allclose(weighted["prompt_embeds"][0], plain[0], atol=1e-5)
    assert torch.allclose(weighted["pooled_prompt_embeds"][0], pooled[0], atol=1e-5)
    # With it: both encoders' halves change; the pooled embedding reads the text without its marks.
    difference = (weighted["prompt_embeds"][1] - weighted["prompt_embeds"][0]).abs()
    assert difference[:, :32].max() > 1e-3 and difference[:, 32:].max() > 1e-3
    assert torch.allclose(weighted["pooled_prompt_embeds"][1], pooled[0], atol=1e-5)
    # No negative prompt in the batch: zeros, as SDXL's force_zeros_for_empty_prompt makes them.
    assert not weighted["negative_prompt_embeds"].any() and not weighted["negative_pooled_prompt_embeds"].any()
    source = _sources(tmp_path, 1)[0]
    emphasised, written = _run(
        [_task(spec, "a (red:1.5) fox", source, tmp_path / "w"), _task(spec, "a red fox", source, tmp_path / "p")]
    )
    assert emphasised.status == written.status == "generated", (emphasised.error, written.error)
    assert np.abs(_pixels(emphasised.task.output_path) - _pixels(written.task.output_path)).max() > 0


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
def test_emphasis_is_refused_by_name_where_t5_reads_the_prompt(models_dir, tmp_path, name):
    spec = _spec(models_dir, tmp_path, name, prompt_weighting=True)
    message = f"Model '{name}' (.+) cannot honour `prompt_weighting: true`"
    with pytest.raises(ModelLoadError, match=message + r".*Set `prompt_weighting: false` on this entry"):
        load_pipeline(spec, "cpu")
    (result,) = _run([_task(spec, "a (red:1.5) fox", _sources(tmp_path, 1)[0], tmp_path / "out")])
    assert result.status == "failed" and re.search(message, result.error)


def test_entries_a_family_cannot_run_are_named_when_the_catalog_is_read_and_their_images_still_fail_alone(
    models_dir, tmp_path
):
    """What model_index.json and the paths tell without loading anything: each run's model_catalog names the entries
    whose images will fail (the log and a metadata table), before any image; the others are not named."""
    catalog = tmp_path / "models.yaml"
    catalog.write_text(
        "defaults: {resolution: 64, num_inference_steps: 2, strength: 0.5}\n"
        "models:\n"
        f"  - {{name: fine, path: {models_dir / 'tiny-sd15'}}}\n"
        f"  - {{name: weighted-flux, path: {models_dir / 'tiny-flux'}, prompt_weighting: true}}\n"
        f"  - {{name: negative-flux, path: {models_dir / 'tiny-flux'}, negative_prompt: blurry}}\n"
        f"  - {{name: gone, path: {tmp_path / 'tiny-sd99'}}}\n"
    )
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [model_catalog], instance=instance, resources={"dataset": DatasetResource(models_file=str(catalog))}
        )
        said = [e.user_message for e in instance.all_logs(result.run_id) if "will fail" in e.message]
    assert result.success and len(said) == 3
    named = dict(zip(["weighted-flux", "negative-flux", "gone"], said, strict=True))
    assert "Model 'weighted-flux' (Flux.1) cannot honour `prompt_weighting: true`" in named["weighted-flux"]
    assert "takes no negative prompt" in named["negative-flux"] and "without their own --negative_prompt" in said[1]
    assert "the path does not exist. Fix `path` in the catalog" in named["gone"]
    assert all(line.endswith("The images that draw it will fail; the others run.") for line in said)
    table = result.asset_materializations_for_node("model_catalog")[0].metadata["models_that_will_fail"].value
    assert [row.data["name"] for row in table.records] == ["weighted-flux", "negative-flux", "gone"]


def test_truncation_means_what_each_family_reads(models_dir, tmp_path):
    """SDXL: a CLIP tokenizer over 77 tokens. SD3 / Flux.1: T5 over max_sequence_length (256 / 512); their CLIP
    reads only 77 tokens by design. The demo tokenizers read about one token per character."""
    pipelines = {name: load_pipeline(_spec(models_dir, tmp_path, name), "cpu") for name in FAMILIES}
    medium, long = "a fox " * 30, "a fox " * 100  # ~150 and ~500 characters
    assert [prompt_truncated(pipelines[name], medium) for name in FAMILIES] == [True, False, False]
    assert [prompt_truncated(pipelines[name], long) for name in FAMILIES] == [True, True, False]
    assert prompt_truncated(pipelines["tiny-flux"], long * 2)
    assert not any(prompt_truncated(pipeline, "a red fox") for pipeline in pipelines.values())
    (result,) = _run([_task(_spec(models_dir, tmp_path, "tiny-sd3"), long, _sources(tmp_path, 1)[0], tmp_path)])
    assert result.status == "generated" and result.record.prompt_truncated


def test_a_single_file_sdxl_checkpoint_made_by_the_project_loads_and_makes_the_folders_image(models_dir, tmp_path):
    catalog = parse_catalog(
        {
            "defaults": {"resolution": 64, "num_inference_steps": 4, "strength": 0.5},
            "models": [
                {"name": "folder", "path": "tiny-sdxl"},
                {
                    "name": "file",
                    "single_file": "tiny-sdxl-single-file/tiny-sdxl.safetensors",
                    "config": "tiny-sdxl-single-file/config",
                },
            ],
        },
        base_dir=models_dir,
    )
    folder, single = (load_pipeline(spec, "cpu") for spec in catalog)
    assert type(single).__name__ == "StableDiffusionXLImg2ImgPipeline"
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        expected, loaded = getattr(folder, component).state_dict(), getattr(single, component).state_dict()
        assert expected.keys() == loaded.keys() and all(torch.equal(expected[k], loaded[k]) for k in expected)
    source = _sources(tmp_path, 1)[0]
    results = _run([_task(spec, "a red fox", source, tmp_path / spec.name) for spec in catalog])
    assert [r.status for r in results] == ["generated", "generated"], [r.error for r in results]
    assert_same_pixels(*(_pixels(r.task.output_path) for r in results), "folder vs single file")
    assert results[1].record.model_source == "single_file:tiny-sdxl.safetensors"


def test_a_single_file_checkpoint_with_another_architectures_config_fails_its_own_images_naming_the_fix(
    models_dir, tmp_path
):
    """An SD 1.5 file read with a Flux.1 config (no T5 weights in either), an SDXL file with an SD 1.5 config (weights
    of other shapes): each entry's images fail by name with what to set; the run goes on to the other entry's."""
    catalog = parse_catalog(
        {
            "defaults": {"resolution": 64, "num_inference_steps": 2, "strength": 0.5},
            "models": [
                {
                    "name": "a-flux-file",
                    "single_file": "tiny-sd15-single-file/tiny-sd15.safetensors",
                    "config": "tiny-flux",
                },
                {
                    "name": "b-xl-file",
                    "single_file": "tiny-sdxl-single-file/tiny-sdxl.safetensors",
                    "config": "tiny-sd15-single-file/config",
                },
                {"name": "c-folder", "path": "tiny-sd15"},
            ],
        },
        base_dir=models_dir,
    )
    source = _sources(tmp_path, 1)[0]
    flux_file, xl_file, folder = _run([_task(spec, "a red fox", source, tmp_path / spec.name) for spec in catalog])
    assert folder.status == "generated", folder.error
    assert flux_file.status == "failed" and "Model 'a-flux-file' (single_file:" in flux_file.error
    assert "T5EncoderModel" in flux_file.error and "set `config:` to a whole diffusers folder" in flux_file.error
    assert xl_file.status == "failed" and "Model 'b-xl-file' (single_file:" in xl_file.error
    assert "do not fit the architecture `config:`" in xl_file.error and "corrupt" not in xl_file.error
    assert "ignore_mismatched_sizes" not in xl_file.error  # diffusers' advice to load random weights instead


def test_one_materialization_over_a_catalog_of_every_family_and_two_loras_makes_every_image(
    instance, models_dir, tmp_path
):
    """Issue 35's catalog: SD 1.5, SDXL, SD3, Flux.1 and two LoRA entries on the SD 1.5 base, end to end through
    Dagster; the LoRA entries run on the one loaded SD 1.5 base (5 loads for 6 entries' worth of draws)."""
    import yaml

    names = ("tiny-sd15", "tiny-sdxl", "tiny-sd3", "tiny-flux")
    catalog = write_catalog(tmp_path / "models.yaml", models_dir, names=names)
    document = yaml.safe_load(catalog.read_text())
    for lora in ("tiny-lora-a", "tiny-lora-b"):
        path = str(lora_file(models_dir, lora))
        document["models"].append(
            {"name": f"sd15+{lora}", "path": str(models_dir / "tiny-sd15"), "loras": [{"path": path}]}
        )
    catalog.write_text(yaml.safe_dump(document))
    entries = {entry["name"] for entry in document["models"]}
    for index in range(12):
        make_image(tmp_path / "images" / f"image{index}.png", size=(64 + 8 * index, 48), color=(20 * index, 90, 160))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\nan ice castle\n")
    project = {
        "images_dir": str(tmp_path / "images"),
        "output_dir": str(tmp_path / "outputs"),
        "prompts_file": str(prompts),
        "models_file": str(catalog),
    }
    files, specs = scan_images(project["images_dir"]).files, load_catalog(catalog)
    seed = next(  # a run seed whose draw gives every entry at least one of the twelve images
        s for s in range(200) if {t.model.name for t in Planner(["a"], specs, s, "o").plan(files)[0]} == entries
    )
    resources = {"dataset": DatasetResource(**project, seed=seed), "engine": DiffusionEngineResource(device="cpu")}
    assets = [source_images, prompt_list, model_catalog, diffused_image]
    assert dg.materialize(assets, selection=["source_images"], instance=instance, resources=resources).success
    keys = instance.get_dynamic_partitions("images")
    result = dg.materialize(
        assets,
        selection=["prompt_list", "model_catalog", "image_draw", "diffused_image"],
        instance=instance,
        resources=resources,
        tags=partition_range_tags(keys[0], keys[-1]),
        raise_on_error=False,
    )
    assert result.success
    assert instance.get_materialized_partitions(dg.AssetKey("diffused_image")) == set(keys)
    records = [read_record(path) for path in sorted((tmp_path / "outputs").glob("*.png"))]
    assert len(records) == 12 and {record.model for record in records} == entries
    assert instance.get_run_by_id(result.run_id).tags["random_diffusion/pipeline_loads"] == "4"  # one per base
    for record in records:  # every family gives the source's shape at the model's resolution, whatever it pads to
        width, height = (int(side) for side in record.source_size.split("x"))
        assert record.output_size == "{}x{}".format(*content_size((width, height), 64)), record
        assert bool(record.loras) == ("+" in record.model)


def test_a_compiled_sd3_transformer_compiles_its_blocks_once_for_every_model_of_it_and_keeps_the_pixels(
    models_dir, tmp_path, environ
):
    """SD3's and Flux.1's transformers are compiled block by block (regional compilation; SD3 through the blocks it
    repeats, Flux.1 through diffusers' compile_repeated_blocks, in the quantize test below): a second pipeline of
    the architecture compiles nothing, and the pixels are the eager ones."""
    environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "compile-cache")
    spec = _spec(models_dir, tmp_path, "tiny-sd3")
    sources = _sources(tmp_path, count=2)

    def run(name: str, speedups: Speedups):
        tasks = [_task(spec, line, s, tmp_path / name) for line, s in zip(PROMPTS, sources, strict=False)]
        cache = PipelineCache(device="cpu", speedups=speedups)
        summary = run_tasks(tasks, cache, batch_size=2, log=lambda message: None)
        assert [r.status for r in summary.results] == ["generated"] * 2, [r.error for r in summary.results]
        return summary, cache.get(spec)[0]

    first, compiled = run("compiled", Speedups(compile_unet=True))
    second, again = run("again", Speedups(compile_unet=True))
    eager, plain = run("eager", Speedups())
    assert first.compiled_graphs > 0 and second.compiled_graphs == 0 and again.transformer is not compiled.transformer
    assert is_compiled(compiled.transformer) and not is_compiled(plain.transformer)
    for ours, theirs in zip(first.results, eager.results, strict=True):
        assert np.abs(_pixels(ours.task.output_path) - _pixels(theirs.task.output_path)).max() <= 1


def test_a_quantized_flux_entry_quantizes_its_transformer_and_has_results_of_its_own(models_dir, tmp_path):
    """`quantize` on a Flux.1 (or SD3) entry quantizes the transformer's linear layers and compiles its blocks, as on
    an SD entry the UNet (it was dropped without a word while the record said `quantize: int8`); not shared with
    the same weights unquantized. Compiling is lazy: what a quantized run makes is tests/test_speedups.py's."""
    plain, quantized = (_spec(models_dir, tmp_path, "tiny-flux", quantize=mode) for mode in (None, "int8"))
    quantized = dataclasses.replace(quantized, name="int8")
    cache = PipelineCache(device="cpu", max_models=2)
    first, second = cache.get(plain)[0], cache.get(quantized)[0]
    assert second.transformer is not first.transformer and second.vae is first.vae
    weight = second.transformer.transformer_blocks[0].attn.to_q.weight
    assert type(weight).__module__.startswith("torchao") and is_compiled(second.transformer)
    assert not is_compiled(first.transformer)  # quantizing compiles; the plain entry is not compiled
    (source,) = _sources(tmp_path, count=1)
    tasks = [_task(spec, "a red fox", source, tmp_path / spec.name) for spec in (plain, quantized)]
    assert tasks[0].fingerprint != tasks[1].fingerprint  # its results are its own


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("tiny-sdxl", {"safety_checker": True}, "(SDXL) has no safety checker, so `safety_checker: true` cannot"),
        ("tiny-flux", {"safety_checker": True}, "(Flux.1) has no safety checker"),
        ("tiny-sd3", {"scheduler": "DPMSolverMultistepScheduler"}, "it is a flow-matching model: it takes a flow-"),
        ("tiny-flux", {"scheduler": "EulerDiscreteScheduler"}, "`scheduler: null` on this entry"),
        ("tiny-sd15", {"scheduler": "FlowMatchEulerDiscreteScheduler"}, "flow-match schedulers are for SD 3/3.5"),
    ],
)
def test_a_safety_checker_or_scheduler_the_family_has_no_use_for_is_refused_before_loading(
    models_dir, tmp_path, name, overrides, message
):
    """Set in `defaults:` for every entry, these ran without a checker (the record said so, the run did not) or
    failed mid-generation with diffusers' own words ('... object has no attribute scale_noise')."""
    cache = PipelineCache(device="cpu")
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        cache.get(_spec(models_dir, tmp_path, name, **overrides))
    assert cache.loads == 0


def test_a_flow_match_scheduler_named_for_sd3_runs(models_dir, tmp_path):
    spec = _spec(models_dir, tmp_path, "tiny-sd3", scheduler="FlowMatchHeunDiscreteScheduler")
    (result,) = _run([_task(spec, "a red fox", _sources(tmp_path, 1)[0], tmp_path / "out")])
    assert result.status == "generated", result.error
    assert read_record(result.task.output_path).scheduler == "FlowMatchHeunDiscreteScheduler"
    with Image.open(result.task.output_path) as image:
        assert "Sampler: Heun," in image.text["parameters"]  # A1111's and Forge's name, not diffusers' class
