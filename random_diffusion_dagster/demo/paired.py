"""Tiny models that read a second input beside the source image: an inpainting model and two ControlNets.

An inpainting checkpoint (runwayml/stable-diffusion-inpainting and its kind) is an SD 1.x pipeline whose UNet reads
9 channels: the noisy latents (4), the mask at latent size (1) and the masked source's latents (4). A ControlNet
(lllyasviel/control_v11p_sd15_canny, ..._depth) is a copy of the UNet's encoder half that reads a control image and
adds its features to the UNet's skip connections; it fits every base whose UNet has its block layout and text width.

Both are built here from the tiny SD 1.5-style model as saved (demo/models.py builds it first), seeded, and saved with
`save_pretrained` in the real repositories' layouts. A ControlNet's output convolutions start at zero (its training
starts from "no effect"), so an untrained one would change nothing; these get small seeded random weights instead, as
the tiny LoRAs do (demo/lora.py), so that another control image visibly changes the picture.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..engine.quiet import quiet_libraries

PAIRED_BASE = "tiny-sd15"  # the demo model both are made from; the ControlNets also fit tiny-sd14 (same UNet shapes)
TINY_INPAINT = "tiny-sd15-inpaint"
INPAINT_UNET_SEED = 16  # the inpainting UNet's own weights; text encoder and VAE are tiny-sd15's
INPAINT_IN_CHANNELS = 9  # latents 4 + mask 1 + masked-image latents 4, as in the real inpainting checkpoints
CONTROLNETS_DIR = "controlnets"  # under the models folder: controlnets/<name>/{config.json, *.safetensors}
CONTROLNET_WEIGHTS = "diffusion_pytorch_model.safetensors"


@dataclass(frozen=True)
class TinyControlNetRecipe:
    name: str
    seed: int
    scale: float = 0.05  # spread of the zero convolutions' weights: a visible change, nowhere near saturating
    # Spread of the control image embedding's last convolution: its output about half as wide as the UNet's first
    # features, to which it is added, so the control image is what moves the picture (tests/test_demo_models.py).
    embedding_scale: float = 0.5


CONTROLNET_RECIPES = (
    TinyControlNetRecipe("tiny-controlnet-canny", seed=505),
    TinyControlNetRecipe("tiny-controlnet-depth", seed=606),
)
TINY_CONTROLNETS = tuple(recipe.name for recipe in CONTROLNET_RECIPES)
# One block per halving: 2 ** (4 - 1) = 8, the VAE's factor, so the control image's embedding has the latents' size.
CONDITIONING_CHANNELS = (8, 16, 16, 32)


def controlnet_dir(models_dir: str | Path, name: str) -> Path:
    return Path(models_dir) / CONTROLNETS_DIR / name


def build_inpaint_pipeline(models_dir: Path):
    """tiny-sd15 as saved (tokenizer, text encoder, VAE, scheduler, safety checker) as a StableDiffusionInpaintPipeline
    with a seeded 9-channel UNet of tiny-sd15's UNet config."""
    import diffusers
    import torch

    base = diffusers.StableDiffusionInpaintPipeline.from_pretrained(models_dir / PAIRED_BASE)
    torch.manual_seed(INPAINT_UNET_SEED)
    base.unet = diffusers.UNet2DConditionModel.from_config({**base.unet.config, "in_channels": INPAINT_IN_CHANNELS})
    base.register_modules(unet=base.unet)
    return base


def save_inpaint_model(models_dir: Path) -> Path:
    """Saved as tiny-sd15 is (safety checker included, as in the SD 1.x inpainting repository) under its own name."""
    target = models_dir / TINY_INPAINT
    build_inpaint_pipeline(models_dir).save_pretrained(target, safe_serialization=True)
    recipe = {"name": TINY_INPAINT, "base": PAIRED_BASE, "unet_seed": INPAINT_UNET_SEED}
    (target / "recipe.json").write_text(
        json.dumps({**recipe, "unet_in_channels": INPAINT_IN_CHANNELS}, indent=2) + "\n"
    )
    return target


def build_tiny_controlnet(unet, recipe: TinyControlNetRecipe, target: Path) -> Path:
    """`ControlNetModel.from_unet(unet)` (the UNet's encoder weights copied, as ControlNet training starts) with its
    own weights drawn from the recipe's seed only; written to `target`.

    The control image's embedding is re-drawn as the paper initialises it (Gaussian, here He-scaled so it passes the
    image's signal on; zero biases, so a black control image embeds to zero) and its last convolution and the zero
    convolutions get small random weights: the defaults would let the control image change nothing at all.
    """
    import math

    import diffusers
    import torch

    with torch.random.fork_rng(devices=[]):  # from_unet draws its init from the global generator: leave it as it was
        torch.manual_seed(recipe.seed)
        controlnet = diffusers.ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS
        )
    generator = torch.Generator("cpu").manual_seed(recipe.seed)
    with torch.no_grad():
        for name, parameter in sorted(controlnet.named_parameters()):  # a fixed order
            if name.startswith("controlnet_cond_embedding."):
                if name.endswith(".bias"):
                    parameter.zero_()
                    continue
                spread = recipe.embedding_scale if ".conv_out." in name else math.sqrt(2 / parameter[0].numel())
            elif name.startswith(("controlnet_down_blocks.", "controlnet_mid_block.")):  # the zero convolutions
                spread = recipe.scale
            else:  # the UNet's copy
                continue
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * spread)
    controlnet.save_pretrained(target, safe_serialization=True)
    return target


def build_paired_models(models_dir: str | Path, force: bool = False) -> list[Path]:
    """tiny-sd15-inpaint into `models_dir/` and every tiny ControlNet into `models_dir/controlnets/`, unless there."""
    import diffusers

    quiet_libraries()
    models_dir = Path(models_dir)
    built = []
    if force or not (models_dir / TINY_INPAINT / "model_index.json").is_file():
        built.append(save_inpaint_model(models_dir))
    missing = [
        recipe
        for recipe in CONTROLNET_RECIPES
        if force or not (controlnet_dir(models_dir, recipe.name) / CONTROLNET_WEIGHTS).is_file()
    ]
    if missing:
        unet = diffusers.UNet2DConditionModel.from_pretrained(models_dir / PAIRED_BASE, subfolder="unet")
        built += [build_tiny_controlnet(unet, recipe, controlnet_dir(models_dir, recipe.name)) for recipe in missing]
    return built
