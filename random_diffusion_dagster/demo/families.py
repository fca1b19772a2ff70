"""Tiny random-weight SDXL, SD3.5 and Flux.1 pipelines, built offline from configs.

The models people run now are not SD 1.x/2.x: SDXL has two CLIP text encoders and size conditioning, SD3.5 and
Flux.1 replace the UNet with a transformer over 16-channel latents and read the prompt with T5 as well as CLIP.
These builders make each family the way diffusers' own tests do (`get_dummy_components`): seeded, real diffusers
and transformers classes, tiny configs. They are saved with `save_pretrained` under the text-to-image class name the
real repositories use (`StableDiffusionXLPipeline`, `StableDiffusion3Pipeline`, `FluxPipeline`), so loading them
goes through `AutoPipelineForImage2Image` exactly as stabilityai/stable-diffusion-xl-base-1.0,
stabilityai/stable-diffusion-3.5-medium or black-forest-labs/FLUX.1-dev would.

No tokenizer can be downloaded here, so they are made locally: CLIP ones from the byte-level vocabulary the SD demo
models use, and T5 as a character-level Unigram vocabulary (every printable ASCII and Latin-1 character, alone and
word-initial), which T5EncoderModel reads like any SentencePiece vocabulary: it only needs ids below its size.

Weights are random, so the pictures are noise over the source; what the tests check is the plumbing: loading,
batching, negative prompts, emphasis, truncation flags and provenance per family.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .vocabularies import clip_tokenizer, t5_tokenizer


@dataclass(frozen=True)
class FamilyRecipe:
    name: str
    seed: int
    family: str  # "sdxl", "sd3" or "flux"
    pipeline_class: str  # model_index.json's _class_name, as in the real repository
    sample_size: int  # default latent side; the image side is 8x this


FAMILY_MODELS = (
    FamilyRecipe("tiny-sdxl", seed=30, family="sdxl", pipeline_class="StableDiffusionXLPipeline", sample_size=16),
    FamilyRecipe("tiny-sd3", seed=35, family="sd3", pipeline_class="StableDiffusion3Pipeline", sample_size=16),
    FamilyRecipe("tiny-flux", seed=40, family="flux", pipeline_class="FluxPipeline", sample_size=16),
)
# tiny-sdxl again as one original-format (Stability "sgm") checkpoint plus a config-only folder.
SDXL_SINGLE_FILE_SOURCE = "tiny-sdxl"
SDXL_SINGLE_FILE_DEMO = "tiny-sdxl-single-file"
SDXL_SINGLE_FILE_CHECKPOINT = "tiny-sdxl.safetensors"


def _clip_text_model(vocab_size: int, hidden: int, projection_dim: int | None = None):
    """A two-layer CLIP text encoder over the byte-level vocabulary; with `projection_dim`, the projecting kind
    (CLIP-G in SDXL, both CLIPs in SD3)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        max_position_embeddings=77,
        bos_token_id=vocab_size - 2,  # the byte-level vocabulary: <|startoftext|>, then <|endoftext|> last
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        projection_dim=projection_dim or hidden,
    )
    return CLIPTextModelWithProjection(config) if projection_dim else CLIPTextModel(config)


def _t5_encoder(vocab_size: int, d_model: int):
    """A two-layer T5 v1.1-style encoder (gated GELU), the kind SD3 and Flux read prompts with."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=d_model // 4,
        d_ff=d_model * 2,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def _vae(sample_size: int, latent_channels: int, **factors):
    """Four blocks, 8x downsampling like the real VAEs, so latents stay small."""
    import diffusers

    return diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=sample_size * 8,
        **factors,
    )


def build_sdxl(recipe: FamilyRecipe):
    """SDXL base's layout: CLIP-L (hidden states) and CLIP-G (hidden states and pooled projection) side by side,
    a UNet with size conditioning (`text_time`), Euler. The encoders' widths differ as in the real model (768 and
    1280), which is also how diffusers tells them apart in a single-file checkpoint."""
    import diffusers
    import torch

    tokenizer = clip_tokenizer()
    torch.manual_seed(recipe.seed)
    text_encoder = _clip_text_model(len(tokenizer), 32)
    text_encoder_2 = _clip_text_model(len(tokenizer), 48, projection_dim=32)
    time_embed_dim = 8
    unet = diffusers.UNet2DConditionModel(
        sample_size=recipe.sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=32 + 48,  # both encoders' hidden states, concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        # Six size numbers (original size, crop corner, target size) and CLIP-G's pooled projection.
        projection_class_embeddings_input_dim=6 * time_embed_dim + 32,
        norm_num_groups=16,
    )
    vae = _vae(recipe.sample_size, 4, scaling_factor=0.13025)  # SDXL's VAE factor
    scheduler = diffusers.EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="leading",
    )
    return diffusers.StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def build_sd3(recipe: FamilyRecipe):
    """SD3.5 Medium's layout: two projecting CLIPs and T5, an MMDiT transformer (patch 2, QK RMS-norm, a dual
    attention layer) over 16-channel latents, flow-matching Euler with shift 3."""
    import diffusers
    import torch

    tokenizer = clip_tokenizer()
    tokenizer_3 = t5_tokenizer()
    torch.manual_seed(recipe.seed)
    text_encoder = _clip_text_model(len(tokenizer), 32, projection_dim=32)
    text_encoder_2 = _clip_text_model(len(tokenizer), 32, projection_dim=32)
    # The pipeline pads the CLIPs' hidden states (32 + 32) to T5's width and joins them along the sequence.
    text_encoder_3 = _t5_encoder(len(tokenizer_3), 64)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=recipe.sample_size,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=64,
        caption_projection_dim=32,  # the transformer's width: heads x head size
        pooled_projection_dim=64,  # both CLIPs' pooled projections
        pos_embed_max_size=64,  # latent patches per side: images up to 1024 px
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )
    vae = _vae(
        recipe.sample_size,
        16,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    return diffusers.StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


def build_flux(recipe: FamilyRecipe):
    """FLUX.1-dev's layout: CLIP-L (pooled) and T5, a transformer with double and single stream blocks and a
    guidance embedding (guidance-distilled: `guidance_scale` is an input of the model, not classifier-free
    guidance), 16-channel latents packed 2x2, flow-matching Euler with resolution-dependent shift."""
    import diffusers
    import torch

    tokenizer = clip_tokenizer()
    tokenizer_2 = t5_tokenizer()
    torch.manual_seed(recipe.seed)
    text_encoder = _clip_text_model(len(tokenizer), 32)
    text_encoder_2 = _t5_encoder(len(tokenizer_2), 64)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels x a 2x2 patch
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=64,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),  # sums to the head size
    )
    vae = _vae(
        recipe.sample_size,
        16,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return diffusers.FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


BUILDERS = {"sdxl": build_sdxl, "sd3": build_sd3, "flux": build_flux}


def build_family_pipeline(recipe: FamilyRecipe):
    return BUILDERS[recipe.family](recipe)


def save_family_model(pipeline, recipe: FamilyRecipe, target: Path) -> None:
    pipeline.save_pretrained(target, safe_serialization=True)
    (target / "recipe.json").write_text(json.dumps(recipe.__dict__, indent=2) + "\n")


def save_sdxl_single_file_demo(models_dir: Path) -> Path:
    """`models_dir/tiny-sdxl` again as one original-format SDXL checkpoint plus a config-only folder, loadable with
    `StableDiffusionXLImg2ImgPipeline.from_single_file(file, config=folder)`; same weights, same pictures."""
    import diffusers

    from .single_file import save_sdxl_single_file_checkpoint

    source = diffusers.StableDiffusionXLPipeline.from_pretrained(models_dir / SDXL_SINGLE_FILE_SOURCE)
    target = models_dir / SDXL_SINGLE_FILE_DEMO
    save_sdxl_single_file_checkpoint(source, target / SDXL_SINGLE_FILE_CHECKPOINT, target / "config")
    return target
