"""Tiny LoRA adapters for the tiny SD 1.5-style demo model, built offline with fixed seeds.

A LoRA is a small file of low-rank weight updates for some of a base model's layers, loaded on top of the base
(`pipeline.load_lora_weights`). These are made the way diffusers' own LoRA training scripts save theirs: a peft
`LoraConfig` added to the UNet's attention projections, its state dict in diffusers' key names, written by
`StableDiffusionPipeline.save_lora_weights` as one `.safetensors` file. Their weights are seeded random numbers,
not trained, so what they do to a picture means nothing; that they change it, load through the real path and can
be switched per batch is what the tests and the demo need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..engine.quiet import quiet_libraries

LORAS_DIR = "loras"  # under the models folder: loras/<name>.safetensors
LORA_BASE = "tiny-sd15"  # the demo model the adapters fit (its UNet's layer shapes)
TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")  # every attention projection, as most SD LoRAs train


@dataclass(frozen=True)
class TinyLoraRecipe:
    name: str
    seed: int
    rank: int = 4
    scale: float = 0.05  # spread of the random weights: a visible change, nowhere near saturating the image


TINY_LORAS = (TinyLoraRecipe("tiny-lora-a", seed=101), TinyLoraRecipe("tiny-lora-b", seed=202, rank=2))


def lora_file(models_dir: str | Path, name: str) -> Path:
    return Path(models_dir) / LORAS_DIR / f"{name}.safetensors"


def build_tiny_lora(unet, recipe: TinyLoraRecipe, target: Path) -> Path:
    """Write one adapter for `unet` (left unchanged) to `target`, with weights drawn from the recipe's seed only."""
    import diffusers
    import torch
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    # lora_alpha = rank: a scaling of 1, which the saved file implies when it carries no alphas.
    config = LoraConfig(
        r=recipe.rank, lora_alpha=recipe.rank, target_modules=list(TARGET_MODULES), init_lora_weights=False
    )
    with torch.random.fork_rng(devices=[]):  # peft's layer init draws from the global generator: leave it as it was
        unet.add_adapter(config, adapter_name=recipe.name)
    try:
        generator = torch.Generator("cpu").manual_seed(recipe.seed)
        with torch.no_grad():
            for name, parameter in sorted(unet.named_parameters()):
                if f".{recipe.name}." in name:  # lora_A/lora_B of this adapter, in a fixed order
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * recipe.scale)
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=recipe.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        diffusers.StableDiffusionPipeline.save_lora_weights(
            target.parent, unet_lora_layers=layers, weight_name=target.name, safe_serialization=True
        )
    finally:
        unet.delete_adapters(recipe.name)
    return target


def build_tiny_loras(models_dir: str | Path, force: bool = False) -> list[Path]:
    """Every tiny LoRA for `models_dir/tiny-sd15` into `models_dir/loras/` unless it is already there."""
    import diffusers

    quiet_libraries()
    missing = [recipe for recipe in TINY_LORAS if force or not lora_file(models_dir, recipe.name).is_file()]
    if not missing:
        return []
    unet = diffusers.UNet2DConditionModel.from_pretrained(Path(models_dir) / LORA_BASE, subfolder="unet")
    return [build_tiny_lora(unet, recipe, lora_file(models_dir, recipe.name)) for recipe in missing]
