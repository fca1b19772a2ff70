"""Single-file (original LDM format) checkpoints: the converter's names are the ones diffusers reads back."""

from types import SimpleNamespace

import diffusers
import numpy as np
import pytest
import torch
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    infer_diffusers_model_type,
)
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel

from random_diffusion_dagster.demo.single_file import (
    UnsupportedLayout,
    pipeline_to_ldm_state_dict,
    unet_key_to_ldm,
    vae_key_to_ldm,
)
from random_diffusion_dagster.engine.catalog import parse_catalog
from random_diffusion_dagster.engine.pipelines import PipelineCache, load_pipeline
from random_diffusion_dagster.engine.plan import Planner, snapshot_source
from random_diffusion_dagster.engine.runner import run_tasks

from helpers import make_image


def sd15_shaped_components():
    """UNet, VAE and text encoder with Stable Diffusion 1.5's published shapes, on the meta device (no memory)."""
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(
            sample_size=64,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
        vae = diffusers.AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, vocab_size=49408
            )
        )
    return SimpleNamespace(unet=unet, vae=vae, text_encoder=text_encoder)


def shapes(state: dict) -> dict:
    return {key: tuple(tensor.shape) for key, tensor in state.items()}


def test_sd15_shaped_pipeline_gets_the_original_key_names():
    pipeline = sd15_shaped_components()
    ldm = pipeline_to_ldm_state_dict(pipeline)
    assert infer_diffusers_model_type(ldm) == "v1"  # diffusers recognises it as an SD 1.x checkpoint
    # Names every SD 1.x checkpoint has: the three UNet upsamplers, VAE attention as 1x1 convolutions.
    for key in (
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.5.2.conv.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "first_stage_model.decoder.up.3.block.0.conv1.weight",
        "first_stage_model.encoder.down.0.downsample.conv.weight",
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight",
    ):
        assert key in ldm, key
    assert ldm["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert len(ldm) == len(pipeline.unet.state_dict()) + len(pipeline.vae.state_dict()) + len(
        pipeline.text_encoder.state_dict()
    )

    # diffusers' own converters map every name back to where it came from, with the same shape.
    assert shapes(convert_ldm_unet_checkpoint(ldm, pipeline.unet.config)) == shapes(pipeline.unet.state_dict())
    assert shapes(convert_ldm_vae_checkpoint(ldm, pipeline.vae.config)) == shapes(pipeline.vae.state_dict())
    clip = {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(ldm).items()}
    assert shapes(clip) == {
        k.removeprefix("text_model."): s for k, s in shapes(pipeline.text_encoder.state_dict()).items()
    }


def test_unknown_weights_are_refused_by_name():
    config = {"layers_per_block": 1, "up_block_types": ["UpBlock2D"]}
    with pytest.raises(UnsupportedLayout, match="'add_embedding.linear_1.weight'"):
        unet_key_to_ldm("add_embedding.linear_1.weight", config)
    with pytest.raises(UnsupportedLayout, match="'encoder.mid_block.attentions.0.norm_cross.weight'"):
        vae_key_to_ldm("encoder.mid_block.attentions.0.norm_cross.weight", 4)


def test_single_file_loads_back_every_weight_exactly(models_dir):
    folder = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(models_dir / "tiny-sd15")
    spec = parse_catalog(
        {
            "models": [
                {
                    "name": "file",
                    "single_file": "tiny-sd15-single-file/tiny-sd15.safetensors",
                    "config": "tiny-sd15-single-file/config",
                }
            ]
        },
        base_dir=models_dir,
    )[0]
    single = load_pipeline(spec, "cpu")
    for name in ("unet", "vae", "text_encoder"):
        expected, loaded = getattr(folder, name).state_dict(), getattr(single, name).state_dict()
        assert expected.keys() == loaded.keys(), name
        assert all(torch.equal(expected[k], loaded[k]) for k in expected), name
    assert single.safety_checker is None and type(single.scheduler) is type(folder.scheduler)


def test_single_file_entry_makes_the_same_image_as_its_folder(tmp_path, models_dir):
    catalog = parse_catalog(
        {
            "defaults": {"resolution": 64, "num_inference_steps": 4, "strength": 0.5},
            "models": [
                {"name": "folder", "path": "tiny-sd15"},
                {
                    "name": "file",
                    "single_file": "tiny-sd15-single-file/tiny-sd15.safetensors",
                    "config": "tiny-sd15-single-file/config",
                },
            ],
        },
        base_dir=models_dir,
    )
    source = make_image(tmp_path / "in.png")
    tasks = [
        Planner(["a fox"], [spec], 0, tmp_path / "out").task(spec.name, str(source), snapshot_source(source))
        for spec in catalog
    ]
    summary = run_tasks(tasks, PipelineCache(device="cpu"), log=lambda message: None)
    assert [r.status for r in summary.results] == ["generated", "generated"], [r.error for r in summary.results]
    folder_image, file_image = (np.asarray(Image.open(r.task.output_path)) for r in summary.results)
    assert np.array_equal(folder_image, file_image)


def test_a_checkpoint_without_its_text_encoder_takes_it_from_a_whole_config_folder(tmp_path, models_dir):
    """SD 3/3.5 and Flux.1 files often hold the transformer alone (here: tiny-sd15's checkpoint without its text
    encoder): with `config:` a whole diffusers folder, the text encoder is loaded from there and the image is the
    folder's. With a config-only folder the message says what to set; a LoRA or embedding given as a model is named."""
    from safetensors.torch import load_file, save_file

    from random_diffusion_dagster.demo.lora import lora_file
    from random_diffusion_dagster.engine.pipelines import ModelLoadError

    whole = load_file(models_dir / "tiny-sd15-single-file" / "tiny-sd15.safetensors")
    save_file({k: v for k, v in whole.items() if not k.startswith("cond_stage_model.")}, tmp_path / "no-te.safetensors")
    entries = [
        {"name": "folder", "path": str(models_dir / "tiny-sd15")},
        {"name": "no-te", "single_file": "no-te.safetensors", "config": str(models_dir / "tiny-sd15")},
    ]
    folder, without = parse_catalog(
        {"defaults": {"resolution": 64, "num_inference_steps": 4}, "models": entries}, tmp_path
    )
    pipeline = load_pipeline(without, "cpu")
    assert type(pipeline.text_encoder).__name__ == "CLIPTextModel"
    source = make_image(tmp_path / "in.png")
    tasks = [
        Planner(["a fox"], [spec], 0, tmp_path / "out").task(spec.name, str(source), snapshot_source(source))
        for spec in (folder, without)
    ]
    summary = run_tasks(tasks, PipelineCache(device="cpu"), log=lambda message: None)
    assert [r.status for r in summary.results] == ["generated", "generated"], [r.error for r in summary.results]
    assert np.array_equal(*(np.asarray(Image.open(r.task.output_path)) for r in summary.results))

    config_only = str(models_dir / "tiny-sd15-single-file" / "config")
    misused = {
        "no-te.safetensors": "holds no weights for that component, and `config:` (",
        str(lora_file(models_dir, "tiny-lora-a")): "The file holds a LoRA, not a whole model: list it under `loras:`",
        str(models_dir / "embeddings" / "tiny-style.safetensors"): "holds textual-inversion embeddings, not a whole",
    }
    for path, message in misused.items():
        (spec,) = parse_catalog({"models": [{"name": "m", "single_file": path, "config": config_only}]}, tmp_path)
        with pytest.raises(ModelLoadError, match=message.replace("(", r"\(")) as error:
            load_pipeline(spec, "cpu")
        assert ".." not in str(error.value).replace(str(tmp_path), "").replace(str(models_dir), "")
