"""The shipped demo models: intact, loadable through every layout path, reproducible by the training script. And the
random paired-input stand-ins (demo/paired.py): an inpainting model and ControlNets, each reading its second input."""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from random_diffusion_dagster.demo.paired import TINY_CONTROLNETS, TINY_INPAINT, controlnet_dir
from random_diffusion_dagster.engine.catalog import load_catalog
from random_diffusion_dagster.engine.pipelines import PipelineCache
from random_diffusion_dagster.engine.plan import Planner, snapshot_source
from random_diffusion_dagster.engine.results import read_record
from random_diffusion_dagster.engine.runner import run_tasks

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MODELS = PROJECT_ROOT / "data" / "models"
NO_CHECKER = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}  # as the engine


def test_shipped_weights_match_the_recorded_checksums():
    recorded = json.loads((MODELS / "checksums.json").read_text())
    assert set(recorded) == {"tiny-sd14", "tiny-sd15", "tiny-sd2", "tiny-sd21", "tiny-sd15-single-file"}
    for model, files in recorded.items():
        for name, digest in files.items():
            assert hashlib.sha256((MODELS / model / name).read_bytes()).hexdigest() == digest, (model, name)
    total = sum(p.stat().st_size for p in MODELS.rglob("*") if p.is_file())
    assert total < 40 * 2**20


def test_layouts_mirror_the_real_checkpoints():
    sd14 = diffusers.AutoPipelineForImage2Image.from_pretrained(MODELS / "tiny-sd14")
    assert sd14.safety_checker is not None and sd14.feature_extractor is not None  # as in the v1-4/v1-5 repos
    sd2 = diffusers.AutoPipelineForImage2Image.from_pretrained(MODELS / "tiny-sd2", variant="fp16")
    assert sd2.scheduler.config.prediction_type == "v_prediction"
    assert (MODELS / "tiny-sd2" / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    single = MODELS / "tiny-sd15-single-file"
    assert [p.name for p in single.rglob("*.safetensors")] == [
        "tiny-sd15.safetensors"
    ]  # the config folder has no weights
    assert (single / "config" / "unet" / "config.json").is_file()


def test_every_shipped_model_makes_an_image_through_the_catalog(tmp_path):
    catalog = load_catalog(PROJECT_ROOT / "data" / "models.yaml")
    source = next(p for p in sorted((PROJECT_ROOT / "data" / "images").iterdir()))

    def job(spec, name: str):  # one source under a name of each model's, so each result has its own file
        return Planner(["a lighthouse"], [spec], 0, tmp_path).task(
            name, str(source), snapshot_source(source), relative_path=name
        )

    jobs = [job(spec, f"{spec.name}.jpg") for spec in catalog]
    jobs.append(job(dataclasses.replace(catalog[0], name="tiny-sd14-checked", safety_checker=True), "checked.jpg"))
    summary = run_tasks(jobs, PipelineCache(device="cpu", max_models=1), log=lambda m: None)
    assert {spec.source_kind for spec in catalog} == {"path", "single_file"}
    assert [r.status for r in summary.results] == ["generated"] * (len(catalog) + 1), [r.error for r in summary.results]
    records = {r.task.model.name: read_record(r.task.output_path) for r in summary.results}
    assert records["tiny-sd14"].safety_checker == "not run" and records["tiny-sd14-checked"].safety_checker == "run"
    assert records["tiny-sd2"].output_size != records["tiny-sd14"].output_size  # SD 2.x-style: larger default


def test_training_script_runs_and_writes_loadable_models(tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            "scripts/train_demo_models.py",
            "--out",
            str(tmp_path),
            "--vae-steps",
            "2",
            "--unet-steps",
            "2",
            "--threads",
            "1",
        ],
        cwd=PROJECT_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    sums = json.loads((tmp_path / "checksums.json").read_text())
    assert set(sums) == {"tiny-sd14", "tiny-sd15", "tiny-sd2", "tiny-sd21", "tiny-sd15-single-file"}
    pipeline = diffusers.AutoPipelineForImage2Image.from_pretrained(tmp_path / "tiny-sd21")
    assert json.loads((tmp_path / "tiny-sd21" / "recipe.json").read_text())["trained"] is True
    assert pipeline.vae.config.scaling_factor != 0.18215  # measured on the trained VAE's latents


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def _white_square(mode: str) -> Image.Image:
    """64x64 black with a white 32x32 square in the middle: a mask ("L") or a control image ("RGB")."""
    image = Image.new(mode, (64, 64))
    image.paste(Image.new(mode, (32, 32), "white"), (16, 16))
    return image


def test_the_inpainting_stand_in_loads_as_sd_inpainting_with_nine_unet_channels_and_reads_its_mask(models_dir):
    pipeline = diffusers.AutoPipelineForInpainting.from_pretrained(models_dir / TINY_INPAINT, **NO_CHECKER)
    assert type(pipeline) is diffusers.StableDiffusionInpaintPipeline
    assert pipeline.unet.config.in_channels == 9  # latents 4 + mask 1 + masked-image latents 4
    pipeline.set_progress_bar_config(disable=True)
    source = Image.new("RGB", (64, 64), (200, 40, 40))

    def inpaint(mask):  # without height and width the pipeline draws at the UNet's default size, not the source's
        return pipeline(
            "a red fox",
            image=source,
            mask_image=mask,
            height=64,
            width=64,
            num_inference_steps=2,
            strength=1.0,
            generator=torch.Generator().manual_seed(0),
        ).images[0]

    square, whole = inpaint(_white_square("L")), inpaint(Image.new("L", (64, 64), "white"))
    assert square.size == whole.size == (64, 64)
    assert np.abs(_pixels(square) - _pixels(whole)).mean() > 1.0  # the UNet reads the mask


def _controlled(pipeline, source: Image.Image, control: Image.Image) -> np.ndarray:
    """One picture of `source` under `control`: the same prompt, seed and settings every time."""
    generator = torch.Generator().manual_seed(0)
    return _pixels(
        pipeline(
            "a red fox", image=source, control_image=control, num_inference_steps=4, strength=0.5, generator=generator
        ).images[0]
    )


@pytest.mark.parametrize("name", TINY_CONTROLNETS)
def test_a_tiny_controlnet_fits_the_sd1_stand_ins_and_its_control_image_moves_their_pixels(models_dir, name):
    controlnet = diffusers.ControlNetModel.from_pretrained(controlnet_dir(models_dir, name))
    assert controlnet.config.conditioning_channels == 3  # RGB control images
    source = Image.new("RGB", (64, 64), (200, 40, 40))
    black = Image.new("RGB", (64, 64))
    # tiny-sd14 has other weights but tiny-sd15's UNet shapes; tiny-sd2/21 read wider text (48) and do not fit.
    for base, threshold in (("tiny-sd15", 1.0), ("tiny-sd14", 0.5)):
        img2img = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(models_dir / base, **NO_CHECKER)
        pipeline = diffusers.StableDiffusionControlNetImg2ImgPipeline.from_pipe(img2img, controlnet=controlnet)
        pipeline.set_progress_bar_config(disable=True)
        # The control image's embedding is added to the latents' first features: it must halve the size as often.
        assert 2 ** (len(controlnet.config.conditioning_embedding_out_channels) - 1) == pipeline.vae_scale_factor
        dark, square, dark_again = (_controlled(pipeline, source, c) for c in (black, _white_square("RGB"), black))
        assert dark.shape == (64, 64, 3) and np.array_equal(dark, dark_again), base
        assert np.abs(dark - square).mean() > threshold, base
