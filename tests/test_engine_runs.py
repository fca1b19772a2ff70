"""The engine alone, on real tiny pipelines: caching, batching, reuse, failures, OOM fallbacks."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from random_diffusion_dagster.engine.catalog import load_catalog
from random_diffusion_dagster.engine.images import scan_folder
from random_diffusion_dagster.engine.pipelines import PipelineCache, Speedups, load_pipeline, pipeline_bytes
from random_diffusion_dagster.engine.plan import Planner
from random_diffusion_dagster.engine.results import failure_path, read_record
from random_diffusion_dagster.engine.runner import run_tasks

from helpers import make_image, write_catalog


def _tasks(project, seed=0):
    planner = Planner(["a red fox", "an ice castle"], load_catalog(project["models_file"]), seed, project["output_dir"])
    tasks, unplanned = planner.plan(scan_folder(project["images_dir"]))
    assert not unplanned
    return tasks


def _pixels(path):
    return np.asarray(Image.open(path), dtype=np.int16)


def test_lru_cache_loads_once_and_evicts_least_recently_used(tmp_path, models_dir):
    specs = load_catalog(write_catalog(tmp_path / "c.yaml", models_dir, names=("tiny-sd14", "tiny-sd15", "tiny-sd2")))
    cache = PipelineCache(device="cpu", max_models=2)
    first, seconds = cache.get(specs[0])
    assert seconds > 0 and cache.loads == 1
    assert cache.get(specs[0]) == (first, 0.0)  # resident: no second load
    cache.get(specs[1])
    cache.get(specs[0])  # touch: specs[1] is now least recently used
    cache.get(specs[2])
    assert cache.resident == ["tiny-sd14", "tiny-sd2"] and cache.loads == 3 and cache.evictions == 1
    cache.clear()
    assert cache.resident == []


def _twin_catalog(tmp_path, models_dir):
    """tiny-sd15 and a second model with its VAE and text encoder but its own UNet, as SD 1.4 and 1.5 ship."""
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(models_dir / "tiny-sd15", twin)
    shutil.copytree(models_dir / "tiny-sd14" / "unet", twin / "unet", dirs_exist_ok=True)
    catalog = tmp_path / "c.yaml"
    catalog.write_text(f"models:\n  - {{name: a, path: {models_dir / 'tiny-sd15'}}}\n  - {{name: b, path: {twin}}}\n")
    return load_catalog(catalog)


def test_identical_components_are_loaded_once_and_shared(tmp_path, models_dir):
    a, b = _twin_catalog(tmp_path, models_dir)
    cache = PipelineCache(device="cpu", max_models=2)
    first, _ = cache.get(a)
    second, _ = cache.get(b)
    assert second.vae is first.vae and second.text_encoder is first.text_encoder
    assert second.unet is not first.unet and cache.shared_components == 2
    second_unet_bytes = sum(t.numel() * t.element_size() for t in [*second.unet.parameters(), *second.unet.buffers()])
    assert cache.resident_bytes == pipeline_bytes(first) + second_unet_bytes


def test_compiled_vae_is_shared_compiled_once_and_keeps_the_pixels(tmp_path, models_dir):
    a, b = _twin_catalog(tmp_path, models_dir)
    cache = PipelineCache(device="cpu", max_models=2, speedups=Speedups(compile_vae=True))
    first, _ = cache.get(a)
    compiled_decoder = first.vae.decoder
    assert hasattr(compiled_decoder, "_orig_mod") and hasattr(first.vae.encoder, "_orig_mod")
    second, _ = cache.get(b)
    assert second.vae is first.vae and second.vae.decoder is compiled_decoder
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    eager = load_pipeline(a, "cpu")
    assert not hasattr(eager.vae.decoder, "_orig_mod")
    with torch.inference_mode():
        sample = eager.image_processor.preprocess(image)
        expected = eager.vae.decode(eager.vae.encode(sample).latent_dist.mode()).sample
        actual = first.vae.decode(first.vae.encode(sample).latent_dist.mode()).sample
    assert torch.allclose(actual, expected, atol=1e-4), (actual - expected).abs().max()


def test_memory_budget_keeps_only_what_fits(tmp_path, models_dir):
    specs = load_catalog(write_catalog(tmp_path / "c.yaml", models_dir, names=("tiny-sd14", "tiny-sd15")))
    one_model = PipelineCache(device="cpu").get(specs[0])[0]
    budget_mb = pipeline_bytes(one_model) / 2**20 * 1.5
    cache = PipelineCache(device="cpu", max_models=4, memory_budget_mb=budget_mb)
    cache.get(specs[0])
    cache.get(specs[1])
    assert cache.resident == ["tiny-sd15"]
    assert cache.resident_bytes <= budget_mb * 2**20


def test_batching_does_not_change_pixels_and_each_model_loads_once(project):
    tasks = _tasks(project)
    batched = run_tasks(tasks, PipelineCache(device="cpu"), batch_size=4, log=lambda m: None)
    assert [r.status for r in batched.results] == ["generated"] * 3
    assert batched.pipeline_loads == len({j.model.name for j in tasks})
    first = {j.key: _pixels(j.output_path) for j in tasks}
    for task in tasks:
        failure_path(project["output_dir"], task.key).unlink(missing_ok=True)
        os.remove(task.output_path)
    lines = []
    single = run_tasks(tasks, PipelineCache(device="cpu"), batch_size=1, log=lines.append)
    assert [r.status for r in single.results] == ["generated"] * 3
    # Each batch line (what the run page shows) names its images, so a slow or failed batch can be traced.
    batch_lines = [line for line in lines if ": batch of 1 at " in line]
    assert sorted(line.rsplit(" (", 1)[1].rstrip(")") for line in batch_lines) == sorted(t.key for t in tasks)
    for task in tasks:
        assert np.abs(_pixels(task.output_path) - first[task.key]).max() <= 1, task.key


def test_rerun_reuses_identical_results_and_a_new_seed_rerolls(project):
    tasks = _tasks(project)
    run_tasks(tasks, PipelineCache(device="cpu"), log=lambda m: None)
    before = {j.key: _pixels(j.output_path) for j in tasks}
    again = run_tasks(tasks, PipelineCache(device="cpu"), log=lambda m: None)
    assert [r.status for r in again.results] == ["reused"] * 3 and again.pipeline_loads == 0
    rerolled = _tasks(project, seed=1)
    assert any(a.seed != b.seed for a, b in zip(tasks, rerolled, strict=False))
    run_tasks(rerolled, PipelineCache(device="cpu"), log=lambda m: None)
    assert any(not np.array_equal(before[j.key], _pixels(j.output_path)) for j in rerolled)


def test_a_bad_image_fails_alone_and_is_recorded(project):
    broken = make_image(Path(project["images_dir"]) / "broken.png")
    broken.write_bytes(broken.read_bytes()[:60])
    results = run_tasks(_tasks(project), PipelineCache(device="cpu"), log=lambda m: None).results
    status = {r.task.key: r.status for r in results}
    assert status.pop("broken.png") == "failed"
    assert set(status.values()) == {"generated"}
    error = [r.error for r in results if r.status == "failed"][0]
    assert "broken.png" in error and "truncated" in error
    assert failure_path(project["output_dir"], "broken.png").is_file()


def test_result_records_carry_the_choice_and_timings(project):
    task = _tasks(project)[0]
    run_tasks([task], PipelineCache(device="cpu"), log=lambda m: None)
    record = read_record(task.output_path)
    assert record.prompt == task.prompt and record.model == task.model.name and record.seed == task.seed
    assert record.device == "cpu" and record.dtype == "float32"
    assert record.inference_seconds > 0 and record.rss_peak_mb > 100
    assert record.fingerprint == task.fingerprint and record.fallback == "none"
    with Image.open(task.output_path) as image:
        assert f"Seed: {task.seed}" in image.text["parameters"]


class OutOfMemoryAbove:
    """Wraps a real pipeline and raises CUDA's OOM error for batches above a size.

    A CUDA device cannot exist here, so only the error it would raise is simulated.
    """

    def __init__(self, pipeline, max_batch, fail_until_tiling=False, fail_until_offload=False):
        self.pipeline, self.max_batch, self.fail_until_tiling = pipeline, max_batch, fail_until_tiling
        self.fail_until_offload, self.offloaded, self.offloads = fail_until_offload, False, 0
        self.vae, self.calls, self.tiling = pipeline.vae, [], False
        self.vae.enable_tiling = lambda: setattr(self, "tiling", True)
        self.vae.disable_tiling = lambda: setattr(self, "tiling", False)
        if fail_until_offload:  # accelerate's offload needs a CUDA device: only its switch is simulated
            self.enable_model_cpu_offload = lambda device: setattr(self, "offloaded", True)
            self.remove_all_hooks = lambda: setattr(self, "offloaded", False)

    def __getattr__(self, name):
        return getattr(self.pipeline, name)

    def __call__(self, **kwargs):
        size = len(kwargs["prompt"])
        self.calls.append((size, self.tiling))
        self.offloads += self.offloaded
        if self.fail_until_offload and not self.offloaded:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if size > self.max_batch or (self.fail_until_tiling and not self.tiling):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.pipeline(**kwargs)


def _oom_cache(wrapper_args):
    wrappers = []

    def loader(spec, device, dtype, **options):
        wrappers.append(OutOfMemoryAbove(load_pipeline(spec, device, dtype, **options), **wrapper_args))
        return wrappers[-1]

    return PipelineCache(device="cpu", loader=loader), wrappers


@pytest.fixture
def one_model_project(project, models_dir, tmp_path):
    """Three same-size images and a one-model catalog: they all land in one batch."""
    images = tmp_path / "same_size"
    for index in range(3):
        make_image(images / f"img{index}.png", size=(64, 64), color=(60 * index, 90, 30))
    write_catalog(tmp_path / "one.yaml", models_dir, names=("tiny-sd15",))
    return {**project, "images_dir": str(images), "models_file": str(tmp_path / "one.yaml")}


def test_out_of_memory_splits_the_batch_and_records_the_fallback(one_model_project):
    cache, wrappers = _oom_cache({"max_batch": 1})
    results = run_tasks(_tasks(one_model_project), cache, batch_size=4, log=lambda m: None).results
    assert [r.status for r in results] == ["generated"] * 3
    assert [r.record.fallback for r in results] == ["batch_split"] * 3
    assert wrappers[0].calls == [(3, False), (1, False), (1, False), (1, False)]


def test_out_of_memory_at_batch_one_tries_vae_tiling(one_model_project):
    cache, wrappers = _oom_cache({"max_batch": 4, "fail_until_tiling": True})
    task = _tasks(one_model_project)[0]
    (result,) = run_tasks([task], cache, log=lambda m: None).results
    assert result.status == "generated" and result.record.fallback == "vae_tiling"
    assert wrappers[0].calls == [(1, False), (1, True)] and wrappers[0].tiling is False


def test_out_of_memory_with_tiling_tries_cpu_offload_and_undoes_it(one_model_project):
    cache, wrappers = _oom_cache({"max_batch": 4, "fail_until_offload": True})
    (result,) = run_tasks([_tasks(one_model_project)[0]], cache, log=lambda m: None).results
    assert result.status == "generated" and result.record.fallback == "vae_tiling,cpu_offload"
    assert wrappers[0].offloads == 1 and wrappers[0].offloaded is False and wrappers[0].tiling is False


def test_persistent_out_of_memory_fails_only_that_image_with_a_clear_message(one_model_project):
    cache, _ = _oom_cache({"max_batch": 0})
    results = run_tasks(_tasks(one_model_project), cache, log=lambda m: None).results
    assert [r.status for r in results] == ["failed"] * 3
    assert "out of memory even at batch size 1 with VAE tiling" in results[0].error
    assert "img0.png" in results[0].error


def test_a_run_counts_the_graphs_torch_compile_made_and_a_warm_rerun_makes_none(tmp_path, models_dir):
    """What a warm worker's run tag `compiled_graphs` reports: compilation paid in this run, none once warm.

    The UNet goes through dynamo with its eager backend (tracing without inductor's code generation, so this
    takes seconds on a CPU); the count is dynamo's, whatever the backend.
    """
    (spec,) = load_catalog(write_catalog(tmp_path / "c.yaml", models_dir, names=("tiny-sd15",)))

    def loader(*args, **kwargs):
        pipeline = load_pipeline(*args, **kwargs)
        pipeline.unet = torch.compile(pipeline.unet, backend="eager")
        return pipeline

    images = tmp_path / "images"
    for index in range(2):
        make_image(images / f"{index}.png", color=(40 * index, 90, 200))
    planner = Planner(["a red fox"], [spec], 0, str(tmp_path / "outputs"))
    tasks, _ = planner.plan(scan_folder(str(images)))
    cache = PipelineCache(device="cpu", loader=loader)
    first = run_tasks(tasks, cache, batch_size=2, log=lambda message: None)
    for task in tasks:
        os.remove(task.output_path)  # made again, by the same compiled pipeline at the same shapes
    second = run_tasks(tasks, cache, batch_size=2, log=lambda message: None)
    assert [r.status for r in first.results + second.results] == ["generated"] * 4
    assert first.compiled_graphs >= 1 and second.compiled_graphs == 0
