"""The engine's speed options: a worker's cold start (weights straight to the device, one compiled package per
architecture, a new worker loading the packages other workers compiled) and the lossy `quantize` entry setting.

Real inductor compilation of the tiny UNets on the CPU (about 40 s each), the cold start in fresh
`random-diffusion run` processes: each process is a worker starting cold, as a restarted or autoscaled one does.
There is no CUDA device here: the loading test takes diffusers' device_map path with the CPU as the device, the code
path "cuda" takes, and quantization runs torchao's int8 path (fp8 needs a Hopper GPU).
"""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import diffusers
import numpy as np
import pytest
import torch
from dagster._core.instance.ref import InstanceRef
from PIL import Image
from skimage.metrics import structural_similarity

from random_diffusion_dagster.engine.ahead_of_time import PACKAGES, PackagedModule, packages_folder
from random_diffusion_dagster.engine.catalog import load_catalog
from random_diffusion_dagster.engine.images import scan_folder
from random_diffusion_dagster.engine.pipelines import PipelineCache, Speedups, load_pipeline
from random_diffusion_dagster.engine.plan import Planner
from random_diffusion_dagster.engine.quiet import engine_warnings_to, silence_harmless_notices
from random_diffusion_dagster.engine.results import read_record
from random_diffusion_dagster.engine.runner import generate, run_tasks
from random_diffusion_dagster.settings import COMPILE_CACHE_FOLDER

from helpers import assert_same_pixels, make_image, write_catalog

BIN = Path(sys.executable).parent


def _run_as_a_new_worker(tmp_path: Path, name: str, images: Path, catalog: Path, step_storage: Path) -> dict:
    """`random-diffusion run` with the UNet compiled, in a process and instance of its own, writing to its own
    output folder; the step storage folder (and the compile cache under it) is the one thing workers share."""
    home = tmp_path / name / "home"
    home.mkdir(parents=True)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\nan ice castle\n")
    env = {
        **{k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"},
        "DAGSTER_HOME": str(home),
        "RANDOM_DIFFUSION_IMAGES_DIR": str(images),
        "RANDOM_DIFFUSION_OUTPUT_DIR": str(tmp_path / name / "outputs"),
        "RANDOM_DIFFUSION_PROMPTS_FILE": str(prompts),
        "RANDOM_DIFFUSION_MODELS_FILE": str(catalog),
        "RANDOM_DIFFUSION_STEP_STORAGE": str(step_storage),
        "RANDOM_DIFFUSION_COMPILE": "unet",
        "OMP_NUM_THREADS": "1",
    }
    completed = subprocess.run(
        [str(BIN / "random-diffusion"), "run", "--seed", "5", "--use-prompts-file", "--batch-size", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        (run,) = [r.dagster_run for r in instance.get_run_records() if r.dagster_run.job_name == "diffuse_images"]
    tags = {name.removeprefix("random_diffusion/"): value for name, value in run.tags.items()}
    return {**tags, "outputs": tmp_path / name / "outputs"}


@pytest.fixture(scope="module")
def first_worker(tmp_path_factory, models_dir) -> dict:
    """A first worker's run over five images drawn from tiny-sd14 (PNDM: int64 timesteps) and tiny-sd15 (Euler: float
    timesteps), one UNet architecture, at batch size 2: each model's batches come in their own sizes (calls of 2
    and 1). Its step storage, and the packages in it, serve this file's package tests (one compile, not one each)."""
    tmp_path = tmp_path_factory.mktemp("first-worker")
    images = tmp_path / "images"
    for index in range(5):
        make_image(images / f"{index}.png", color=(30 * index, 120, 200 - 20 * index))  # 6x8 latents
    catalog = write_catalog(tmp_path / "models.yaml", models_dir, names=("tiny-sd14", "tiny-sd15"))
    step_storage = tmp_path / "shared-step-storage"
    tags = _run_as_a_new_worker(tmp_path, "first", images, catalog, step_storage)
    return {"tags": tags, "images": images, "catalog": catalog, "step_storage": step_storage}


def test_models_of_one_architecture_share_one_graph_and_a_new_worker_reads_it_from_the_shared_cache(
    tmp_path, first_worker
):
    """Compiled as given, the first worker's two models made 2 graphs (the timestep's dtype and the batch size each
    recompile). It compiles one; a second worker on another instance, sharing only the step storage folder,
    compiles none, reads it from the cache there, and makes the same pixels."""
    first, step_storage = first_worker["tags"], first_worker["step_storage"]
    assert first["generated"] == "5" and first["pipeline_loads"] == "2", first  # both models drawn
    assert first["pipeline_calls"] == "3" and first["batch_size"] == "2", first  # calls of 2, 2 and 1
    # one package compiled for the first model; the second model's UNet loads it (its own weights swapped in)
    assert (first["compiled_graphs"], first["graphs_from_cache"]) == ("1", "1"), first
    assert any((step_storage / COMPILE_CACHE_FOLDER).iterdir())

    second = _run_as_a_new_worker(tmp_path, "second", first_worker["images"], first_worker["catalog"], step_storage)
    assert second["generated"] == "5" and second["pipeline_loads"] == "2", second
    assert (second["compiled_graphs"], second["graphs_from_cache"]) == ("0", "2"), second
    made = sorted(p.name for p in first["outputs"].glob("*.png"))
    assert made == sorted(p.name for p in second["outputs"].glob("*.png")) and len(made) == 5
    for name in made:
        assert_same_pixels(Image.open(first["outputs"] / name), Image.open(second["outputs"] / name), name)


def test_one_package_serves_every_model_of_an_architecture_each_with_its_own_weights(
    tmp_path, models_dir, environ, first_worker
):
    """The package holds code, not weights: the package a worker compiled for one model's UNet (first_worker) serves
    tiny-sd14's and tiny-sd15's, each giving its own eager output; batch sizes within the exported range take the
    same package; weights that move (as CPU offload moves them) are handed to the package again."""
    cache = tmp_path / "compile-cache"
    shutil.copytree(first_worker["step_storage"] / COMPILE_CACHE_FOLDER, cache)
    environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    (package,) = [path.name for path in packages_folder().glob("*.pt2")]
    specs = load_catalog(write_catalog(tmp_path / "c.yaml", models_dir, names=("tiny-sd15", "tiny-sd14")))
    compiled_before, loaded_before = PACKAGES["compiled"], PACKAGES["loaded"]
    packaged = [load_pipeline(spec, "cpu", speedups=Speedups(compile_unet=True)).unet for spec in specs]
    eager = [load_pipeline(spec, "cpu").unet for spec in specs]
    assert all(isinstance(unet, PackagedModule) for unet in packaged)
    generator = torch.Generator().manual_seed(0)

    def outputs(unets, batch: int) -> list[torch.Tensor]:
        """The UNet called as the img2img pipeline calls it on first_worker's images (the package is specialised to
        the arguments and the latents' size)."""
        sample = torch.randn(batch, 4, 6, 8, generator=generator)
        text = torch.randn(batch, 77, 32, generator=generator)
        unused = {"timestep_cond": None, "cross_attention_kwargs": None, "added_cond_kwargs": None}
        with torch.inference_mode():
            return [
                unet(sample, torch.tensor(500), encoder_hidden_states=text, **unused, return_dict=False)[0]
                for unet in unets
            ]

    for batch in (4, 2, 6):
        generator.manual_seed(batch)
        ours = outputs(packaged, batch)
        generator.manual_seed(batch)
        theirs = outputs(eager, batch)
        for mine, expected in zip(ours, theirs, strict=True):
            assert torch.allclose(mine, expected, atol=1e-4), (mine - expected).abs().max()
        assert not torch.allclose(ours[0], ours[1], atol=1e-2)  # each model's own weights, not the first's
    assert (PACKAGES["compiled"] - compiled_before, PACKAGES["loaded"] - loaded_before) == (0, 2)
    assert [path.name for path in packages_folder().glob("*.pt2")] == [package] and ".b2-63." in package

    packaged[1]._orig_mod.to(torch.float64).to(torch.float32)  # new storage for every weight, the same values
    generator.manual_seed(3)
    (moved,) = outputs(packaged[1:], 3)
    generator.manual_seed(3)
    (expected,) = outputs(eager[1:], 3)
    assert torch.allclose(moved, expected, atol=1e-4)


class _ReadsItsInput(torch.nn.Module):
    """Branches on its input's values in Python: eager runs it, torch.export cannot trace it."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, sample):
        return self.linear(sample) * (2.0 if float(sample.numpy().sum()) > 0 else 0.5)


def test_a_part_that_cannot_be_packaged_runs_just_in_time_and_is_not_exported_again(environ, tmp_path, caplog, capsys):
    environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "compile-cache")
    module = _ReadsItsInput()
    calls = []

    def just_in_time(*args, **kwargs):
        calls.append(args)
        return module(*args, **kwargs)

    packaged = PackagedModule(module, just_in_time, "a test module", {})
    sample = torch.ones(2, 4)
    with torch.no_grad():
        assert torch.equal(packaged(sample), module(sample))
        assert torch.equal(packaged(-sample), module(-sample))
    assert len(calls) == 2 and not list(packages_folder().glob("*.pt2"))
    (warning,) = [r.getMessage() for r in caplog.records if "compiled just in time" in r.getMessage()]
    assert warning.startswith("_ReadsItsInput is compiled just in time: no ahead-of-time package for it (")

    run_log = []  # in a run (run_tasks), the same warning goes to the run's log, and not to the console
    with engine_warnings_to(run_log.append), torch.no_grad():
        fresh = PackagedModule(module, just_in_time, "a test module", {})
        fresh(sample)
    assert len(run_log) == 1 and run_log[0] == warning
    assert "compiled just in time" not in capsys.readouterr().err


def test_a_part_compiles_packages_for_few_image_sizes_and_the_rest_just_in_time(environ, tmp_path, caplog, monkeypatch):
    """A collection of many aspect ratios would otherwise compile a package per image size; past the limit a size goes
    to torch.compile, which makes sizes dynamic. A size that has its package keeps using it."""
    from random_diffusion_dagster.engine import ahead_of_time

    environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "compile-cache")
    monkeypatch.setattr(ahead_of_time, "PACKAGED_SHAPES_PER_PROCESS", 1)
    module = torch.nn.Conv2d(3, 4, 3, padding=1)
    just_in_time = []
    packaged = PackagedModule(module, lambda sample: just_in_time.append(sample.shape) or module(sample), "conv", {})
    compiled_before = PACKAGES["compiled"]
    with torch.no_grad():
        for shape in ((2, 3, 8, 8), (2, 3, 8, 16), (3, 3, 8, 8), (2, 3, 8, 16)):
            sample = torch.randn(shape)
            assert torch.allclose(packaged(sample), module(sample), atol=1e-5)
    assert PACKAGES["compiled"] - compiled_before == 1 and len(list(packages_folder().glob("*.pt2"))) == 1
    assert just_in_time == [(2, 3, 8, 16)] * 2  # the second size; batches of 3 and 2 at 8x8 took the package
    (warning,) = [r.getMessage() for r in caplog.records if "call shapes" in r.getMessage()]
    assert "Conv2d is compiled just in time for the call shapes (image sizes) after its first 1" in warning


def test_a_damaged_package_is_compiled_again_and_replaced(environ, tmp_path):
    """A package the shared storage damaged (cut short) is not read by every later worker in vain: the first to
    find it compiles it again, and the next one loads the new one."""
    environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "compile-cache")
    module = torch.nn.Conv2d(3, 4, 3, padding=1)
    just_in_time = []
    sample = torch.randn(2, 3, 8, 8)

    def worker() -> PackagedModule:
        return PackagedModule(module, lambda s: just_in_time.append(s.shape) or module(s), "conv", {})

    compiled_before, loaded_before = PACKAGES["compiled"], PACKAGES["loaded"]
    run_log, torch_notices = [], []
    silence_harmless_notices()  # as every run does (PipelineCache)
    torch_logger = logging.getLogger("torch._inductor.package.package")  # its filters act before any handler
    handler = logging.Handler()
    handler.emit = lambda record: torch_notices.append(record.getMessage())
    torch_logger.addHandler(handler)
    try:
        with torch.no_grad():
            worker()(sample)
            (package,) = packages_folder().glob("*.pt2")
            package.write_bytes(package.read_bytes()[:100])
            with engine_warnings_to(run_log.append):
                assert torch.allclose(worker()(sample), module(sample), atol=1e-5)
            assert torch.allclose(worker()(sample), module(sample), atol=1e-5)
    finally:
        torch_logger.removeHandler(handler)
    assert (PACKAGES["compiled"] - compiled_before, PACKAGES["loaded"] - loaded_before) == (2, 1)
    assert just_in_time == [] and [p.name for p in packages_folder().glob("*.pt2")] == [package.name]
    (warning,) = run_log
    assert (
        warning.startswith(f"Conv2d: the package {package.name} could not be read (")
        and "compiling it again" in warning
    )
    assert torch_notices == []  # torch's own "Loading outdated pt2 file": ours says what happened


def test_a_package_compiled_with_other_settings_is_not_loaded(environ, tmp_path):
    """Workers sharing a cache may compile with other settings (max-autotune) or an older release of the project
    (another packaging config): each loads only packages compiled as it would compile them."""
    environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "compile-cache")
    module = torch.nn.Conv2d(3, 4, 3, padding=1)
    sample = torch.randn(2, 3, 8, 8)
    compiled_before, loaded_before = PACKAGES["compiled"], PACKAGES["loaded"]
    with torch.no_grad():
        for configs in ({}, {"max_autotune": True}, {"max_autotune": True}, {}):
            assert torch.allclose(PackagedModule(module, module, "conv", configs)(sample), module(sample), atol=1e-5)
    assert (PACKAGES["compiled"] - compiled_before, PACKAGES["loaded"] - loaded_before) == (2, 2)
    assert len(list(packages_folder().glob("*.pt2"))) == 2


READ_ONLY_CACHE_WORKER = """
import json, os, torch
from random_diffusion_dagster import settings
from random_diffusion_dagster.engine.ahead_of_time import PACKAGES, PackagedModule

shared = settings.compile_cache_for_this_process()  # as the engine resource does before anything compiles
assert settings.compile_cache_for_this_process() == shared  # and again for a second cache in a warm worker
module = torch.nn.Conv2d(3, 4, 3, padding=1)
just_in_time = torch.compile(module, fullgraph=True)
packaged = PackagedModule(module, just_in_time, "conv", {}, read_only_cache=shared)
with torch.no_grad():
    for shape in ((2, 3, 8, 8), (2, 3, 16, 16)):  # the first size's package is in the read-only cache
        sample = torch.randn(shape)
        assert torch.allclose(packaged(sample), module(sample), atol=1e-5)
    assert torch.allclose(just_in_time(sample[:1]), module(sample[:1]), atol=1e-5)
print(json.dumps({"packages": dict(PACKAGES), "shared": str(shared), "own": os.environ["TORCHINDUCTOR_CACHE_DIR"]}))
"""


def test_a_compile_cache_the_worker_cannot_write_gives_it_its_packages_and_a_folder_of_its_own(
    environ, tmp_path, models_dir
):
    """A shared cache mounted read-only, or another user's folder: torch writes its cache folder even to load a
    package, which failed every compiled image. The worker (root here, without the capability that lets root write
    anywhere) loads the package there and compiles the rest, packaged or just in time, in a folder of its own; the
    run's log says so once."""
    shared = tmp_path / "shared-compile-cache"
    environ["TORCHINDUCTOR_CACHE_DIR"] = str(shared)
    module = torch.nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        PackagedModule(module, module, "conv", {})(torch.randn(2, 3, 8, 8))
    (package,) = packages_folder().glob("*.pt2")
    subprocess.run(["chmod", "-R", "a-w", str(shared)], check=True)
    try:
        completed = subprocess.run(
            ["setpriv", "--bounding-set", "-dac_override", sys.executable, "-c", READ_ONLY_CACHE_WORKER],
            env={**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(shared)], check=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    worker = json.loads(completed.stdout.splitlines()[-1])
    own = tmp_path / f"random-diffusion-compile-cache-{os.getuid()}"
    assert worker == {"packages": {"loaded": 1, "compiled": 1}, "shared": str(shared), "own": str(own)}
    assert [p.name for p in packages_folder().glob("*.pt2")] == [package.name]  # the shared cache as it was
    assert len(list(packages_folder(own).glob("*.pt2"))) == 1

    (spec,) = load_catalog(write_catalog(tmp_path / "c.yaml", models_dir, names=("tiny-sd15",)))
    run_log, speedups = [], Speedups(compile_vae=True, ahead_of_time=False, read_only_cache=str(shared))
    with engine_warnings_to(run_log.append):
        for _ in range(2):  # compiling is lazy: nothing compiles here
            load_pipeline(spec, "cpu", speedups=speedups)
    assert run_log == [
        f"the compile cache {shared} cannot be written: its packages are read from there, and what this process "
        f"compiles goes to {shared}"  # this process's cache folder (the worker's was its own)
    ]


def test_weights_loaded_straight_to_the_device_are_the_weights_and_pixels_of_loading_then_moving(tmp_path, models_dir):
    (spec,) = load_catalog(write_catalog(tmp_path / "c.yaml", models_dir, names=("tiny-sd15",)))
    straight = load_pipeline(spec, "cpu")
    assert straight.hf_device_map == "cpu"  # diffusers' device_map path, not a load and a move
    moved = diffusers.AutoPipelineForImage2Image.from_pretrained(
        spec.source, dtype=torch.float32, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    ).to("cpu")
    assert moved.hf_device_map is None
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(straight, name).state_dict(), getattr(moved, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    source = make_image(tmp_path / "source.png", size=(64, 64))
    images = [Image.open(source).convert("RGB")] * 2
    ours, _ = generate(straight, spec, ["a red fox", "an ice castle"], images, [1, 2], "cpu")
    theirs, _ = generate(moved, spec, ["a red fox", "an ice castle"], images, [1, 2], "cpu")
    for a, b in zip(ours, theirs, strict=True):
        assert_same_pixels(a, b, "straight to the device vs loaded then moved")


def test_a_quantized_entry_changes_pixels_a_little_has_results_of_its_own_and_is_off_unless_set(tmp_path, models_dir):
    """`quantize: int8` on an entry: its UNet's linear layers run quantized (torchao) and compiled; not shared with
    the same weights unquantized; its results are not the unquantized entry's (fingerprint) and say so (record)."""
    catalog = tmp_path / "models.yaml"
    catalog.write_text(
        f"defaults: {{resolution: 64, num_inference_steps: 4, strength: 0.5}}\n"
        f"models:\n"
        f"  - {{name: plain, path: {models_dir / 'tiny-sd15'}}}\n"
        f"  - {{name: int8, path: {models_dir / 'tiny-sd15'}, quantize: int8}}\n"
    )
    plain, quantized = load_catalog(catalog)
    assert plain.quantize is None  # lossy only where asked for
    make_image(tmp_path / "images" / "a.png", size=(64, 64))
    cache = PipelineCache(device="cpu", max_models=2)
    results = {}
    for spec in (plain, quantized):
        tasks, _ = Planner(["a red fox"], [spec], 0, str(tmp_path / spec.name)).plan(
            scan_folder(str(tmp_path / "images"))
        )
        (result,) = run_tasks(tasks, cache, batch_size=1, log=lambda message: None).results
        assert result.status == "generated", result.error
        results[spec.name] = result
    first, second = cache.get(plain)[0], cache.get(quantized)[0]
    assert second.unet is not first.unet and second.vae is first.vae  # only the UNet is another module
    assert hasattr(second.unet, "_orig_mod") and not hasattr(first.unet, "_orig_mod")
    assert results["int8"].task.fingerprint != results["plain"].task.fingerprint
    records = {name: read_record(result.task.output_path) for name, result in results.items()}
    assert (records["plain"].quantize, records["int8"].quantize) == (None, "int8")
    assert "quantize" not in records["plain"].partition_metadata()  # shown on the partition where it ran
    assert records["int8"].partition_metadata()["quantize"] == "int8"
    ours, theirs = (np.asarray(Image.open(r.task.output_path).convert("RGB")) for r in results.values())
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() > 0  # quantized for real
    assert structural_similarity(ours, theirs, channel_axis=2) > 0.9  # and close: the same model, rounded


def test_fp8_where_the_hardware_has_no_float8_fails_that_entrys_images_naming_the_fix(tmp_path, models_dir):
    """torchao refuses float8 without a Hopper-class GPU (here: the CPU); the entry's images fail by name, the run
    goes on."""
    (spec,) = load_catalog(write_catalog(tmp_path / "c.yaml", models_dir, names=("tiny-sd15",), quantize="fp8"))
    make_image(tmp_path / "images" / "a.png", size=(64, 64))
    tasks, _ = Planner(["a red fox"], [spec], 0, str(tmp_path / "out")).plan(scan_folder(str(tmp_path / "images")))
    (result,) = run_tasks(tasks, PipelineCache(device="cpu"), batch_size=1, log=lambda message: None).results
    assert result.status == "failed"
    assert "`quantize: fp8` cannot run on cpu" in result.error and "Use `quantize: int8`" in result.error
