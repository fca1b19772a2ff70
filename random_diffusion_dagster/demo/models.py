"""Tiny Stable-Diffusion-style img2img models built offline from configs.

No model hub is reachable where this project is developed and tested, so the default
catalog points at four tiny models built here with fixed seeds: real diffusers classes,
saved with `save_pretrained` and loaded back through `from_pretrained`, the same code
path a real checkpoint takes. Their weights are random, so their pictures are noise
on top of the source; they differ the way SD 1.4 / 1.5 / 2.0 / 2.1 differ
(prediction type, scheduler, text-encoder size, resolution). One of them is also saved
as a single-file checkpoint, the other way checkpoints are shared.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

from ..engine.quiet import quiet_libraries
from .families import (
    FAMILY_MODELS,
    SDXL_SINGLE_FILE_CHECKPOINT,
    SDXL_SINGLE_FILE_DEMO,
    build_family_pipeline,
    save_family_model,
    save_sdxl_single_file_demo,
)
from .vocabularies import byte_level_vocab


@dataclass(frozen=True)
class TinyModelRecipe:
    name: str
    seed: int
    scheduler: str
    prediction_type: str
    text_hidden_size: int
    sample_size: int  # latent side; the image side is 8x this
    safety_checker: bool = False  # ship safety_checker + feature_extractor, as the SD 1.x repos do
    fp16_variant: bool = False  # also ship *.fp16.safetensors, as many hub repos do


TINY_MODELS = (
    TinyModelRecipe(
        "tiny-sd14",
        seed=14,
        scheduler="PNDMScheduler",
        prediction_type="epsilon",
        text_hidden_size=32,
        sample_size=12,
        safety_checker=True,
    ),
    TinyModelRecipe(
        "tiny-sd15",
        seed=15,
        scheduler="EulerDiscreteScheduler",
        prediction_type="epsilon",
        text_hidden_size=32,
        sample_size=12,
        safety_checker=True,
    ),
    TinyModelRecipe(
        "tiny-sd2",
        seed=20,
        scheduler="DDIMScheduler",
        prediction_type="v_prediction",
        text_hidden_size=48,
        sample_size=16,
        fp16_variant=True,
    ),
    TinyModelRecipe(
        "tiny-sd21",
        seed=21,
        scheduler="EulerDiscreteScheduler",
        prediction_type="v_prediction",
        text_hidden_size=48,
        sample_size=16,
    ),
)
# The single-file demo: tiny-sd15's weights in the original (LDM) single-file format.
SINGLE_FILE_SOURCE = "tiny-sd15"
SINGLE_FILE_DEMO = "tiny-sd15-single-file"
SINGLE_FILE_CHECKPOINT = "tiny-sd15.safetensors"


def build_tiny_pipeline(recipe: TinyModelRecipe):
    """A StableDiffusionImg2ImgPipeline with tiny random components, seeded by the recipe."""
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = byte_level_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    torch.manual_seed(recipe.seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=recipe.text_hidden_size,
            intermediate_size=recipe.text_hidden_size * 2,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(vocab),
            max_position_embeddings=77,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
    )
    unet = diffusers.UNet2DConditionModel(
        sample_size=recipe.sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=recipe.text_hidden_size,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    # Four blocks: 8x downsampling like the real VAE, so latents stay small.
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=recipe.sample_size * 8,
    )
    scheduler_class = getattr(diffusers, recipe.scheduler)
    scheduler_settings = dict(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=recipe.prediction_type,
        steps_offset=1,
    )
    # As in the real SD 1.x/2.x scheduler configs.
    accepted = inspect.signature(scheduler_class.__init__).parameters
    for name, value in {"clip_sample": False, "skip_prk_steps": True, "set_alpha_to_one": False}.items():
        if name in accepted:
            scheduler_settings[name] = value
    return img2img_pipeline(vae, text_encoder, tokenizer, unet, scheduler_class(**scheduler_settings))


def img2img_pipeline(vae, text_encoder, tokenizer, unet, scheduler):
    """An SD img2img pipeline of built components, without a safety checker (these weights draw nothing real)."""
    import diffusers

    return diffusers.StableDiffusionImg2ImgPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_safety_checker():
    """A tiny StableDiffusionSafetyChecker and its CLIP image processor, for the SD 1.x layout."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(0)
    small = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2}
    config = CLIPConfig(
        text_config=small, vision_config={**small, "image_size": 32, "patch_size": 4}, projection_dim=32
    )
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return StableDiffusionSafetyChecker(config), processor


def save_demo_model(pipeline, recipe: TinyModelRecipe, target: Path, extra: dict | None = None) -> None:
    """Save in the layout of the real checkpoint the recipe imitates."""
    import torch

    if recipe.safety_checker:
        pipeline.register_modules(
            **dict(zip(("safety_checker", "feature_extractor"), tiny_safety_checker(), strict=False))
        )
        pipeline.register_to_config(requires_safety_checker=True)
    pipeline.save_pretrained(target, safe_serialization=True)
    if recipe.fp16_variant:
        pipeline.to(torch.float16).save_pretrained(target, safe_serialization=True, variant="fp16")
        pipeline.to(torch.float32)
    (target / "recipe.json").write_text(json.dumps({**recipe.__dict__, **(extra or {})}, indent=2) + "\n")


def save_single_file_demo(models_dir: Path) -> Path:
    """`models_dir/tiny-sd15` again as one original-format checkpoint plus a config-only folder.

    That is how most checkpoints are shared outside the hub (one `.safetensors` file), and
    what `from_single_file(file, config=folder)` loads offline; same weights, same pictures.
    """
    import diffusers

    from .single_file import save_single_file_checkpoint

    source = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(models_dir / SINGLE_FILE_SOURCE)
    target = models_dir / SINGLE_FILE_DEMO
    save_single_file_checkpoint(source, target / SINGLE_FILE_CHECKPOINT, target / "config")
    return target


def build_demo_models(models_dir: str | Path, force: bool = False) -> list[Path]:
    """Build every tiny model, random weights, into `models_dir/<name>` unless it is already there.

    The shipped demo models (data/models) are these, trained by scripts/train_demo_models.py;
    the random ones are the smallest, fastest stand-ins, used by the tests.
    """
    quiet_libraries()
    models_dir = Path(models_dir)
    built = _build_missing(models_dir, TINY_MODELS, build_tiny_pipeline, save_demo_model, force)
    if force or not (models_dir / SINGLE_FILE_DEMO / SINGLE_FILE_CHECKPOINT).is_file():
        built.append(save_single_file_demo(models_dir))
    from .lora import build_tiny_loras

    build_tiny_loras(models_dir, force)  # loras/tiny-lora-*.safetensors for tiny-sd15: adapters, not counted as models
    from .embeddings import build_tiny_embeddings

    build_tiny_embeddings(models_dir, force)  # embeddings/tiny-style*.safetensors for tiny-sd15: not models either
    from .paired import build_paired_models

    # tiny-sd15-inpaint and controlnets/tiny-controlnet-*, made from tiny-sd15: the paired-input stand-ins, not
    # counted either (the count is the image-to-image models').
    build_paired_models(models_dir, force)
    # SDXL, SD3.5 and Flux.1 stand-ins, after the SD ones.
    built += _build_missing(models_dir, FAMILY_MODELS, build_family_pipeline, save_family_model, force)
    if force or not (models_dir / SDXL_SINGLE_FILE_DEMO / SDXL_SINGLE_FILE_CHECKPOINT).is_file():
        built.append(save_sdxl_single_file_demo(models_dir))
    return built


def _build_missing(models_dir: Path, recipes, build, save, force: bool) -> list[Path]:
    """Build and save each recipe's pipeline into `models_dir/<name>` unless it is already there; the folders made."""
    built = []
    for recipe in recipes:
        target = models_dir / recipe.name
        if (target / "model_index.json").is_file() and not force:
            continue
        save(build(recipe), recipe, target)
        built.append(target)
    return built
