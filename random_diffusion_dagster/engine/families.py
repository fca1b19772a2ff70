"""What differs between the model families the engine runs, in one place: SD 1.x/2.x, SDXL, SD3/3.5 and Flux.1.

A family is read from the pipeline class a model names (model_index.json's `_class_name`, or the loaded pipeline's
class), never guessed from its name. Each difference is honoured or refused by name, never dropped silently:

- negative prompts: SD, SDXL and SD3 take them; Flux.1 is guidance-distilled and runs without classifier-free
  guidance, so an image with a non-empty negative prompt fails with a message naming the model and the fix;
- `guidance_scale`: classifier-free guidance for SD, SDXL and SD3; for Flux.1 it is the distilled guidance value the
  transformer takes as an input (its PNG says `CFG scale: 1, Distilled CFG Scale: <value>`, as Forge writes it);
- emphasis (`prompt_weighting`, through compel): SD (one CLIP encoder) and SDXL (two, with pooled embeddings); SD3
  and Flux.1 also read the prompt with T5, which compel does not weight, so the setting is refused for them;
- what "the prompt was truncated" means (`prompt_truncated` in the record): see `prompt_truncated`;
- image sides: a multiple of 8 (the VAE's factor) for SD and SDXL, of 16 for SD3 and Flux.1 (8 x their 2x2 patches);
- `scheduler`: SD3 and Flux.1 are flow-matching models and take flow-match schedulers only, the others none of those;
- `safety_checker: true`: only SD 1.x/2.x pipelines carry diffusers' safety checker.

Nothing here imports torch or diffusers at import time.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .catalog import ModelSpec


class UnsupportedByModel(ValueError):
    """A setting the model's family cannot honour; the message names the model, the setting and the fix."""


@dataclass(frozen=True)
class Family:
    name: str  # "sd", "sdxl", "sd3", "flux", or "other" (a class this table does not know: treated as SD)
    label: str  # for messages
    negative_prompt: bool  # takes a negative prompt
    prompt_weighting: bool  # emphasis through compel is possible
    side_multiple: int  # image sides the pipeline accepts as given: the VAE factor times the patch size
    distilled_guidance: bool = False  # guidance_scale is a model input (Flux.1), not classifier-free guidance
    flow_matching: bool = False  # trained for flow matching: FlowMatch* schedulers only (SD3, Flux.1)
    safety_checker: bool = False  # its diffusers pipeline can carry a safety checker (SD 1.x/2.x)


SD = Family(
    "sd", "Stable Diffusion 1.x/2.x", negative_prompt=True, prompt_weighting=True, side_multiple=8, safety_checker=True
)
SDXL = Family("sdxl", "SDXL", negative_prompt=True, prompt_weighting=True, side_multiple=8)
SD3 = Family(
    "sd3", "Stable Diffusion 3/3.5", negative_prompt=True, prompt_weighting=False, side_multiple=16, flow_matching=True
)
FLUX = Family(
    "flux",
    "Flux.1",
    negative_prompt=False,
    prompt_weighting=False,
    side_multiple=16,
    distilled_guidance=True,
    flow_matching=True,
)
# Treated as SD; its scheduler and safety checker are its own business (not refused here).
OTHER = Family(
    "other", "this pipeline type", negative_prompt=True, prompt_weighting=True, side_multiple=8, safety_checker=True
)


def family_of_class(class_name: str | None) -> Family:
    """The family of a diffusers pipeline class name (text-to-image or image-to-image alike)."""
    name = class_name or ""
    if name.startswith("StableDiffusionXL"):
        return SDXL
    if name.startswith("StableDiffusion3"):
        return SD3
    if name.startswith("Flux") and not name.startswith("Flux2"):
        return FLUX
    if name.startswith("StableDiffusion"):
        return SD
    return OTHER


def family_of_pipeline(pipeline) -> Family:
    return family_of_class(type(pipeline).__name__)


def family_of_spec(spec: ModelSpec) -> Family:
    """The family a catalog entry will load as, read from its model_index.json without loading anything (OTHER
    when that file cannot be read: a hub id not in the local cache)."""
    return family_of_class(pipeline_class_name(spec))


def pipeline_class_name(spec: ModelSpec) -> str | None:
    """The `_class_name` of the entry's model_index.json: the folder's own, a single file's `config` folder's, or a
    hub id's in the local cache; None when there is none to read."""
    if spec.source_kind == "path":
        return _class_name_in(Path(spec.source) / "model_index.json")
    repository = spec.source if spec.source_kind == "hub_id" else spec.config
    if not repository:
        return None
    if Path(repository).is_dir():
        return _class_name_in(Path(repository) / "model_index.json")
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repository, "model_index.json")
    except ValueError:  # not a valid repository id
        return None
    return _class_name_in(Path(cached)) if isinstance(cached, str) else None


def _class_name_in(index: Path) -> str | None:
    try:
        stat = index.stat()
    except OSError:
        return None
    return _read_class_name(str(index), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=256)
def _read_class_name(index: str, size: int, mtime_ns: int) -> str | None:
    """Cached per (path, size, mtime): read once per model, again only when the file changes."""
    try:
        document = json.loads(Path(index).read_bytes())
    except (OSError, ValueError):
        return None
    name = document.get("_class_name") if isinstance(document, dict) else None
    return name if isinstance(name, str) else None


def img2img_class_name(class_name: str | None) -> str:
    """The image-to-image pipeline class of the family `class_name` belongs to, by diffusers' own AutoPipeline
    mapping (StableDiffusionXLPipeline -> StableDiffusionXLImg2ImgPipeline); Stable Diffusion's when unknown."""
    from diffusers.pipelines.auto_pipeline import AUTO_IMAGE2IMAGE_PIPELINES_MAPPING, _get_task_class

    if class_name:
        found = _get_task_class(AUTO_IMAGE2IMAGE_PIPELINES_MAPPING, class_name, throw_error_if_not_exist=False)
        if found is not None:
            return found.__name__
    return "StableDiffusionImg2ImgPipeline"


def settings_problem(spec: ModelSpec, family: Family) -> str | None:
    """Why the entry's settings cannot be honoured by a model of `family`, with the fix; None if they can."""
    if spec.prompt_weighting and not family.prompt_weighting:
        return (
            f"Model {spec.name!r} ({family.label}) cannot honour `prompt_weighting: true`: emphasis such as "
            "`(word:1.3)` is applied through compel, which weights CLIP text encoders only, and this model also "
            "reads the prompt with T5. Set `prompt_weighting: false` on this entry (the text then reaches the "
            "encoders as written), or use emphasis with SD 1.x/2.x or SDXL models."
        )
    if spec.embeddings and family not in (SD, OTHER):
        return (
            f"Model {spec.name!r} ({family.label}) cannot take `embeddings`: textual-inversion embeddings load into "
            "the one CLIP text encoder of SD 1.x/2.x models (an SDXL embedding holds vectors for two encoders, which "
            "this project does not load). Remove `embeddings` from this entry, or give them to an SD 1.x/2.x entry."
        )
    if spec.safety_checker and not family.safety_checker:
        return (
            f"Model {spec.name!r} ({family.label}) has no safety checker, so `safety_checker: true` cannot be "
            "honoured: diffusers' SDXL, SD 3/3.5 and Flux.1 pipelines carry none. Set `safety_checker: false` on this "
            "entry (it overrides `defaults:`), or filter its results another way."
        )
    if spec.scheduler and family is not OTHER and spec.scheduler.startswith("FlowMatch") != family.flow_matching:
        kind = (
            "a flow-matching model: it takes a flow-match scheduler (FlowMatchEulerDiscreteScheduler, its own, or "
            "another FlowMatch* class)"
            if family.flow_matching
            else "a diffusion model: flow-match schedulers are for SD 3/3.5 and Flux.1"
        )
        return (
            f"Model {spec.name!r} ({family.label}) cannot run `scheduler: {spec.scheduler}`: it is {kind}. Set "
            "`scheduler: null` on this entry to keep the model's own (a `scheduler` in `defaults:` applies to every "
            "entry), or name one of its kind."
        )
    return None


def inpainting_problem(spec: ModelSpec, pipeline, masked: bool) -> str | None:
    """Why images with (`masked`) or without a mask cannot run on the loaded model: an inpainting model (its UNet
    reads the mask too: 9 input channels) repaints masked images only."""
    unet = getattr(pipeline, "unet", None)
    channels = getattr(getattr(unet, "config", None), "in_channels", 4)
    if channels != 9 or masked:
        return None
    if not spec.inpaint:
        return (
            f"model {spec.name!r} is an inpainting model (its UNet reads a mask): add `inpaint: true` to its entry "
            "and give each image a mask (the masks folder, or <stem>.mask.png beside it)."
        )
    return (
        f"model {spec.name!r} is an inpainting model (its UNet reads a mask), so `if_unpaired: run_without` cannot "
        "run an image without its mask: give the image a mask, or set `if_unpaired: fail`."
    )


def negative_prompt_problem(model_name: str, family: Family, negative_prompt: str, where: str) -> str | None:
    """Why an image cannot run with `negative_prompt` on a model of `family` (None if it can): Flux.1 would drop
    it. `where` says where the text came from, for the message."""
    if not negative_prompt or family.negative_prompt:
        return None
    fixes = {  # only the fix that reaches the text where it came from
        FROM_CATALOG: f'Set `negative_prompt: ""` on the {model_name!r} entry',
        FROM_PROMPT_LINE: "Drop --negative_prompt from the prompt line",
    }.get(where, f'Set `negative_prompt: ""` on the {model_name!r} entry, drop --negative_prompt from the prompt line')
    return (
        f"model {model_name!r} ({family.label}) takes no negative prompt: it is guidance-distilled and runs without "
        f"classifier-free guidance, so {negative_prompt!r} (from {where}) would be ignored. {fixes}, or let such "
        "prompts draw a model that takes one (SD 1.x/2.x, SDXL, SD3)."
    )


FROM_CATALOG = "the catalog's `negative_prompt`, the entry's or the defaults'"
FROM_PROMPT_LINE = "the prompt line's --negative_prompt"


def negative_prompt_source(line_negative_prompt: str | None) -> str:
    """Where an image's negative prompt came from, in the words of negative_prompt_problem's message."""
    return FROM_CATALOG if line_negative_prompt is None else FROM_PROMPT_LINE


def max_sequence_length(pipeline) -> int | None:
    """The T5 token budget the pipeline runs with (its `__call__` default, which the engine does not override)."""
    parameter = inspect.signature(type(pipeline).__call__).parameters.get("max_sequence_length")
    return parameter.default if parameter is not None and isinstance(parameter.default, int) else None


def prompt_truncated(pipeline, text: str) -> bool:
    """Whether the model reads only the start of `text`, per family:

    - SD 1.x/2.x and unknown pipelines: the CLIP tokenizer's ids (with start and end markers) exceed its
      model_max_length (77);
    - SDXL: either CLIP tokenizer exceeds its limit (both read the whole prompt, side by side);
    - SD3/3.5 and Flux.1: the T5 tokenizer's ids exceed the pipeline's `max_sequence_length` (256 for SD3, 512 for
      Flux.1). Their CLIP encoders always read only the first 77 tokens, which the pipelines expect (CLIP gives them
      the pooled summary, T5 the text), so a cut there is not counted. An SD3 pipeline loaded without its T5 encoder
      reads through CLIP only, and is judged by its CLIP tokenizers.
    """
    family = family_of_pipeline(pipeline)
    if family is SD3 and getattr(pipeline, "text_encoder_3", None) is not None:
        return _over(pipeline.tokenizer_3, text, max_sequence_length(pipeline))
    if family is FLUX and getattr(pipeline, "text_encoder_2", None) is not None:
        return _over(pipeline.tokenizer_2, text, max_sequence_length(pipeline))
    names = ("tokenizer", "tokenizer_2") if family in (SDXL, SD3) else ("tokenizer",)
    tokenizers = [getattr(pipeline, name, None) for name in names]
    return any(_over(tokenizer, text, tokenizer.model_max_length) for tokenizer in tokenizers if tokenizer is not None)


def _over(tokenizer, text: str, limit: int | None) -> bool:
    return tokenizer is not None and limit is not None and len(tokenizer(text).input_ids) > limit


def guidance_parameters(pipeline, guidance_scale: float) -> dict[str, float]:
    """The guidance entries of a result's A1111 `parameters` text, saying what ran.

    Flux.1-dev takes the value as its distilled guidance and runs no classifier-free guidance: Forge writes that
    as `CFG scale: 1, Distilled CFG Scale: 3.5`. A Flux model without a guidance input (FLUX.1-schnell) ignores the
    value, so only `CFG scale: 1` is written.
    """
    if not family_of_pipeline(pipeline).distilled_guidance:
        return {"CFG scale": guidance_scale}
    transformer = getattr(pipeline, "transformer", None)
    takes_guidance = bool(getattr(getattr(transformer, "config", None), "guidance_embeds", False))
    return {"CFG scale": 1, **({"Distilled CFG Scale": guidance_scale} if takes_guidance else {})}
