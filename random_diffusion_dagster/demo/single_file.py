"""Write a diffusers Stable Diffusion pipeline as one original-format (LDM) checkpoint file.

Most checkpoints shared outside the diffusers hub are single `.safetensors` files with the
key names of the original CompVis/Stability code (`model.diffusion_model.input_blocks...`,
`first_stage_model...`, `cond_stage_model.transformer...`). diffusers reads them with
`from_single_file`, converting the keys back; it ships no converter in the other direction.
This is that direction for SD 1.x-style UNets, VAEs and CLIP text encoders of any depth, so
the project can ship a small single-file checkpoint and exercise that loading path offline.
The inverse of diffusers' own `convert_ldm_*_checkpoint` functions; a test round-trips it.
SDXL checkpoints (sd_xl_base_1.0.safetensors) use Stability's later names: the two text encoders under
`conditioner.embedders.0/1`, the second in OpenCLIP's layout (`sdxl_pipeline_to_ldm_state_dict`).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..engine.output_location import write_bytes_atomic

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer.text_model."

# diffusers name -> LDM name, for the parts whose names do not depend on the block layout.
_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
# Within an LDM input/output block, slot 0 holds the resnet and slot 1 the attention.
_SLOT = {"resnets": 0, "attentions": 1}
_VAE_FIXED = {"conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


# SDXL (Stability's generative-models layout): the size-conditioning embedding and the two text encoders.
SDXL_TEXT_ENCODER_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."
_UNET_SDXL = {"add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
_OPEN_CLIP_FIXED = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_OPEN_CLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


class UnsupportedLayout(ValueError):
    """The pipeline has a component this converter does not know how to name."""


def pipeline_to_ldm_state_dict(pipeline) -> dict:
    """One flat state dict with the original key names, from a StableDiffusion(Img2Img)Pipeline."""
    state = {}
    for key, tensor in pipeline.unet.state_dict().items():
        state[UNET_PREFIX + unet_key_to_ldm(key, pipeline.unet.config)] = tensor
    state.update(_vae_state(pipeline.vae))
    for key, tensor in pipeline.text_encoder.state_dict().items():
        state[TEXT_ENCODER_PREFIX + key.removeprefix("text_model.")] = tensor
    return {key: tensor.detach().contiguous() for key, tensor in state.items()}


def sdxl_pipeline_to_ldm_state_dict(pipeline) -> dict:
    """One flat state dict with the names of Stability's SDXL checkpoints (sd_xl_base_1.0.safetensors), from a
    StableDiffusionXL(Img2Img)Pipeline: the UNet with its size-conditioning embedding (`label_emb`), the VAE, CLIP-L
    under `conditioner.embedders.0` and CLIP-G in OpenCLIP's layout under `conditioner.embedders.1`."""
    state = {}
    for key, tensor in pipeline.unet.state_dict().items():
        module, _, tail = key.rpartition(".")
        if module in _UNET_SDXL:
            state[f"{UNET_PREFIX}{_UNET_SDXL[module]}.{tail}"] = tensor
        else:
            state[UNET_PREFIX + unet_key_to_ldm(key, pipeline.unet.config)] = tensor
    state.update(_vae_state(pipeline.vae))
    for key, tensor in pipeline.text_encoder.state_dict().items():
        state[SDXL_TEXT_ENCODER_PREFIX + key.removeprefix("text_model.")] = tensor
    state.update(open_clip_state(pipeline.text_encoder_2, SDXL_OPEN_CLIP_PREFIX))
    return {key: tensor.detach().contiguous() for key, tensor in state.items()}


def _vae_state(vae) -> dict:
    state = {}
    up_blocks = len(vae.config.up_block_types)
    for key, tensor in vae.state_dict().items():
        ldm_key = vae_key_to_ldm(key, up_blocks)
        if ".mid.attn_1." in ldm_key and ldm_key.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # the original VAE attention uses 1x1 convolutions
        state[VAE_PREFIX + ldm_key] = tensor
    return state


def open_clip_state(text_encoder, prefix: str) -> dict:
    """A CLIPTextModelWithProjection's weights in OpenCLIP's names (fused q/k/v `in_proj`, `text_projection` as
    hidden x projection), the inverse of diffusers' `convert_open_clip_checkpoint`."""
    import torch

    weights = {key.removeprefix("text_model."): tensor for key, tensor in text_encoder.state_dict().items()}
    state = {prefix + "text_projection": weights.pop("text_projection.weight").T}
    for name, open_clip in _OPEN_CLIP_FIXED.items():
        state[prefix + open_clip] = weights.pop(name)
    fused: dict[str, dict[str, object]] = {}
    for key, tensor in weights.items():
        match = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", key)
        if key.endswith("position_ids"):
            continue  # a buffer, not a weight
        if not match:
            raise UnsupportedLayout(f"CLIP text encoder weight {key!r} has no OpenCLIP name known to this converter.")
        layer, rest = match.groups()
        block = f"{prefix}transformer.resblocks.{layer}."
        if projection := re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest):
            fused.setdefault(f"{block}attn.in_proj_{projection[2]}", {})[projection[1]] = tensor
            continue
        head, _, tail = rest.rpartition(".")
        if head not in _OPEN_CLIP_LAYER:
            raise UnsupportedLayout(f"CLIP text encoder weight {key!r} has no OpenCLIP name known to this converter.")
        state[f"{block}{_OPEN_CLIP_LAYER[head]}.{tail}"] = tensor
    for key, parts in fused.items():
        state[key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return state


def save_sdxl_single_file_checkpoint(pipeline, checkpoint: Path, config_dir: Path) -> None:
    """save_single_file_checkpoint for SDXL: Stability's key names, configs beside them."""
    from safetensors.torch import save

    save_configs(pipeline, config_dir)
    write_bytes_atomic(checkpoint, save(sdxl_pipeline_to_ldm_state_dict(pipeline)))


def save_single_file_checkpoint(pipeline, checkpoint: Path, config_dir: Path) -> None:
    """Write the weights as one LDM-format file and the configs (no weights) as a diffusers folder.

    The config folder is what `from_single_file(checkpoint, config=config_dir)` needs to build
    the pipeline without a hub: the files diffusers would otherwise fetch from the original repo.
    The checkpoint is written last and atomically: if it exists, everything does.
    """
    from safetensors.torch import save

    save_configs(pipeline, config_dir)
    write_bytes_atomic(checkpoint, save(pipeline_to_ldm_state_dict(pipeline)))


def save_configs(pipeline, folder: Path) -> None:
    """model_index.json and every component's configuration files, without their weights."""
    folder.mkdir(parents=True, exist_ok=True)
    pipeline.save_config(folder)
    for name, component in pipeline.components.items():
        if component is None:
            continue
        if hasattr(component, "save_config"):  # diffusers models and schedulers
            component.save_config(folder / name)
        elif hasattr(getattr(component, "config", None), "save_pretrained"):  # transformers models
            component.config.save_pretrained(folder / name)
        else:  # tokenizers and image processors are configuration only
            component.save_pretrained(folder / name)


def unet_key_to_ldm(key: str, config) -> str:
    per_block = config["layers_per_block"] + 1  # LDM counts each downsampler/upsampler as a layer
    module, _, tail = key.rpartition(".")
    if module in _UNET_FIXED:
        return f"{_UNET_FIXED[module]}.{tail}"
    if match := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = match.groups()
        index = 1 + int(block) * per_block + int(layer)
        return _unet_layer(f"input_blocks.{index}.{_SLOT[kind]}", kind, rest)
    if match := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        block, rest = match.groups()
        return f"input_blocks.{1 + int(block) * per_block + per_block - 1}.0.op.{rest}"
    if match := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        kind, layer, rest = match.groups()
        index = 1 if kind == "attentions" else 2 * int(layer)  # resnet, attention, resnet
        return _unet_layer(f"middle_block.{index}", kind, rest)
    if match := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = match.groups()
        index = int(block) * per_block + int(layer)
        return _unet_layer(f"output_blocks.{index}.{_SLOT[kind]}", kind, rest)
    if match := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block, rest = match.groups()
        has_attention = "CrossAttn" in config["up_block_types"][int(block)]
        index = int(block) * per_block + per_block - 1
        return f"output_blocks.{index}.{2 if has_attention else 1}.conv.{rest}"
    raise UnsupportedLayout(f"UNet weight {key!r} has no original-format name known to this converter.")


def _unet_layer(prefix: str, kind: str, rest: str) -> str:
    """Attention (transformer) weights keep their names; resnet weights are renamed."""
    if kind == "attentions":
        return f"{prefix}.{rest}"
    head, _, tail = rest.partition(".")
    if head not in _UNET_RESNET:
        raise UnsupportedLayout(f"UNet resnet weight {rest!r} under {prefix} has no original-format name.")
    return f"{prefix}.{_UNET_RESNET[head]}.{tail}"


def vae_key_to_ldm(key: str, up_blocks: int) -> str:
    side, _, rest = key.partition(".")
    if side in ("quant_conv", "post_quant_conv"):
        return key
    module, _, tail = rest.rpartition(".")
    if module in _VAE_FIXED:
        return f"{side}.{_VAE_FIXED[module]}.{tail}"
    if match := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        block, layer, tail = match.groups()
        return f"{side}.down.{block}.block.{layer}.{_vae_resnet(tail)}"
    if match := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", rest):
        block, tail = match.groups()
        return f"{side}.down.{block}.downsample.conv.{tail}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        block, layer, tail = match.groups()
        return f"{side}.up.{up_blocks - 1 - int(block)}.block.{layer}.{_vae_resnet(tail)}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", rest):
        block, tail = match.groups()
        return f"{side}.up.{up_blocks - 1 - int(block)}.upsample.conv.{tail}"
    if match := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", rest):
        layer, tail = match.groups()
        return f"{side}.mid.block_{int(layer) + 1}.{_vae_resnet(tail)}"
    if match := re.fullmatch(r"mid_block\.attentions\.0\.(.+)\.(weight|bias)", rest):
        module, tail = match.groups()
        if module in _VAE_ATTENTION:
            return f"{side}.mid.attn_1.{_VAE_ATTENTION[module]}.{tail}"
    raise UnsupportedLayout(f"VAE weight {key!r} has no original-format name known to this converter.")


def _vae_resnet(tail: str) -> str:
    return tail.replace("conv_shortcut", "nin_shortcut", 1)
