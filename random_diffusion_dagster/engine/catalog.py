"""The model catalog: which diffusion models exist and how each one runs by default.

A catalog is a YAML file:

    defaults: {resolution: 512, num_inference_steps: 50, strength: 0.75, variants: 1, ...}
    models:
      - name: sd15
        hub_id: stable-diffusion-v1-5/stable-diffusion-v1-5
      - name: local-model
        path: models/my-model            # a diffusers folder, relative to the catalog
      - name: single
        single_file: checkpoints/x.safetensors
        config: configs/sd15               # its diffusers configs: a folder, or a cached hub id

Each model names exactly one source: `path`, `hub_id` or `single_file`. A single-file
checkpoint holds weights only; `config` says which diffusers layout they fill. Without it
diffusers guesses the original repo from the weights and fetches its configs from the hub.

An entry may add LoRA adapters to its base model, each with its weight (paths relative to the catalog, like model
paths; `.safetensors` files):

      - name: sd15-watercolor
        path: models/sd15
        loras: [{path: loras/watercolor.safetensors, weight: 0.8}]

It is still one item of the draw, with its own name and `weight`. Entries on the same base share one loaded pipeline
(engine/pipelines.py PipelineCache), and each batch runs with exactly its entry's adapters.

An entry may also add textual-inversion embeddings, each a file and the token that prompts write to use it:

      - name: sd15-my-style
        path: models/sd15
        embeddings: [{path: embeddings/my-style.safetensors, token: "<my-style>"}]

An entry may inpaint (each image with its mask: engine/pairs.py) or run ControlNets, each with the control image type
it reads (a folder of control images, or `canny` edges computed from the source) and its conditioning scale:

      - name: sd15-inpaint
        path: models/sd15-inpainting
        inpaint: {mask_blur: 4}
      - name: sd15-canny
        path: models/sd15
        controlnets: [{path: controlnets/sd15-canny, control: canny, scale: 1.0}]
        if_unpaired: run_without           # an image without its pair runs as plain img2img instead of failing

`strengths` draws each result's strength: from a list (`[0.3, 0.5, 0.7]`) or a range (`{min: 0.3, max: 0.7}`).
`quality` sets the gates each result must pass, or is re-rolled with the next seed (engine/quality.py); an entry's
`quality:` keys go over those of `defaults:` one by one.
`variants` (results per image) applies to the whole catalog, so only `defaults:` may give it; a run's own count
(`run --variants`, the dataset resource's `variants`, RANDOM_DIFFUSION_VARIANTS) comes first.

Every value is checked against the Settings and Entry models (type and bounds) when the catalog is read, so a
typo fails before any image runs rather than as a traceback or a black image halfway through.
"""

from __future__ import annotations

import difflib
import io
import math
import reprlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from random import Random
from typing import Annotated, Any, Literal, NamedTuple, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError, model_validator
from pydantic.functional_validators import AfterValidator, BeforeValidator

from .local_files import kind_problem
from .prompts import PromptListError, check_text
from .quality import QualityError, QualityGates
from .results import A1111_SAMPLERS

Dtype = Literal["auto", "float16", "bfloat16", "float32"]
DTYPES = get_args(Dtype)
SOURCE_KINDS = ("path", "hub_id", "single_file")
TOP_LEVEL = ("defaults", "models")
MAX_CATALOG_BYTES = 2**20  # a catalog of thousands of models is a few hundred KB
MAX_YAML_NODES = 1_000_000  # after alias expansion; more than 1 MB holds without aliases: only bombs reach it
MAX_VARIANTS = 64  # results per image (settings.MAX_VARIANTS): a typo of 1000 would only fill the disk
CATALOG_WIDE = ("variants",)  # `defaults:` keys that are not a model's setting
LORA_KEYS = ("path", "weight")
MAX_LORA_WEIGHT = 4.0  # |weight|: A1111 users go up to about 2, slider LoRAs a little past; 80 is a typo of 0.8
LORA_SUFFIX = ".safetensors"  # what diffusers loads without unpickling (a .bin/.ckpt LoRA can run code)
EMBEDDING_KEYS = ("path", "token")
# diffusers reads .safetensors, and .bin/.pt (A1111's format) with torch.load(weights_only=True), which unpickles
# tensors and plain containers only (diffusers models/model_loading_utils.py load_state_dict): no code runs.
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 3, 6, 6


def show(value: Any) -> str:
    """A bounded repr for messages: a catalog value may be megabytes (or an alias bomb)."""
    text = _REPR.repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


class CatalogError(ValueError):
    """The catalog file or one of its entries is unusable."""


def _finite(value: Any) -> Any:
    """Booleans are not numbers, quoted text is not read as one, and only finite numbers count."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def _whole(value: Any) -> int:
    if not float(_finite(value)).is_integer():
        raise ValueError("not a whole number")
    return int(value)  # 50.0 steps -> 50


def _prompt_text(text: str | None) -> str | None:
    check_text(text or "", "`negative_prompt`")  # it goes to the text encoder beside the prompt: the same rule
    return text


def _scheduler_class(name: str | None) -> str | None:
    """diffusers takes a scheduler's class name; A1111's sampler name for one is refused with the class to write."""
    classes = [
        scheduler for scheduler, sampler in A1111_SAMPLERS.items() if sampler == (name or "").removesuffix(" Karras")
    ]
    if classes and name not in A1111_SAMPLERS:
        karras = " (Karras sigmas are no catalog setting: the model's scheduler config keeps its own)"
        raise CatalogError(
            f"`scheduler: {name}` is A1111's sampler name; diffusers takes the class: write "
            f"{' or '.join(classes)}{karras if name.endswith(' Karras') else ''}."
        )
    return name


@dataclass(frozen=True)
class StrengthRange:
    """`strengths: {min: 0.3, max: 0.7}`: each result draws its strength uniformly from [low, high]."""

    low: float
    high: float

    def draw(self, rng: Random) -> float:
        """A strength from the seeded generator, to 2 decimals (readable in records and A1111 parameters, and
        equal draws compare equal), never outside the bounds that rounding could cross."""
        return min(max(round(rng.uniform(self.low, self.high), 2), self.low), self.high)


def _strengths(value: Any) -> tuple[float, ...] | StrengthRange | None:
    """A list to draw each result's strength from, or a `{min, max}` range; each value as `strength` takes it."""
    if value is None or isinstance(value, StrengthRange):  # a range: the defaults' own, already checked
        return value
    if isinstance(value, dict):
        return _strength_range(value)
    if not isinstance(value, list | tuple) or not value:  # a tuple: the defaults' own, already checked
        raise ValueError("not a list")
    drawn = tuple(float(_finite(strength)) for strength in value)
    if not all(0 < strength <= 1 for strength in drawn):
        raise ValueError("out of range")
    return drawn


def _strength_range(value: dict) -> StrengthRange:
    bounds = ("min", "max")
    missing = [f"`{key}`" for key in bounds if key not in value]
    extra = sorted((key for key in value if key not in bounds), key=str)
    if missing or extra:
        problem = f"{' and '.join(missing)} missing" if missing else f"unknown keys {show(extra)}"
        raise CatalogError(
            f"`strengths` as a range takes exactly `min` and `max`, such as {{min: 0.3, max: 0.7}}; got "
            f"{show(value)} ({problem}). For a list of strengths to pick from, write [0.3, 0.5, 0.7]."
        )
    low, high = (float(_finite(value[key])) for key in bounds)
    if not (0 < low <= 1 and 0 < high <= 1):
        raise ValueError("out of range")
    if low > high:
        raise CatalogError(
            f"`strengths` range has min {low:g} above max {high:g}: swap them, such as {{min: {high:g}, max: {low:g}}}."
        )
    return StrengthRange(low, high)


@dataclass(frozen=True)
class LoraSpec:
    """One adapter of an entry: its file (absolute once the catalog is read) and how strongly it applies."""

    path: str
    weight: float = 1.0

    @property
    def name(self) -> str:
        """AUTOMATIC1111's name for it (`<lora:name:weight>`, `Lora hashes`): the file name without extension."""
        return Path(self.path).stem


LORAS_EXPECTATION = (
    "a list of adapters, each a mapping with `path` (a .safetensors file, relative to the catalog) and an optional "
    f"`weight` (a number from {-MAX_LORA_WEIGHT:g} to {MAX_LORA_WEIGHT:g}, default 1), "
    "such as [{path: loras/watercolor.safetensors, weight: 0.8}]"
)


def _file_items(
    value: Any, field: str, keys: tuple[str, ...], expectation: str, example: str, noun: str, file: str
) -> list[tuple[str, dict, str]]:
    """(where, item, path) for each item of a list of files such as `loras:`, once the list, each item's keys and
    its `path` are checked; what each kind adds (a weight, a token, a suffix) is checked by its own parser."""
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise CatalogError(f"`{field}` must be {expectation}; got {show(value)}.")
    items = []
    for index, item in enumerate(value):
        where = f"`{field}` item {index + 1}"
        if not isinstance(item, dict):
            raise CatalogError(f"{where} must be a mapping such as {example}; got {show(item)}.")
        unknown = sorted((key for key in item if key not in keys), key=str)
        if unknown:
            raise CatalogError(f"{where}: unknown keys {show(unknown)}; {noun} has {list(keys)}.")
        path = item.get("path")
        if not isinstance(path, str) or not path.strip():
            raise CatalogError(f"{where} needs `path`, {file} (relative to the catalog); got {show(path)}.")
        items.append((where, item, path))
    return items


def _item_number(item: dict, key: str, bounds: tuple[float, float], where: str, meaning: str) -> float:
    """A list item's strength `key` (default 1) within `bounds`, or a CatalogError naming it."""
    low, high = bounds
    try:
        number = float(_finite(item.get(key, 1.0)))
    except ValueError:
        number = math.nan
    if not low <= number <= high:
        raise CatalogError(
            f"{where}: `{key}` must be a number from {low:g} to {high:g} (unquoted; {meaning} strength); got "
            f"{show(item.get(key))}."
        )
    return number


def _loras(value: Any) -> tuple[LoraSpec, ...]:
    """`loras:` as written: each item's keys and weight checked here, its file where the catalog's folder is known
    (_lora_files)."""
    loras = []
    for where, item, path in _file_items(
        value,
        "loras",
        LORA_KEYS,
        LORAS_EXPECTATION,
        "{path: loras/x.safetensors, weight: 0.8}",
        "an adapter",
        "the adapter's .safetensors file",
    ):
        if not path.lower().endswith(LORA_SUFFIX):
            raise CatalogError(
                f"{where}: {show(path)} is not a .safetensors file; only those load without running code from the "
                "file: convert the LoRA to .safetensors, or use the .safetensors download."
            )
        weight = _item_number(
            item, "weight", (-MAX_LORA_WEIGHT, MAX_LORA_WEIGHT), f"{where} ({show(path)})", "0 turns it off, 1 is full"
        )
        loras.append(LoraSpec(path, weight))
    return tuple(loras)


@dataclass(frozen=True)
class EmbeddingSpec:
    """One textual-inversion embedding of an entry: its file (absolute once the catalog is read) and the token that
    prompts write to use it."""

    path: str
    token: str

    @property
    def name(self) -> str:
        """The file name without extension (A1111 names an embedding so, and uses that name as its token)."""
        return Path(self.path).stem


EMBEDDINGS_EXPECTATION = (
    "a list of embeddings, each a mapping with `path` (a .safetensors, .pt or .bin file, relative to the catalog) and "
    "`token` (the word prompts write to use it: lower case, no spaces), "
    'such as [{path: embeddings/my-style.safetensors, token: "<my-style>"}]'
)


def _embeddings(value: Any) -> tuple[EmbeddingSpec, ...]:
    """`embeddings:` as written: each item's keys and token checked here, its file where the catalog's folder is
    known (_embedding_files)."""
    embeddings: list[EmbeddingSpec] = []
    for where, item, path in _file_items(
        value,
        "embeddings",
        EMBEDDING_KEYS,
        EMBEDDINGS_EXPECTATION,
        '{path: embeddings/x.safetensors, token: "<x>"}',
        "an embedding",
        "the embedding's .safetensors, .pt or .bin file",
    ):
        if not path.lower().endswith(EMBEDDING_SUFFIXES):
            raise CatalogError(
                f"{where}: {show(path)} is not a .safetensors, .pt or .bin file, the formats diffusers reads "
                "textual-inversion embeddings from: point `path` at the embedding file itself."
            )
        token = item.get("token")
        if not isinstance(token, str) or not token or any(c.isspace() for c in token):
            raise CatalogError(
                f"{where} ({show(path)}) needs `token`, the word prompts write to use the embedding: text without "
                f'spaces, such as "<my-style>" (quoted); got {show(token)}.'
            )
        if token != token.lower():
            # CLIP tokenizers read prompts in lower case, and diffusers expands a multi-vector token only where the
            # prompt writes it exactly as loaded: a token with capitals would be applied in part.
            raise CatalogError(
                f"{where} ({show(path)}): `token` {show(token)} has capitals; the text encoder reads prompts in lower "
                f"case: write it as {show(token.lower())}, and so in the prompts."
            )
        if any(token == earlier.token for earlier in embeddings):
            raise CatalogError(
                f"{where} ({show(path)}): token {show(token)} is given twice; each embedding needs its own token."
            )
        embeddings.append(EmbeddingSpec(path, token))
    return tuple(embeddings)


MAX_MASK_BLUR = 64  # pixels; A1111's slider stops there
MAX_MASK_PADDING = 4096  # pixels around the mask; past the largest image side it is the whole image
INPAINT_KEYS = ("mask_blur", "padding")
INPAINT_EXPECTATION = (
    "true, or a mapping such as {mask_blur: 4, padding: 32} (mask_blur: pixels of blur on the mask's edge, 0 to 64; "
    "padding: inpaint only the masked area and this many pixels around it, at full resolution, "
    f"0 to {MAX_MASK_PADDING})"
)


@dataclass(frozen=True)
class InpaintSpec:
    """An inpainting entry's settings: each image is repainted inside its mask (engine/pairs.py) and kept outside."""

    mask_blur: int = 4  # pixels of Gaussian blur on the mask's edge, so the repainted part blends in (A1111's default)
    # A1111's "only masked" mode: the masked area and this many pixels around it are cut out, inpainted at the model's
    # resolution and pasted back (diffusers' padding_mask_crop; one image per pipeline call). None: the whole image.
    padding: int | None = None


def _inpaint(value: Any) -> InpaintSpec | None:
    if value is None or value is False:
        return None
    if value is True:
        return InpaintSpec()
    if not isinstance(value, dict) or any(key not in INPAINT_KEYS for key in value):
        raise CatalogError(f"`inpaint` must be {INPAINT_EXPECTATION}; got {show(value)}.")
    spec = InpaintSpec(value.get("mask_blur", InpaintSpec.mask_blur), value.get("padding"))
    bounds = (("mask_blur", spec.mask_blur, MAX_MASK_BLUR), ("padding", spec.padding, MAX_MASK_PADDING))
    for key, number, most in bounds:
        if number is not None or key == "mask_blur":  # padding may be null: the whole image
            if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= most:
                raise CatalogError(
                    f"`inpaint: {{{key}}}` must be a whole number of pixels from 0 to {most}; got {show(number)}."
                )
    return spec


CONTROLNET_KEYS = ("path", "control", "scale")
MAX_CONTROL_SCALE = 2.0  # diffusers' conditioning scale; A1111's slider stops at 2
CONTROLNETS_EXPECTATION = (
    "a list of ControlNets, each a mapping with `path` (a diffusers ControlNet folder, relative to the catalog), "
    "`control` (the type of control image it reads: the name of its folder of control images, or canny, computed "
    f"from the source) and an optional `scale` (0 to {MAX_CONTROL_SCALE:g}, default 1), such as "
    "[{path: controlnets/sd15-canny, control: canny, scale: 0.8}]"
)


@dataclass(frozen=True)
class ControlNetSpec:
    """One ControlNet of an entry: its folder (absolute once the catalog is read), the control image type it reads
    and its conditioning scale."""

    path: str
    control: str
    scale: float = 1.0

    @property
    def name(self) -> str:
        return Path(self.path).name


def _controlnets(value: Any) -> tuple[ControlNetSpec, ...]:
    """`controlnets:` as written: keys, control type and scale checked here, the folder where the catalog's folder is
    known (_controlnet_folders)."""
    controlnets = []
    for where, item, path in _file_items(
        value,
        "controlnets",
        CONTROLNET_KEYS,
        CONTROLNETS_EXPECTATION,
        "{path: controlnets/sd15-canny, control: canny}",
        "a ControlNet",
        "the ControlNet's diffusers folder",
    ):
        control = item.get("control")
        if not isinstance(control, str) or not control.strip() or "/" in control or control.startswith("."):
            raise CatalogError(
                f"{where} ({show(path)}) needs `control`, the type of control image it reads: the name of a folder "
                f"in the controls folder (such as depth), or canny (computed from the source); got {show(control)}."
            )
        if control.strip() == "mask":  # engine/pairs.py MASK: the inpainting mask's role
            raise CatalogError(
                f"{where} ({show(path)}): `control: mask` would read the inpainting mask as a control image; name "
                "the control type (its folder in the controls folder, such as depth or seg), or use `inpaint:`."
            )
        scale = _item_number(item, "scale", (0, MAX_CONTROL_SCALE), f"{where} ({show(path)})", "1 is full")
        controlnets.append(ControlNetSpec(path, control.strip(), scale))
    return tuple(controlnets)


def _weakest(strength: float, strengths: tuple[float, ...] | StrengthRange | None) -> float:
    """The smallest strength a result of the entry can draw."""
    if isinstance(strengths, StrengthRange):
        return strengths.low
    return min(strengths or (strength,))


def _quality(value: Any) -> QualityGates:
    """`quality:` as written (an entry's already merged over the defaults' by _parse_entry)."""
    try:
        return QualityGates.parse(value)
    except QualityError as exc:
        raise CatalogError(str(exc)) from None


Whole = Annotated[int, BeforeValidator(_whole)]
Number = Annotated[float, BeforeValidator(_finite)]
Strengths = Annotated[tuple[float, ...] | StrengthRange | None, BeforeValidator(_strengths)]
Loras = Annotated[tuple[LoraSpec, ...], BeforeValidator(_loras)]
Embeddings = Annotated[tuple[EmbeddingSpec, ...], BeforeValidator(_embeddings)]
Quality = Annotated[QualityGates, BeforeValidator(_quality)]
Inpaint = Annotated[InpaintSpec | None, BeforeValidator(_inpaint)]
ControlNets = Annotated[tuple[ControlNetSpec, ...], BeforeValidator(_controlnets)]
Unpaired = Literal["fail", "run_without"]
Quantize = Literal["int8", "fp8"] | None
QUALITY_EXPECTATION = (
    "a mapping of gates, such as {not_blank: true, min_change: 0.02, max_change: 0.8, prompt_not_truncated: false, "
    "tries: 3}"
)
STRENGTHS_EXPECTATION = (
    "a list of strengths, each above 0 and at most 1, such as [0.3, 0.5, 0.7], "
    "or a range with both bounds above 0 and at most 1, such as {min: 0.3, max: 0.7}"
)


class Settings(BaseModel):
    """What each setting accepts: the one place its type and bounds are written down."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resolution: Whole = Field(512, ge=8, le=4096, multiple_of=8)  # the VAE works in 8-pixel blocks
    num_inference_steps: Whole = Field(50, ge=1, le=1000)
    strength: Number = Field(0.75, gt=0, le=1)
    guidance_scale: Number = Field(7.5, ge=0, le=100)  # 1e30 renders all-black images that look like success
    scheduler: Annotated[StrictStr | None, AfterValidator(_scheduler_class)] = None  # None: the model's own
    dtype: Dtype = "auto"
    variant: StrictStr | None = None
    negative_prompt: Annotated[StrictStr | None, AfterValidator(_prompt_text)] = ""
    # The SD 1.x checkpoints ship a safety checker. The project does not run it unless asked:
    # it blacks out flagged images, and on untrained or unusual models it flags at random.
    safety_checker: StrictBool = False
    # How often the seeded draw picks this model relative to the others ("mostly SD 1.5, sometimes 2.1").
    weight: Number = Field(1.0, gt=0, le=1_000_000)
    # A1111/compel emphasis in prompts, `(word:1.3)`, `[word]`; off: the text goes to the encoder as written.
    prompt_weighting: StrictBool = False
    # Each result draws its strength from these (as DA-Fusion draws one per synthetic image), a list or a
    # {min, max} range (plan.choose); unset: `strength`.
    strengths: Strengths = None
    # The gates each result passes or is re-rolled with the next seed, up to `tries` (engine/quality.py).
    quality: Quality = QualityGates()
    # What an image without the pair its entry needs (mask, control image) gets: a named error, or a run without it.
    if_unpaired: Unpaired = "fail"
    # The UNet's linear layers in int8 or float8 (torchao; fp8 on Hopper GPUs and later), compiled: faster, and lossy,
    # so off unless set (docs/speed.md has its measured fidelity).
    quantize: Quantize = None


class Defaults(Settings):
    """`defaults:`: the settings every entry starts from, and what applies to the catalog as a whole."""

    # Results per image where the run does not say (run --variants, RANDOM_DIFFUSION_VARIANTS); None: 1.
    variants: Whole | None = Field(None, ge=1, le=MAX_VARIANTS)


class Entry(Settings):
    """One `models:` entry: the catalog's defaults with the entry's own keys over them."""

    name: StrictStr
    description: StrictStr | None = None
    path: StrictStr | None = None
    hub_id: StrictStr | None = None
    single_file: StrictStr | None = None
    config: StrictStr | None = None  # single_file only: diffusers config folder or hub id
    loras: Loras = ()  # adapters on the base model, each with its weight (an entry's own key, not a default)
    embeddings: Embeddings = ()  # textual-inversion embeddings, each with its token (an entry's own key too)
    inpaint: Inpaint = None  # repaint each image inside its mask (an entry's own key)
    controlnets: ControlNets = ()  # ControlNets on the base, each with its control type and scale (an entry's own key)

    @model_validator(mode="after")
    def _rules(self) -> Entry:
        """Rules between keys; each key alone is checked by its type and bounds."""
        kinds = [kind for kind in SOURCE_KINDS if getattr(self, kind)]
        if len(kinds) != 1:
            raise CatalogError(f"it must name exactly one of {SOURCE_KINDS}; it names {kinds or 'none'}.")
        if self.hub_id is not None and (problem := _not_a_hub_id(self.hub_id)):
            raise CatalogError(problem)
        if self.config is not None and kinds != ["single_file"]:
            raise CatalogError(f"`config` only applies to `single_file` models; {kinds[0]} models carry their own.")
        weakest = _weakest(self.strength, self.strengths)
        if int(self.num_inference_steps * weakest) < 1:  # ModelSpec.denoising_steps
            raise CatalogError(
                f"num_inference_steps ({self.num_inference_steps}) x strength ({weakest}) "
                "gives no denoising step; raise either so their product is at least 1."
            )
        if kinds == ["single_file"] and self.safety_checker:
            raise CatalogError(
                "single-file checkpoints carry no safety checker, so `safety_checker: true` cannot "
                "be honoured; convert the model to a diffusers folder with one, or drop the setting."
            )
        return self


class Setting(NamedTuple):
    """A key as the models declare it: in words for messages, and its upper bound for checks elsewhere."""

    expectation: str
    high: float | None = None


def _setting(field: Any) -> Setting:
    kind = field.annotation
    if kind == tuple[float, ...] | StrengthRange | None:
        return Setting(STRENGTHS_EXPECTATION)
    if kind == tuple[LoraSpec, ...]:  # Loras, its validator held apart in field.metadata
        return Setting(LORAS_EXPECTATION)
    if kind == tuple[EmbeddingSpec, ...]:
        return Setting(EMBEDDINGS_EXPECTATION)
    if kind is QualityGates:
        return Setting(QUALITY_EXPECTATION)
    if kind == InpaintSpec | None:
        return Setting(INPAINT_EXPECTATION)
    if kind == tuple[ControlNetSpec, ...]:
        return Setting(CONTROLNETS_EXPECTATION)
    if get_origin(kind) is Union and len(get_args(kind)) == 2 and type(None) in get_args(kind):
        kind = next(arg for arg in get_args(kind) if arg is not type(None))  # optional: as the value it takes
    if get_origin(kind) is Annotated:
        kind = get_args(kind)[0]
    if kind is bool:
        return Setting("true or false (unquoted)")
    if get_origin(kind) is Literal:
        return Setting(f"one of {get_args(kind)}")
    if kind not in (int, float):
        return Setting("text")
    bound = {k: getattr(m, k) for m in field.metadata for k in ("ge", "gt", "le", "multiple_of") if hasattr(m, k)}
    noun = "a whole number" if kind is int else "a number"
    span = f"above {bound['gt']:g} and at most" if "gt" in bound else f"from {bound['ge']:g} to"
    step = f", a multiple of {bound['multiple_of']}" if "multiple_of" in bound else ""
    return Setting(f"{noun} {span} {bound['le']:g}{step}", bound["le"])


SETTINGS: dict[str, Setting] = {key: _setting(field) for key, field in Settings.model_fields.items()}
_KEYS: dict[str, Setting] = {
    key: _setting(field) for model in (Entry, Defaults) for key, field in model.model_fields.items()
}


@dataclass(frozen=True)
class ModelSpec:
    """One catalog entry with its defaults filled in."""

    name: str
    source_kind: str  # one of SOURCE_KINDS
    source: str  # absolute path for local sources, the id for hub models
    resolution: int
    num_inference_steps: int
    strength: float
    guidance_scale: float
    scheduler: str | None
    dtype: str
    variant: str | None
    negative_prompt: str
    safety_checker: bool = False
    description: str = ""
    config: str | None = None  # single_file only: diffusers config folder or hub id
    weight: float = 1.0
    prompt_weighting: bool = False
    strengths: tuple[float, ...] | StrengthRange | None = None  # each result draws its strength (plan.choose)
    loras: tuple[LoraSpec, ...] = ()  # adapters on the base, each file (absolute) with its weight
    embeddings: tuple[EmbeddingSpec, ...] = ()  # textual-inversion embeddings, each file (absolute) with its token
    quality: QualityGates = QualityGates()  # the gates its results pass, or are re-rolled
    inpaint: InpaintSpec | None = None  # repaints each image inside its mask
    controlnets: tuple[ControlNetSpec, ...] = ()  # each folder (absolute) with its control type and scale
    if_unpaired: str = "fail"  # an image without its pair: "fail" names it, "run_without" runs plain img2img
    quantize: str | None = None  # "int8" or "fp8": the UNet's linear layers quantized (lossy)

    def result_settings(self) -> dict[str, Any]:
        """Everything about the entry that can change a result's pixels (not its description or draw weight); an
        adapter by its file's path and its weight, an embedding by its file's path and its token, so editing either
        stales exactly this entry's results. Quality gates choose which attempt is kept, so they count too, but
        only where they differ from the built-in ones: results made before gates existed stay current."""
        settings = asdict(self)
        del settings["description"], settings["weight"]
        if self.quality == QualityGates():
            del settings["quality"]
        for optional in (
            "prompt_weighting",
            "strengths",
            "loras",
            "embeddings",
            "inpaint",
            "controlnets",
            "quantize",
        ):  # results made before the setting existed stay current
            if not settings[optional]:
                del settings[optional]
        if self.if_unpaired == "fail":
            del settings["if_unpaired"]
        return settings

    @property
    def denoising_steps(self) -> int:
        """img2img runs only the last `strength` share of the schedule."""
        return int(self.num_inference_steps * self.strength)


@dataclass(frozen=True)
class Catalog:
    """A catalog file as read: its models, and what its `defaults:` say about the catalog as a whole."""

    models: list[ModelSpec]
    variants: int | None = None  # results per image; None: the catalog does not say


def load_catalog(path: str | Path) -> list[ModelSpec]:
    """Read and validate a catalog file; relative model paths resolve against its folder."""
    return read_catalog(path).models


def catalog_variants(path: str | Path) -> int | None:
    """The catalog's `defaults: {variants: K}` (the whole catalog validated, as load_catalog does), or None."""
    return read_catalog(path).variants


def read_catalog(path: str | Path) -> Catalog:
    """Read and validate a catalog file into its models and catalog-wide settings."""
    path = Path(path)
    if problem := kind_problem(path, "file"):
        raise CatalogError(
            f"Model catalog {path} {problem}: point RANDOM_DIFFUSION_MODELS_FILE at a catalog such as data/models.yaml."
        )
    with path.open("rb") as handle:
        data = handle.read(MAX_CATALOG_BYTES + 1)
    if len(data) > MAX_CATALOG_BYTES:
        raise CatalogError(
            f"Model catalog {path} is {path.stat().st_size:,} bytes; a catalog may have at most "
            f"{MAX_CATALOG_BYTES:,}: check that the variable points at the catalog, or split it."
        )
    stream = io.BytesIO(data)  # bytes: PyYAML honours UTF-8/UTF-16 byte-order marks itself
    stream.name = str(path)
    try:
        document = yaml.load(stream, Loader=_BoundedLoader) or {}
    except yaml.reader.ReaderError as exc:
        reason = " ".join(str(exc).split())  # e.g. "unacceptable character #x00e9: ... position 22"
        raise CatalogError(f"Model catalog {path} is not valid YAML text: {reason}. Save it as UTF-8 text.") from exc
    except yaml.YAMLError as exc:
        tabs = ". Indent with spaces: YAML takes no tabs." if "'\\t'" in str(exc) else ""
        raise CatalogError(f"Model catalog {path} is not valid YAML: {str(exc)[:500]}{tabs}") from exc
    except RecursionError as exc:
        raise CatalogError(f"Model catalog {path} nests lists or mappings too deeply to be a catalog.") from exc
    except CatalogError:
        raise
    except ValueError as exc:  # a date such as 2024-02-30, or an integer of more than 4,300 digits
        reason = str(exc).split(":")[0]
        raise CatalogError(f"Model catalog {path}: YAML cannot convert a value ({reason}): fix or quote it.") from exc
    return parse_catalog_document(document, base_dir=path.parent, origin=str(path))


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses documents whose aliases expand past MAX_YAML_NODES nodes, or loop, and keys set
    twice in one mapping (YAML keeps the last one silently: `strength: 0.3` then `strength: 0.9` ran at 0.9)."""

    def compose_document(self):
        node = super().compose_document()
        _check_expanded_size(node, self.name)
        return node

    def construct_mapping(self, node, deep=False):
        written = set()
        for key_node, _value in node.value:  # as written: keys a `<<: *alias` merges in may be overridden
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in written:
                    raise CatalogError(
                        f"Model catalog {self.name}, line {key_node.start_mark.line + 1}: `{key_node.value}` is set "
                        "twice in one mapping, and YAML would keep only the last: remove one."
                    )
                written.add(key_node.value)
        return super().construct_mapping(node, deep)


def _check_expanded_size(root: yaml.Node, name: str) -> None:
    """Count nodes as if every alias were written out (each shared node sized once), refusing loops."""
    sizes: dict[int, int] = {}
    ancestors: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        children = (
            [n for pair in node.value for n in pair]
            if isinstance(node, yaml.MappingNode)
            else (node.value if isinstance(node, yaml.SequenceNode) else [])
        )
        if children_done:
            ancestors.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > MAX_YAML_NODES:
                raise CatalogError(
                    f"Model catalog {name} holds more than {MAX_YAML_NODES:,} values once its aliases (*name) are "
                    "expanded, far more than any catalog needs (a YAML alias bomb?): use fewer aliases or split it."
                )
        elif id(node) in ancestors:
            raise CatalogError(f"Model catalog {name}: an alias refers to itself (line {node.start_mark.line + 1}).")
        elif id(node) not in sizes:
            ancestors.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children)


def parse_catalog(document: dict, base_dir: Path, origin: str = "catalog") -> list[ModelSpec]:
    return parse_catalog_document(document, base_dir, origin).models


def parse_catalog_document(document: dict, base_dir: Path, origin: str = "catalog") -> Catalog:
    if not isinstance(document, dict):
        raise CatalogError(f"{origin}: expected a mapping with a `models:` list.")
    unknown = sorted(set(document) - set(TOP_LEVEL), key=str)
    if unknown:
        settings = [key for key in unknown if key in _KEYS]
        hint = f" Settings such as {show(settings)} go under `defaults:`." if settings else ""
        raise CatalogError(f"{origin}: unknown top-level keys {show(unknown)}; a catalog has {list(TOP_LEVEL)}.{hint}")
    if document.get("models") is None:
        raise CatalogError(f"{origin}: `models:` is missing or has no entries: list the models under it.")
    if not isinstance(document["models"], list):
        raise CatalogError(
            f"{origin}: `models:` must be a list of entries (`- name: ...`); got {show(document['models'])}."
        )
    given = document.get("defaults") or {}
    if not isinstance(given, dict):
        raise CatalogError(
            f"{origin}: `defaults` must be a mapping of setting: value, such as `defaults: {{resolution: 512}}`; "
            f"got {show(given)}."
        )
    valid_defaults = _validated(Defaults, given, given, f"{origin}: defaults")
    defaults = {key: getattr(valid_defaults, key) for key in SETTINGS}  # as validated: a range stays one
    specs = [_parse_entry(entry, defaults, base_dir, origin) for entry in document["models"]]
    if not specs:
        raise CatalogError(f"{origin}: the `models:` list is empty; add at least one model.")
    duplicates = sorted(n for n, count in Counter(s.name for s in specs).items() if count > 1)
    if duplicates:
        raise CatalogError(f"{origin}: model names must be unique; repeated: {show(duplicates)}.")
    return Catalog(specs, valid_defaults.variants)


def find_model(catalog: list[ModelSpec], name: str) -> ModelSpec:
    for spec in catalog:
        if spec.name == name:
            return spec
    raise CatalogError(
        f"Unknown model {name!r}: the catalog has {[s.name for s in catalog]}. "
        "Use one of those names or add the model to the catalog."
    )


def _parse_entry(entry: Any, defaults: dict, base_dir: Path, origin: str) -> ModelSpec:
    if not isinstance(entry, dict) or entry.get("name") is None or str(entry["name"]).strip() == "":
        raise CatalogError(f"{origin}: every model needs a `name`; got {show(entry)}.")
    where = f"{origin}: model {show(entry['name'])}"
    wide = [key for key in CATALOG_WIDE if key in entry]
    if wide:
        raise CatalogError(
            f"{where}: `{wide[0]}` applies to the whole catalog, not one model: move it under `defaults:`, "
            f"such as `defaults: {{{wide[0]}: {show(entry[wide[0]])}}}`."
        )
    if isinstance(entry.get("quality"), dict):  # gates go over the defaults' gates one by one, not as a whole
        entry = {**entry, "quality": {**asdict(defaults["quality"]), **entry["quality"]}}
    valid = _validated(Entry, {**defaults, **entry}, entry, where)
    kind = next(kind for kind in SOURCE_KINDS if getattr(valid, kind))
    source = getattr(valid, kind)
    if valid.quantize and valid.loras:
        fix = (
            "remove `quantize` from this entry"
            if "quantize" in entry
            else "set `quantize: null` on this entry (it comes from `defaults:`)"
        )
        raise CatalogError(
            f"{where}: `quantize: {valid.quantize}` and `loras` cannot go together (LoRA adapters switch on the "
            f"unquantized layers): {fix}, or give the adapters an entry of their own."
        )
    return ModelSpec(
        **{key: getattr(valid, key) for key in SETTINGS} | {"negative_prompt": valid.negative_prompt or ""},
        name=valid.name,
        source_kind=kind,
        source=source if kind == "hub_id" else str((base_dir / source).resolve()),
        description=valid.description or "",
        config=_single_file_config(valid.config, base_dir, where),
        loras=_lora_files(valid.loras, base_dir, where),
        embeddings=_embedding_files(valid.embeddings, base_dir, where),
        inpaint=valid.inpaint,
        controlnets=_controlnet_folders(valid.controlnets, base_dir, where),
    )


# Names A1111, Forge and ComfyUI users carry over, with what this catalog has instead.
OTHER_TOOLS_KEYS = {
    "steps": "write num_inference_steps",
    "cfg_scale": "write guidance_scale",
    "cfg": "write guidance_scale",
    "sampler": "write scheduler, naming a diffusers scheduler class (DPMSolverMultistepScheduler for DPM++ 2M)",
    "sampler_name": "write scheduler, naming a diffusers scheduler class (DPMSolverMultistepScheduler for DPM++ 2M)",
    "denoising_strength": "write strength",
    "denoise": "write strength",
    "lora": "write loras: [{path: ..., weight: ...}]",
    "width": "write resolution (the longer side)",
    "height": "write resolution (the longer side)",
    "size": "write resolution (the longer side)",
    "seed": "the seed is the run's (--seed, or the dataset resource's seed)",
    "clip_skip": "not a setting here: the model's text encoder runs whole",
    "vae": "not a setting here: the model's own VAE runs (save the model with the VAE you want)",
}


def _not_a_hub_id(hub_id: str) -> str | None:
    """Why `hub_id` cannot be a hub id (`owner/name`), with the key to write instead; None if it may be one."""
    if "://" in hub_id:
        return (
            f"`hub_id` {show(hub_id)} is a web address; a hub id is `owner/name`. For a file from another site, "
            "download it and write `single_file:` with its path (and `config:`)."
        )
    if hub_id.startswith(("/", "./", "../", "~")) or hub_id.endswith((".safetensors", ".ckpt")):
        return (
            f"`hub_id` {show(hub_id)} is a path; a hub id is `owner/name`. Write `path:` for a diffusers folder or "
            "`single_file:` for a checkpoint file."
        )
    return None


def _instead(key: object, known: list[str]) -> str | None:
    """What to write for an unknown key: another tool's name for a setting, or a near spelling of a known key."""
    if key in OTHER_TOOLS_KEYS:
        return f"{key}: {OTHER_TOOLS_KEYS[key]}"
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.8)
    return f"{key}: write {close[0]}" if close else None


def _validated(model: type[Settings], values: dict, given: dict, where: str) -> Any:
    """`model` of `values`, or the first problem as one line naming `where`, the key and the fix."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        errors = exc.errors()
    unknown = sorted((e["loc"][0] for e in errors if e["type"] in ("extra_forbidden", "invalid_key")), key=str)
    if unknown:
        known = sorted(model.model_fields)
        hints = "; ".join(hint for key in unknown if (hint := _instead(key, known)))
        raise CatalogError(
            f"{where}: unknown settings {show(unknown)}{f' ({hints})' if hints else ''}; known keys are {known}."
        )
    error = min(errors, key=lambda e: e["loc"][:1] != ("name",))  # the other messages name the model by it
    if isinstance(error.get("ctx", {}).get("error"), (CatalogError, PromptListError)):  # a rule's own message
        raise CatalogError(f"{where}: {error['ctx']['error']}")
    key = error["loc"][0]
    value, expectation = given.get(key), _KEYS[key].expectation
    if expectation == "text" and isinstance(value, (int, float)):
        # Not converted: YAML has already turned 1.10 into 1.1 and 010 into 8, so str() would rename the model.
        hint = f" (YAML reads an unquoted 1.5, 10 or yes as a number or boolean): quote it: {key}: '{show(value)}'."
    elif _KEYS[key].high is not None and _numeric_text(value):
        hint = ". Write the number without quotes, with a dot in exponents (1.0e+3)."
    else:
        hint = "."
    raise CatalogError(f"{where}: `{key}` must be {expectation}; got {show(value)}{hint}")


def _numeric_text(value: Any) -> bool:
    """Quoted "50", or 1e3 (which YAML 1.1 reads as text): a number the user meant."""
    try:
        return isinstance(value, str) and math.isfinite(float(value))
    except ValueError:
        return False


def _listed_file(base_dir: Path, path: str, what: str, key: str, index: int, where: str) -> str:
    """An adapter's or embedding's file resolved against the catalog's folder; it must exist."""
    resolved = (base_dir / path).resolve()
    if problem := kind_problem(resolved, "file"):
        raise CatalogError(
            f"{where}: {what} file {resolved} (`{key}` item {index + 1}) {problem}: fix its `path` "
            "(a relative path is read from the catalog's folder), or remove the item."
        )
    return str(resolved)


def _lora_files(loras: tuple[LoraSpec, ...], base_dir: Path, where: str) -> tuple[LoraSpec, ...]:
    """Each adapter's file resolved against the catalog's folder; it must exist, and appear once per entry."""
    resolved = []
    for index, lora in enumerate(loras):
        path = _listed_file(base_dir, lora.path, "LoRA", "loras", index, where)
        if any(path == earlier.path for earlier in resolved):
            raise CatalogError(
                f"{where}: LoRA file {path} is listed twice; list it once with the sum of the weights you meant."
            )
        if same_name := next((earlier for earlier in resolved if earlier.name == Path(path).stem), None):
            raise CatalogError(
                f"{where}: LoRA files {same_name.path} and {path} have one name, {same_name.name!r}, and results "
                "name their adapters by file name (`<lora:name:weight>`, `Lora hashes`): rename one of the files."
            )
        if marks := sorted(set(Path(path).stem) & set(A1111_LORA_MARKS)):
            raise CatalogError(
                f"{where}: LoRA file {path} has {' and '.join(map(repr, marks))} in its name, which the "
                "`<lora:name:weight>` tags and `Lora hashes` of each result's parameters cannot carry (A1111 and "
                "Civitai would read another name): rename the file."
            )
        resolved.append(LoraSpec(path, lora.weight))
    return tuple(resolved)


A1111_LORA_MARKS = ":,<>"  # separators of `<lora:name:weight>` and of the `Lora hashes: "a: h, b: h"` list


def _embedding_files(embeddings: tuple[EmbeddingSpec, ...], base_dir: Path, where: str) -> tuple[EmbeddingSpec, ...]:
    """Each embedding's file resolved against the catalog's folder; it must exist."""
    return tuple(
        EmbeddingSpec(_listed_file(base_dir, embedding.path, "embedding", "embeddings", index, where), embedding.token)
        for index, embedding in enumerate(embeddings)
    )


def _controlnet_folders(
    controlnets: tuple[ControlNetSpec, ...], base_dir: Path, where: str
) -> tuple[ControlNetSpec, ...]:
    """Each ControlNet's folder resolved against the catalog's folder; it must hold a diffusers config."""
    resolved = []
    for index, controlnet in enumerate(controlnets):
        folder = (base_dir / controlnet.path).resolve()
        if problem := kind_problem(folder, "folder"):
            raise CatalogError(
                f"{where}: ControlNet folder {folder} (`controlnets` item {index + 1}) {problem}: fix its `path` (a "
                "relative path is read from the catalog's folder), or remove the item."
            )
        if _config_class(folder / "config.json") != "ControlNetModel":
            raise CatalogError(
                f"{where}: {folder} (`controlnets` item {index + 1}) is no diffusers ControlNet (its config.json "
                "must name ControlNetModel): point `path` at a ControlNet folder (a relative path is read from the "
                "catalog's folder)."
            )
        resolved.append(ControlNetSpec(str(folder), controlnet.control, controlnet.scale))
    return tuple(resolved)


def _config_class(config: Path) -> str | None:
    """The `_class_name` a diffusers model folder's config.json names, or None if it cannot be read."""
    import json

    try:
        document = json.loads(config.read_bytes())
    except (OSError, ValueError):
        return None
    return document.get("_class_name") if isinstance(document, dict) else None


def _single_file_config(config: str | None, base_dir: Path, where: str) -> str | None:
    """A local config folder resolves against the catalog's folder; anything else is a hub id."""
    if config is None:
        return None
    local = base_dir / config
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise CatalogError(
                f"{where}: config folder {local} has no model_index.json; point `config` at a diffusers "
                "folder (configs are enough, weights are not needed)."
            )
        return str(local.resolve())
    return config
