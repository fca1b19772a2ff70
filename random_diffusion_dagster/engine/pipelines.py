"""Loading diffusion pipelines and keeping the recently used ones resident under a budget."""

from __future__ import annotations

import copy
import dataclasses
import gc
import hashlib
import json
import logging
import re
import sys
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .catalog import ControlNetSpec, EmbeddingSpec, LoraSpec, ModelSpec
from .families import (
    FROM_CATALOG,
    OTHER,
    SD,
    Family,
    family_of_pipeline,
    family_of_spec,
    img2img_class_name,
    negative_prompt_problem,
    pipeline_class_name,
    settings_problem,
)
from .local_files import kind_problem
from .quiet import quiet_libraries

log = logging.getLogger(__name__)  # into the run's log during a run (quiet.engine_warnings_to)

SHIPPED_MODELS = Path(__file__).resolve().parents[2] / "data" / "models"  # the demo models of a source checkout
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt")
# Components that may be shared between pipelines when their weights are byte-identical
# (SD 1.4 and 1.5 ship the same VAE and text encoder, for example).
SHAREABLE_COMPONENTS = ("vae", "text_encoder", "text_encoder_2", "text_encoder_3", "unet", "transformer")
DENOISERS = ("unet", "transformer")  # the part that runs at every step: SD 1.x/2.x and SDXL's, SD3 and Flux.1's


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # recorded in the process: never in a package


@dataclass(frozen=True)
class Speedups:
    """What the engine applies to each loaded pipeline; defaults are safe everywhere.

    channels_last: NHWC memory layout for the UNet's convolutions (CUDA only).
    vae_slicing: decode a batch one image at a time, so big batches fit.
    compile_unet: fuse the attention QKV projections and torch.compile the UNet; about a
        minute of compilation per architecture, once for every model of it and every batch
        size, worth it only for long runs (or read from the compile cache). An SD3 or Flux.1
        transformer has its blocks compiled instead (_compile_blocks).
    compile_vae: torch.compile the VAE encoder and decoder (channels_last on CUDA); a VAE
        shared by several models compiles once.
    compile_mode: torch.compile's mode for both: "default", "reduce-overhead" (CUDA graphs:
        a denoising step replays its recorded kernels; one recording per batch size),
        "max-autotune" (benchmarks kernel choices while compiling: minutes longer).
    ahead_of_time: compile those parts into AOTInductor packages kept in the compile cache (ahead_of_time.py), which a
        fresh worker loads instead of tracing each graph again; not in the modes that record CUDA graphs.
    read_only_cache: a shared compile cache this process cannot write (a volume mounted read-only): its packages are
        loaded from there; torch's cache folder is one of the process's own (settings.compile_cache_for_this_process).
    """

    channels_last: bool = True
    vae_slicing: bool = True
    compile_unet: bool = False
    compile_vae: bool = False
    compile_mode: str = "default"
    ahead_of_time: bool = True
    read_only_cache: str | None = None


class ModelLoadError(RuntimeError):
    """A catalog model could not be loaded; the message names the model, its source and the fix."""


def import_libraries() -> None:
    """Import what a process's first model load would (torch, diffusers' Stable Diffusion pipelines and models,
    transformers' text encoders; torchao where installed, which diffusers imports): a worker process that does this
    as it starts spends its first run's seconds on the model (4.4 s of a demo model's first load were imports)."""
    quiet_libraries()
    from diffusers import AutoPipelineForImage2Image, StableDiffusionImg2ImgPipeline  # noqa: F401  (lazy modules)


def pick_device(requested: str | None = None) -> str:
    """The configured device, else cuda, then mps, then cpu."""
    import torch

    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ModelLoadError(f"Device {requested!r} was requested but torch sees no CUDA device.")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(spec_dtype: str, device: str, override: str | None = None):
    """fp16 on CUDA, fp32 elsewhere, unless the catalog entry or the resource says otherwise."""
    import torch

    name = override or spec_dtype
    if name == "auto":
        name = "float16" if device.startswith("cuda") else "float32"
    return getattr(torch, name)


def estimate_bytes(spec: ModelSpec) -> int:
    """Weight bytes on disk for local models (0 when unknown): what loading will roughly cost."""
    source = Path(spec.source)
    if spec.source_kind == "single_file":
        return source.stat().st_size if source.is_file() else 0
    if spec.source_kind == "path" and source.is_dir():
        return sum(p.stat().st_size for p in source.rglob("*") if p.suffix in WEIGHT_SUFFIXES)
    return 0


def pipeline_bytes(pipeline) -> int:
    """Bytes of parameters and buffers across the pipeline's torch modules."""
    return sum(_module_bytes(m) for m in _torch_modules(pipeline))


def _torch_modules(pipeline) -> list:
    import torch

    return [c for c in pipeline.components.values() if isinstance(c, torch.nn.Module)]


def _module_bytes(module) -> int:
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def load_pipeline(
    spec: ModelSpec,
    device: str,
    dtype_override: str | None = None,
    shared: dict[str, Any] | None = None,
    speedups: Speedups = Speedups(),
):
    """Load one catalog model as an img2img pipeline on `device`, or raise ModelLoadError.

    `shared` maps component names to already loaded modules to reuse instead of loading.
    """
    quiet_libraries()
    import diffusers

    _check_source_exists(spec)
    _refuse_unsupported(spec, family_of_spec(spec))  # before spending a load, where model_index.json says
    dtype = pick_dtype(spec.dtype, device, dtype_override)
    skip_checker = {} if spec.safety_checker else _without_safety_checker(spec)
    try:
        if spec.source_kind == "single_file":
            # The family's img2img class, from the config's model_index.json (SD 1.x/2.x when it cannot be read).
            pipeline_class = getattr(diffusers, img2img_class_name(pipeline_class_name(spec)))
            pipeline = _from_single_file(pipeline_class, spec, dtype, skip_checker)
        else:
            pipeline = diffusers.AutoPipelineForImage2Image.from_pretrained(
                spec.source,
                dtype=dtype,
                variant=spec.variant,
                device_map=_straight_to(device),
                **skip_checker,
                **(shared or {}),
            )
    except Exception as exc:  # noqa: BLE001 - whatever a model's files make the loaders raise fails its images alone
        raise ModelLoadError(_explain_load_failure(spec, exc)) from exc
    _refuse_unsupported(spec, family_of_pipeline(pipeline))  # what loaded decides (a hub id's index is unread)
    if spec.scheduler:
        pipeline.scheduler = _make_scheduler(spec, pipeline.scheduler)
    pipeline.set_progress_bar_config(disable=True)
    return apply_speedups(pipeline.to(device), device, speedups, spec.quantize)


def _from_single_file(pipeline_class, spec: ModelSpec, dtype, arguments: dict[str, Any]):
    """The checkpoint as a pipeline of `pipeline_class`, its configs from `config:`. A checkpoint without text
    encoders (SD 3/3.5 and Flux.1 files often hold the transformer alone; a UNet-only file) takes them from a local
    `config:` folder, as diffusers asks: it reads only its own weight files there, so each text encoder it misses is
    loaded from that folder here and passed in."""
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    given: dict[str, Any] = {}
    first: SingleFileComponentError | None = None
    while True:
        try:
            return pipeline_class.from_single_file(spec.source, config=spec.config, dtype=dtype, **arguments, **given)
        except SingleFileComponentError as exc:
            missing = _text_encoders_in_config(spec.config, str(exc), dtype, given)
            if not missing:
                raise
            given, first = given | missing, first or exc
        except Exception as exc:
            if first is None:
                raise
            # more than text encoders missing (a file of another architecture than `config:`): the first says so
            raise first from exc


def _text_encoders_in_config(config: str | None, message: str, dtype, given: dict[str, Any]) -> dict[str, Any]:
    """The text encoders of the class diffusers failed to load (`message`), loaded from the local `config` folder's
    subfolders that hold their weights; none where there are none."""
    if not _is_local_dir(config):
        return {}
    try:
        index = json.loads((Path(config) / "model_index.json").read_bytes())
    except (OSError, ValueError):
        return {}
    loaded = {}
    for name, value in index.items() if isinstance(index, dict) else ():
        if not (isinstance(value, list) and len(value) == 2 and value[0] == "transformers") or name in given:
            continue
        folder = Path(config) / name
        if f"Failed to load {value[1]}." in message and any((folder / w).is_file() for w in TRANSFORMERS_WEIGHTS):
            import transformers

            loaded[name] = getattr(transformers, value[1]).from_pretrained(folder, dtype=dtype)
    return loaded


TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _straight_to(device: str) -> str | None:
    """diffusers' device_map for `device`: the weights go from their safetensors files straight to the device (its
    memory reserved up front), not to the CPU first and then copied. diffusers takes a device type, not an index
    ("cuda", not "cuda:1"): an indexed device loads on the CPU and is moved, as before."""
    return device if ":" not in device else None


def _without_safety_checker(spec: ModelSpec) -> dict[str, Any]:
    """Loader arguments that leave the checker out; `requires_safety_checker=False` says it is on purpose
    (the catalog decides), which spares every load diffusers' licence notice. Only SD pipelines take it: SDXL, SD3
    and Flux.1 have no checker (their feature_extractor serves IP-Adapters), so they get no such arguments."""
    if family_of_spec(spec) not in (SD, OTHER):
        return {}
    arguments: dict[str, Any] = {"safety_checker": None, "feature_extractor": None}
    index = Path(spec.source) / "model_index.json"
    if spec.source_kind == "single_file" or (index.is_file() and '"safety_checker"' in index.read_text()):
        arguments["requires_safety_checker"] = False
    return arguments


def problem_before_loading(spec: ModelSpec) -> str | None:
    """Why the entry's images would fail, as far as this machine's files tell without loading anything: its path is
    missing or no model, or its family (model_index.json) cannot honour a setting, the catalog's negative prompt
    included. `plan` and each run's `model_catalog` say so before any image; the images still fail one by one (a
    worker may see other files)."""
    try:
        _check_source_exists(spec)
        family = family_of_spec(spec)
        _refuse_unsupported(spec, family)
    except ModelLoadError as exc:
        return str(exc)
    if problem := negative_prompt_problem(spec.name, family, spec.negative_prompt, FROM_CATALOG):
        return f"{problem} (for prompt lines without their own --negative_prompt)"
    return None


def _refuse_unsupported(spec: ModelSpec, family: Family) -> None:
    """A catalog setting the model's family cannot honour fails the model's images by name (families.py)."""
    if problem := settings_problem(spec, family):
        raise ModelLoadError(problem)


def apply_speedups(pipeline, device: str, speedups: Speedups, quantize: str | None = None):
    """`quantize`: the catalog entry's lossy setting ("int8", "fp8"), which compiles the UNet or transformer too
    (torchao's quantized layers are fast only compiled)."""
    import torch

    unet, transformer = getattr(pipeline, "unet", None), getattr(pipeline, "transformer", None)
    if speedups.channels_last and device.startswith("cuda") and unet is not None:
        unet.to(memory_format=torch.channels_last)
    if speedups.vae_slicing and hasattr(pipeline, "vae"):
        pipeline.vae.enable_slicing()
    if (speedups.compile_unet or quantize) and unet is not None and not hasattr(unet, "_orig_mod"):
        if hasattr(pipeline, "fuse_qkv_projections"):
            pipeline.fuse_qkv_projections()
        if quantize:
            _quantize(pipeline.unet, quantize)
        import torch._inductor.config as inductor_config

        inductor_config.conv_1x1_as_mm = True  # 1x1 convolutions as matrix products
        # torchao's quantized weights are tensor subclasses, which an ahead-of-time package does not take
        pipeline.unet = _compiled(unet, unet, dataclasses.replace(speedups, ahead_of_time=not quantize))
    if (speedups.compile_unet or quantize) and transformer is not None and not is_compiled(transformer):
        if quantize:
            _quantize(transformer, quantize)
        _compile_blocks(transformer, speedups.compile_mode)
    vae = getattr(pipeline, "vae", None)
    if speedups.compile_vae and vae is not None:
        if speedups.channels_last and device.startswith("cuda"):
            vae.to(memory_format=torch.channels_last)
        for name in ("encoder", "decoder"):
            part = getattr(vae, name)
            if not hasattr(part, "_orig_mod"):  # a shared VAE is compiled already
                setattr(vae, name, _compiled(part, vae, speedups, name))
    return pipeline


_READ_ONLY_CACHES_SAID: set[Path] = set()  # the run's log is told once per process


def _compiled(part, owner, speedups: Speedups, name: str = ""):
    """`part` (the UNet, or the VAE `owner`'s encoder or decoder) compiled: through ahead-of-time packages where its
    mode allows (CUDA graphs are recorded in the process), else just in time."""
    import torch

    mode = speedups.compile_mode
    compiled = torch.compile(part, fullgraph=True, mode=mode)
    read_only = Path(speedups.read_only_cache) if speedups.read_only_cache else None
    if read_only and read_only not in _READ_ONLY_CACHES_SAID:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        _READ_ONLY_CACHES_SAID.add(read_only)
        log.warning(
            "the compile cache %s cannot be written: its packages are read from there, and what this process compiles "
            "goes to %s",
            read_only,
            cache_dir(),
        )
    if speedups.ahead_of_time and mode not in CUDA_GRAPH_MODES:
        from .ahead_of_time import PackagedModule

        config = {key: value for key, value in owner.config.items() if not key.startswith("_")}  # not _name_or_path
        identity = json.dumps([type(owner).__qualname__, config, name], sort_keys=True, default=str)
        inductor_configs = {"max_autotune": mode == "max-autotune-no-cudagraphs"}
        compiled = PackagedModule(part, compiled, identity, inductor_configs, read_only)
    compiled.register_forward_pre_hook(_one_graph_per_architecture, with_kwargs=True)  # the package's calls too
    return compiled


def _compile_blocks(transformer, mode: str) -> None:
    """Regional compilation, as diffusers recommends for transformers: each block is compiled rather than the whole
    transformer, and the blocks of one class share one graph (their weights are graph inputs), so an SD3 or Flux.1
    transformer compiles one or two blocks' code, once for every model of its architecture. Just in time: a fresh
    worker traces the blocks again and reads their kernels from the shared compile cache. The CUDA-graph modes compile
    them without recording graphs: one graph runs for every block of a step, which recording is not tested with."""
    mode = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}.get(mode, mode)
    if getattr(transformer, "_repeated_blocks", None):
        transformer.compile_repeated_blocks(fullgraph=True, mode=mode)
    else:  # SD3's transformer declares none (diffusers 0.42); its joint blocks are the ones it repeats
        for block in transformer.transformer_blocks:
            block.compile(fullgraph=True, mode=mode)
    transformer._compiled_blocks = True


def is_compiled(denoiser) -> bool:
    """A UNet wrapped by torch.compile or a package, or a transformer whose blocks are compiled (_compile_blocks)."""
    return hasattr(denoiser, "_orig_mod") or getattr(denoiser, "_compiled_blocks", False)


def _compiled_denoiser(pipeline) -> bool:
    return any(is_compiled(getattr(pipeline, name, None)) for name in DENOISERS)


def _quantize(denoiser, mode: str) -> None:
    """The UNet's or transformer's linear layers with dynamically quantized activations and quantized weights (catalog
    `quantize`)."""
    try:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            Int8DynamicActivationInt8WeightConfig,
            quantize_,
        )
    except ImportError as exc:
        raise ModelLoadError(
            f"`quantize: {mode}` needs torchao, which is not installed: `pip install torchao`, or remove `quantize` "
            "from the catalog entry."
        ) from exc
    config = Int8DynamicActivationInt8WeightConfig() if mode == "int8" else Float8DynamicActivationFloat8WeightConfig()
    try:
        quantize_(denoiser, config)
    except (AssertionError, RuntimeError, ValueError, NotImplementedError) as exc:  # torchao checks the hardware so
        raise ModelLoadError(
            f"`quantize: {mode}` cannot run on {denoiser.device}: {exc} Use `quantize: int8`, or remove `quantize` "
            "from the catalog entry."
        ) from exc


def _one_graph_per_architecture(module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Runs before a compiled UNet's or VAE part's guards, so every model of one architecture shares its graph.

    torch.compile keys its graphs by code, shapes and dtypes, not by module (weights are graph inputs), so the
    UNets of one architecture could share one graph, but schedulers hand them int64 (PNDM, DDIM) or float (Euler)
    timesteps, and each model's batches come in their own sizes: as given, a second model (or a new worker whose
    first batch has another size than the one that filled the compile cache) compiles again. A UNet's timestep goes
    in as float32, which is what its timestep embedding turns it into first (no pixel changes), and the batch
    dimension is dynamic from the first call (one graph for every batch size).
    """
    import torch

    args, kwargs = list(args), dict(kwargs)
    if len(args) > 1 and isinstance(args[1], torch.Tensor):
        args[1] = args[1].to(torch.float32)  # the UNet's timestep (a VAE part takes one argument)
    elif isinstance(kwargs.get("timestep"), torch.Tensor):
        kwargs["timestep"] = kwargs["timestep"].to(torch.float32)
    for value in (args[0] if args else kwargs.get("sample"), kwargs.get("encoder_hidden_states")):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            torch._dynamo.maybe_mark_dynamic(value, 0)
    return tuple(args), kwargs


def compiled_graphs() -> int:
    """Graphs compiled in this process so far: ahead-of-time packages compiled, and graphs torch.compile traced whose
    code did not come from its on-disk cache (0 before anything was compiled, and in a fresh worker whose shared cache
    has them all)."""
    return _packages("compiled") + max(
        0, _dynamo_counter("stats", "unique_graphs") - _dynamo_counter("inductor", "fxgraph_cache_hit")
    )


def graphs_from_cache() -> int:
    """Compiled graphs this process read from the shared cache instead of compiling: packages loaded, and graphs whose
    code torch.compile read back (after tracing them again)."""
    return _packages("loaded") + _dynamo_counter("inductor", "fxgraph_cache_hit")


def _packages(event: str) -> int:
    module = sys.modules.get(f"{__package__}.ahead_of_time")  # imported by the first compiled part, not before
    return int(module.PACKAGES[event]) if module else 0


def _dynamo_counter(group: str, name: str) -> int:
    dynamo = sys.modules.get("torch._dynamo.utils")  # imported by the first compilation, not before
    return int(dynamo.counters[group][name]) if dynamo else 0


def component_identities(spec: ModelSpec, dtype: str) -> dict[str, str]:
    """Component name -> hash of its weight files (and the dtype they load as), for local folders."""
    if spec.source_kind != "path":
        return {}
    identities = {}
    for name in SHAREABLE_COMPONENTS:
        folder = Path(spec.source) / name
        weights = sorted(p for p in folder.glob("*") if p.suffix in WEIGHT_SUFFIXES) if folder.is_dir() else []
        if weights:
            # A quantized UNet or transformer is another module than the same weights unquantized: never shared.
            quantized = f"+{spec.quantize}" if name in DENOISERS and spec.quantize else ""
            digest = hashlib.sha256((dtype + quantized).encode())
            for path in weights:
                digest.update(
                    path.name.encode() + _file_digest(str(path), path.stat().st_size, path.stat().st_mtime_ns)
                )
            identities[name] = digest.hexdigest()
    return identities


def model_hash(spec: ModelSpec) -> str | None:
    """AUTOMATIC1111's short model hash (first 10 hex digits of the checkpoint's sha256); for a diffusers
    folder, of its weight files' hashes in name order. None for hub ids (their files are not ours to read)."""
    source = Path(spec.source)
    if spec.source_kind == "single_file" and source.is_file():
        stat = source.stat()
        return _file_digest(str(source), stat.st_size, stat.st_mtime_ns).hex()[:10]
    if spec.source_kind == "path" and source.is_dir():
        digest = hashlib.sha256()
        for path in sorted(p for p in source.rglob("*") if p.suffix in WEIGHT_SUFFIXES):
            stat = path.stat()
            digest.update(path.relative_to(source).as_posix().encode())
            digest.update(_file_digest(str(path), stat.st_size, stat.st_mtime_ns))
        return digest.hexdigest()[:10]
    return None


@lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> bytes:
    """sha256 of a weight file; cached per (path, size, mtime) since checkpoints are gigabytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").digest()


def _check_source_exists(spec: ModelSpec) -> None:
    where = f"Model {spec.name!r} ({spec.source_kind}: {spec.source})"
    source = Path(spec.source)
    if spec.source_kind == "path":
        if problem := kind_problem(source, "folder"):
            demo = source.parent.resolve() == SHIPPED_MODELS  # data/models/tiny-sd15, built by `make run`
            raise ModelLoadError(
                f"{where}: the path {problem}. "
                + (
                    "The demo models ship in data/models (`git checkout data/models` restores them)."
                    if demo
                    else "Fix `path` in the catalog (a relative path is read from the catalog's folder)."
                )
            )
        if not (source / "model_index.json").is_file():
            raise ModelLoadError(
                f"{where}: not a diffusers folder (no model_index.json). Point `path` at a folder "
                "written by save_pretrained, or use `single_file` for a .safetensors/.ckpt checkpoint."
            )
        _check_model_index(source / "model_index.json", where)
    if spec.source_kind == "single_file" and (problem := kind_problem(source, "file")):
        raise ModelLoadError(f"{where}: the checkpoint file {problem}; fix `single_file` in the catalog.")


def _check_model_index(index: Path, where: str) -> None:
    """diffusers reads `_class_name` first and fails with a bare KeyError without it: say what the file lacks."""
    try:
        document = json.loads(index.read_bytes())
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        detail = f" (line {exc.lineno}, column {exc.colno}: {exc.msg})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ModelLoadError(
            f"{where}: model_index.json is not valid JSON{detail}. The folder is damaged: "
            "re-save the pipeline with save_pretrained, or download it again."
        ) from exc
    if not isinstance(document, dict) or not isinstance(document.get("_class_name"), str):
        raise ModelLoadError(
            f"{where}: model_index.json has no _class_name: the folder is not a diffusers pipeline written by "
            "save_pretrained (a component folder such as unet/, or a hand-made index?). Point `path` at the folder "
            "that save_pretrained wrote, or restore its model_index.json."
        )


def _explain_load_failure(spec: ModelSpec, exc: Exception) -> str:
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    where = f"Model {spec.name!r} ({spec.source_kind}: {spec.source})"
    text = str(exc)
    if spec.source_kind == "hub_id":
        hint = (
            "The hub id is not in the local cache and the hub cannot be reached (or HF_HUB_OFFLINE=1). "
            "Download it where the hub is reachable (`hf download <id>`) and copy the cache, "
            "or point the catalog entry at a local `path`."
        )
    elif spec.source_kind == "single_file" and isinstance(exc, OSError) and not _is_local_dir(spec.config):
        hint = (
            "A single-file checkpoint holds weights only; its diffusers configs come from `config`, "
            + (
                f"and {spec.config!r} is neither a folder next to the catalog nor a hub id in the local cache. "
                if spec.config
                else "which the entry does not set, so diffusers tried the hub. "
            )
            + "Set `config:` to a local diffusers folder of the same architecture (configs are enough)."
        )
    elif spec.source_kind == "single_file" and isinstance(exc, SingleFileComponentError):
        adapter = _adapter_kind(spec.source)
        hint = (
            f"The file holds {adapter}, not a whole model: list it under `{ADAPTER_KEYS[adapter]}:` of an entry whose "
            "`path` is the base it was made for."
            if adapter
            else f"The checkpoint holds no weights for that component, and `config:` ({spec.config}) has none for it "
            "either: set `config:` to a whole diffusers folder of the same architecture, weights included (text "
            "encoders are taken from there, as SD 3/3.5 and Flux.1 files that hold the transformer alone need), or "
            "check that the file is of that architecture."
        )
    elif spec.source_kind == "single_file" and "expected shape" in text:
        hint = (
            f"The checkpoint's weights do not fit the architecture `config:` ({spec.config}) describes: set `config:` "
            "to a diffusers folder of the checkpoint's own architecture (SD 1.x, 2.x, XL, 3/3.5 or Flux.1)."
        )
    elif "AutoPipeline" in text or "can't find a pipeline" in text.lower():
        hint = (
            "Its pipeline type has no image-to-image form: use a Stable Diffusion (1.x, 2.x, XL, 3, 3.5), Flux.1 "
            "or similar checkpoint."
        )
    elif spec.variant and "variant" in text:
        hint = (
            f"The files for variant {spec.variant!r} are missing: remove `variant` from the entry (`variant: null` "
            "where it comes from `defaults:`) or add those files."
        )
    else:
        hint = "Its files are incomplete or corrupt: rebuild or re-download the model."
    first = text.splitlines()[0] if text else type(exc).__name__
    first = first.split(" If you want to instead overwrite")[0]  # diffusers' advice to load random weights instead
    return f"{where} failed to load: {first.rstrip(':. ')}. {hint}"


ADAPTER_KEYS = {"a LoRA": "loras", "textual-inversion embeddings": "embeddings"}  # what a file holds -> its key
EMBEDDING_TENSORS = {"emb_params", "string_to_param", "clip_l", "clip_g"}  # A1111's and SDXL's embedding files


def _adapter_kind(path: str) -> str | None:
    """What a .safetensors file given as a model holds instead (ADAPTER_KEYS), by its tensor names; None if neither
    or unreadable."""
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as handle:
            names = list(handle.keys())
    except Exception:  # noqa: BLE001 - not a safetensors file (.ckpt) or damaged: the loader's message stands
        return None
    if any("lora" in name.lower() for name in names):
        return "a LoRA"
    return "textual-inversion embeddings" if names and set(names) <= EMBEDDING_TENSORS else None


def _is_local_dir(path: str | None) -> bool:
    return bool(path) and Path(path).is_dir()


def _make_scheduler(spec: ModelSpec, shipped):
    """The catalog's scheduler, configured like the one the model shipped with (`shipped`)."""
    import diffusers

    scheduler_class = getattr(diffusers, str(spec.scheduler), None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, diffusers.SchedulerMixin)):
        fits = sorted(c.__name__ for c in getattr(shipped, "compatibles", [])) or [type(shipped).__name__]
        raise ModelLoadError(
            f"Model {spec.name!r}: unknown scheduler {spec.scheduler!r}. Use a diffusers scheduler class name; "
            f"these fit the model: {', '.join(fits)}."
        )
    return scheduler_class.from_config(shipped.config)


@dataclass
class ResidentPipeline:
    spec: ModelSpec
    pipeline: Any
    load_seconds: float
    identities: dict[str, str]  # shareable component name -> weight identity
    base: str = ""  # base_key(spec): the loaded base it runs on, shared by every entry with that key
    tokenizer: Any = None  # a base's own tokenizer as loaded, never changed (entries with embeddings run on copies)


# ModelSpec fields applied per call (or per batch, as LoRA adapters are), not when the pipeline loads: entries that
# differ only in these share one loaded base. Every other field, a new one too, tells bases apart.
PER_CALL_SETTINGS = (
    "name",
    "description",
    "weight",
    "resolution",
    "strength",
    "strengths",
    "num_inference_steps",
    "guidance_scale",
    "negative_prompt",
    "prompt_weighting",
    "loras",
    "embeddings",
    "inpaint",  # the base runs as diffusers' inpaint or ControlNet pipeline per batch (PipelineCache.with_pairs)
    "controlnets",
    "if_unpaired",
)


def base_key(spec: ModelSpec) -> str:
    """What identifies the base pipeline an entry runs on: its source, dtype, scheduler, variant and so on."""
    settings = {key: value for key, value in dataclasses.asdict(spec).items() if key not in PER_CALL_SETTINGS}
    return json.dumps(settings, sort_keys=True, default=str)


class PipelineCache:
    """Pipelines loaded on first use and kept; the least recently used go first.

    Limits: at most `max_models` base pipelines resident, and (if set) their weights within
    `memory_budget_mb`: preloading every catalog model would run a GPU out of memory, so
    only what the current work needs is resident. Components whose weight files
    are byte-identical across models are loaded once and shared.

    Catalog entries on one base (base_key: they differ only in per-call settings and LoRA adapters) share one loaded
    pipeline: `loads` counts base loads, each LoRA file is loaded into the base once (`adapter_loads`), and `get`
    hands the pipeline back with exactly the entry's adapters active at its weights (none for an entry without), and
    with exactly the entry's textual-inversion tokens (`_activate_embeddings`; `embedding_loads` counts switches).
    A base is evicted with all the entries on it, so it goes only when no resident entry uses it.
    """

    def __init__(
        self,
        device: str | None = None,
        dtype: str | None = None,
        max_models: int = 2,
        memory_budget_mb: float | None = None,
        log: Callable[[str], None] = lambda message: None,
        loader: Callable[..., Any] = load_pipeline,
        speedups: Speedups = Speedups(),
    ):
        if max_models < 1:
            raise ValueError(f"max_models must be at least 1, got {max_models}.")
        self.device = pick_device(device)
        self.dtype = dtype
        self.max_models = max_models
        self.budget_bytes = int(memory_budget_mb * 2**20) if memory_budget_mb else None
        self.speedups = speedups
        self.loads = 0  # base pipelines loaded
        self.adapter_loads = 0  # LoRA files loaded into a resident base
        self.embedding_loads = 0  # times an entry's textual-inversion tokens were loaded into its base's text encoder
        self.evictions = 0
        self.controlnet_loads = 0  # ControlNet folders loaded: once each, shared by every entry that names it
        self._controlnets: dict[str, Any] = {}  # folder -> its loaded ControlNetModel
        self.log = log  # rebound per run when a long-lived worker keeps the cache
        self._loader = loader
        self._resident: OrderedDict[str, ResidentPipeline] = OrderedDict()  # entry name -> entry, LRU first
        self._bases: OrderedDict[str, ResidentPipeline] = OrderedDict()  # base_key -> the base as loaded, LRU first

    @property
    def resident(self) -> list[str]:
        """Names of resident models (catalog entries), least recently used first."""
        return list(self._resident)

    @property
    def resident_bytes(self) -> int:
        """Weight bytes of the resident pipelines (adapters included), each shared component counted once."""
        modules = {id(m): m for r in self._bases.values() for m in _torch_modules(r.pipeline)}
        modules |= {id(m): m for m in self._controlnets.values()}
        return sum(_module_bytes(m) for m in modules.values())

    @property
    def shared_components(self) -> int:
        """How many component loads sharing has saved among the resident pipelines."""
        seen = [i for r in self._bases.values() for i in r.identities.values()]
        return len(seen) - len(set(seen))

    def get(self, spec: ModelSpec) -> tuple[Any, float]:
        """(pipeline with the entry's adapters active, seconds spent loading now: 0.0 when nothing was loaded)."""
        key = base_key(spec)
        entry = self._resident.get(spec.name)
        if entry is not None and entry.base != key:
            self.evict(spec.name)  # same name, changed catalog entry: its old base goes unless another entry uses it
        base = self._bases.get(key)
        if base is not None and spec.loras and _compiled_denoiser(base.pipeline):
            self.log(
                f"Model {spec.name!r} has LoRA adapters, which its base's compiled UNet or transformer cannot switch: "
                "loading the base again, not compiled"
            )
            self._evict_base(key)
            base = None
        seconds = 0.0
        if base is None:
            self._make_room(estimate_bytes(spec))
            base = self._load_base(spec, key)
            seconds = base.load_seconds
        self._bases.move_to_end(key)
        if problem := settings_problem(spec, family_of_pipeline(base.pipeline)):
            raise ModelLoadError(problem)  # load_pipeline checks the entry that loads a base; this, each on it
        self._resident[spec.name] = ResidentPipeline(spec, base.pipeline, base.load_seconds, base.identities, key)
        self._resident.move_to_end(spec.name)
        if entry is not None and entry.base == key and entry.spec.loras != spec.loras:
            self._prune_adapters(base.pipeline)  # an adapter file the entry no longer names
        try:
            seconds += self._activate(spec, base.pipeline)
            seconds += self._activate_embeddings(spec, base)
        except ModelLoadError:
            del self._resident[spec.name]  # the base stays for the other entries; the LRU evicts it if unused
            raise
        self._make_room(0, keep=key)
        return base.pipeline, seconds

    def _load_base(self, spec: ModelSpec, key: str) -> ResidentPipeline:
        started = time.perf_counter()
        dtype_name = str(pick_dtype(spec.dtype, self.device, self.dtype))
        identities = component_identities(spec, dtype_name)
        shared = self._shared_modules(identities)
        speedups = self.speedups
        if speedups.compile_unet:
            # Adapters need the eager UNet or transformer (compiling fuses the attention projections they attach to,
            # and switching them would change compiled code), and a compiled base must not take a UNet or transformer
            # that carries adapters: only ones of the same kind are shared.
            shared = {n: m for n, m in shared.items() if n not in DENOISERS or is_compiled(m) != bool(spec.loras)}
            if spec.loras:
                speedups = dataclasses.replace(speedups, compile_unet=False)
                self.log(
                    f"Not compiling the UNet or transformer of model {spec.name!r}: its LoRA adapters are switched "
                    "per batch"
                )
        pipeline = self._loader(spec, self.device, self.dtype, shared=shared, speedups=speedups)
        seconds = time.perf_counter() - started
        self.loads += 1
        base = ResidentPipeline(spec, pipeline, seconds, identities, key, getattr(pipeline, "tokenizer", None))
        self._bases[key] = base
        reused = f", reusing {sorted(shared)}" if shared else ""
        resident = [*self.resident, spec.name]
        self.log(f"Loaded model {spec.name!r} on {self.device} in {seconds:.2f} s{reused} (resident: {resident})")
        return base

    def _shared_modules(self, identities: dict[str, str]) -> dict[str, Any]:
        shared = {}
        for name, identity in identities.items():
            for entry in self._bases.values():
                if entry.identities.get(name) == identity:
                    shared[name] = getattr(entry.pipeline, name)
                    break
        return shared

    def _activate(self, spec: ModelSpec, pipeline) -> float:
        """Make exactly the entry's adapters active at its weights (loading those the base lacks), or none for an
        entry without; the seconds spent loading adapters. Adapters live in the UNet and text encoder modules,
        which other bases may share, so the state is set on every call rather than remembered."""
        present = adapter_names(pipeline)
        if not spec.loras:
            if present:
                pipeline.disable_lora()  # set_adapters([]) fails in diffusers 0.42 (KeyError on the component)
            return 0.0
        if not hasattr(pipeline, "load_lora_weights"):
            raise ModelLoadError(
                f"Model {spec.name!r}: its pipeline ({type(pipeline).__name__}) takes no LoRA adapters; "
                "remove `loras` from the entry, or use a base model whose pipeline loads them."
            )
        started, loaded, names = time.perf_counter(), False, []
        for lora in spec.loras:
            name = self._adapter_of(spec, lora)
            if name not in present:
                self._load_adapter(spec, pipeline, lora, name)
                present.add(name)
                loaded = True
            names.append(name)
        # disable_lora (for an entry without adapters) leaves the layers off until enable_lora turns them on again.
        pipeline.enable_lora()
        pipeline.set_adapters(names, adapter_weights=[lora.weight for lora in spec.loras])
        return time.perf_counter() - started if loaded else 0.0

    @staticmethod
    def _adapter_of(spec: ModelSpec, lora: LoraSpec) -> str:
        if problem := kind_problem(lora.path, "file"):
            raise ModelLoadError(
                f"Model {spec.name!r}: LoRA file {lora.path} {problem}; restore it, or fix `loras` in the catalog."
            )
        return adapter_name(lora.path)

    def _load_adapter(self, spec: ModelSpec, pipeline, lora: LoraSpec, name: str) -> None:
        started = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # peft's notice that the UNet will hold several adapters: that is the design here.
                warnings.filterwarnings("ignore", "Already found a `peft_config` attribute", UserWarning)
                pipeline.load_lora_weights(lora.path, adapter_name=name)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            if name in adapter_names(pipeline):
                pipeline.delete_adapters(name)  # half loaded: the base stays clean for the other entries
            family = family_of_pipeline(pipeline).label
            raise ModelLoadError(_explain_lora_failure(spec, lora, exc, name, family)) from exc
        if name not in adapter_names(pipeline):
            raise ModelLoadError(
                f"Model {spec.name!r}: LoRA file {lora.path} holds no weights for this base's layers: it was made "
                "for another kind of model (SD 1.x, SD 2.x, SDXL, ...); use a LoRA made for this base."
            )
        self.adapter_loads += 1
        parts = sorted(part for part, names in pipeline.get_list_adapters().items() if name in names)
        seconds = time.perf_counter() - started
        self.log(f"Loaded LoRA {lora.name!r} for model {spec.name!r} into {'+'.join(parts)} in {seconds:.2f} s")

    def _activate_embeddings(self, spec: ModelSpec, base: ResidentPipeline) -> float:
        """Give the base exactly the entry's textual-inversion tokens (none for an entry without); the seconds spent
        loading them.

        Switched per entry, not loaded once and kept: prompts are drawn from one list for every entry, so a prompt
        that names a token also reaches entries without its embedding, and with the token kept in a shared base such
        an image would depend on which entries ran before it. diffusers' load_textual_inversion adds the tokens to a
        tokenizer and writes their vectors into text-encoder rows past that tokenizer's vocabulary (resizing the
        embedding matrix); unload_textual_inversion renumbers what stays. Neither touches the base's own vocabulary
        rows, so the switch is clean without unloading: an entry without embeddings runs with the base's own
        tokenizer, unchanged since loading (it cannot reach the rows past its vocabulary); an entry with embeddings,
        with a fresh copy of it into which its tokens are loaded. So two entries on one base may even map one token
        to different files. A text encoder can be shared by several bases (byte-identical weights), so the rows it
        holds past the vocabulary are marked with the tokenizer they serve, and rewritten unless the same tokens from
        the same files were loaded last for this base (then entries with and without them alternate at no cost)."""
        pipeline = base.pipeline
        if not spec.embeddings:
            if base.tokenizer is not None and pipeline.tokenizer is not base.tokenizer:
                pipeline.tokenizer = base.tokenizer
            return 0.0
        encoder = getattr(pipeline, "text_encoder", None)
        if not hasattr(pipeline, "load_textual_inversion") or base.tokenizer is None or encoder is None:
            raise ModelLoadError(
                f"Model {spec.name!r}: its pipeline ({type(pipeline).__name__}) takes no textual-inversion "
                "embeddings; remove `embeddings` from the entry, or use an SD 1.x/2.x base."
            )
        wanted = tuple((embedding.token, self._embedding_of(spec, embedding)) for embedding in spec.embeddings)
        source, made, loaded = getattr(encoder, EMBEDDINGS_MARK, None) or (None, None, None)
        if source is base.tokenizer and loaded == wanted:
            pipeline.tokenizer = made  # these tokens, loaded last into this encoder from this base's tokenizer
            return 0.0
        started = time.perf_counter()
        setattr(encoder, EMBEDDINGS_MARK, None)  # rows past the vocabulary are rewritten from here on
        tokenizer = copy.deepcopy(base.tokenizer)
        for embedding in spec.embeddings:
            try:
                pipeline.load_textual_inversion(
                    embedding.path, token=embedding.token, tokenizer=tokenizer, text_encoder=encoder
                )
            except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
                pipeline.tokenizer = base.tokenizer  # the base as loaded, for the other entries
                raise ModelLoadError(_explain_embedding_failure(spec, embedding, exc)) from exc
        pipeline.tokenizer = tokenizer
        setattr(encoder, EMBEDDINGS_MARK, (base.tokenizer, tokenizer, wanted))
        self.embedding_loads += 1
        seconds = time.perf_counter() - started
        tokens = ", ".join(embedding.token for embedding in spec.embeddings)
        self.log(f"Loaded embeddings {tokens} for model {spec.name!r} in {seconds:.2f} s")
        return seconds

    @staticmethod
    def _embedding_of(spec: ModelSpec, embedding: EmbeddingSpec) -> str:
        """The embedding file's content identity (a replaced file loads again), or a named error if it is gone."""
        if problem := kind_problem(embedding.path, "file"):
            raise ModelLoadError(
                f"Model {spec.name!r}: embedding file {embedding.path} {problem}; restore it, or fix `embeddings` in "
                "the catalog."
            )
        stat = Path(embedding.path).stat()
        return _file_digest(embedding.path, stat.st_size, stat.st_mtime_ns).hex()

    def _prune_adapters(self, pipeline) -> None:
        """Delete the base's adapters no resident entry names any more (a LoRA removed or its file replaced)."""
        try:
            in_use = {adapter_name(lora.path) for entry in self._resident.values() for lora in entry.spec.loras}
        except OSError:
            return  # a file gone: keep everything rather than guess
        unused = sorted(adapter_names(pipeline) - in_use)
        if unused:
            pipeline.delete_adapters(unused)

    def with_pairs(self, spec: ModelSpec, pipeline, inpaint: bool, controlnets: tuple[ControlNetSpec, ...]):
        """The entry's pipeline for images with a mask and/or control images: diffusers' own inpaint or ControlNet
        pipeline (AutoPipelineFor*.from_pipe) over the loaded base's modules, so nothing is loaded twice and its
        adapters apply; each ControlNet folder is loaded once and shared by every entry naming it."""
        if not inpaint and not controlnets:
            return pipeline
        import diffusers

        models = [self._controlnet(spec, controlnet, pipeline.dtype) for controlnet in controlnets]
        for controlnet, model in zip(controlnets, models, strict=True):
            if problem := _controlnet_misfit(spec, pipeline, controlnet, model):
                raise ModelLoadError(problem)
        extra = (
            {"controlnet": models[0] if len(models) == 1 else diffusers.MultiControlNetModel(models)} if models else {}
        )
        auto = diffusers.AutoPipelineForInpainting if inpaint else diffusers.AutoPipelineForImage2Image
        try:
            paired = auto.from_pipe(pipeline, **extra)
        except (ValueError, KeyError) as exc:
            kind = "inpainting" + (" with ControlNets" if models else "") if inpaint else "ControlNet img2img"
            raise ModelLoadError(
                f"Model {spec.name!r} ({type(pipeline).__name__}): diffusers has no {kind} pipeline for it ({exc}); "
                "remove `inpaint`/`controlnets` from the entry, or use a Stable Diffusion 1.x/2.x or SDXL model."
            ) from exc
        paired.set_progress_bar_config(disable=True)
        return paired

    def _controlnet(self, spec: ModelSpec, controlnet: ControlNetSpec, dtype):
        if controlnet.path not in self._controlnets:
            import diffusers

            started = time.perf_counter()
            try:
                model = diffusers.ControlNetModel.from_pretrained(controlnet.path, torch_dtype=dtype).to(self.device)
            except (OSError, ValueError, KeyError, TypeError, RuntimeError, NotImplementedError) as exc:
                raise ModelLoadError(
                    f"Model {spec.name!r}: ControlNet {controlnet.path} could not be loaded ({exc}); point its `path` "
                    "at a diffusers ControlNet folder (config.json and diffusion_pytorch_model.safetensors)."
                ) from exc
            self._controlnets[controlnet.path] = model
            self.controlnet_loads += 1
            self.log(f"Loaded ControlNet {controlnet.name!r} in {time.perf_counter() - started:.2f} s")
        return self._controlnets[controlnet.path]

    def describe(self, name: str) -> dict[str, Any]:
        """Scheduler, dtype, device, model hash, LoRA adapters and embeddings of a resident entry, for result
        records."""
        entry = self._resident[name]
        pipeline = entry.pipeline
        return {
            "scheduler": type(pipeline.scheduler).__name__,
            "karras_sigmas": bool(getattr(pipeline.scheduler.config, "use_karras_sigmas", False)),
            "dtype": str(pipeline.dtype).replace("torch.", ""),
            "device": self.device,
            "safety_checker": "run" if getattr(pipeline, "safety_checker", None) is not None else "not run",
            "model_hash": model_hash(entry.spec),
            "loras": [
                {"name": lora.name, "weight": lora.weight, "hash": lora_hash(lora.path)} for lora in entry.spec.loras
            ],
            "embeddings": [
                {"token": embedding.token, "name": embedding.name, "hash": embedding_hash(embedding.path)}
                for embedding in entry.spec.embeddings
            ],
        }

    def evict(self, name: str) -> None:
        """Drop a model (catalog entry); its base goes with it unless another resident entry runs on it."""
        entry = self._resident.pop(name, None)
        if entry is None:
            return
        if any(other.base == entry.base for other in self._resident.values()):
            self._prune_adapters(entry.pipeline)
            return
        self._resident[name] = entry  # evicted with its base, and logged by name
        self._evict_base(entry.base)

    def _evict_base(self, key: str) -> None:
        """Evict a base pipeline and every entry on it."""
        base = self._bases.pop(key, None)
        if base is None:
            return
        names = [name for name, entry in self._resident.items() if entry.base == key] or [base.spec.name]
        for name in names:
            self._resident.pop(name, None)
        self.evictions += 1
        del base
        free_memory()
        self.log(f"Evicted model {', '.join(map(repr, names))} (resident: {self.resident})")

    def clear(self) -> None:
        for key in list(self._bases):
            self._evict_base(key)
        self._controlnets.clear()

    def _make_room(self, incoming_bytes: int, keep: str | None = None) -> None:
        """Evict least recently used bases until one more (`keep` None) or the ones resident fit the limits."""
        incoming = 0 if keep else 1
        while True:
            candidates = [key for key in self._bases if key != keep]
            if not candidates:
                return
            over_count = len(self._bases) + incoming > self.max_models
            over_budget = self.budget_bytes is not None and self.resident_bytes + incoming_bytes > self.budget_bytes
            if not (over_count or over_budget):
                return
            self._evict_base(candidates[0])


# The text encoder's mark: (the base tokenizer copied, the copy that its rows past that vocabulary serve, the tokens
# and file identities loaded into them).
EMBEDDINGS_MARK = "_random_diffusion_embeddings"


def _controlnet_misfit(spec: ModelSpec, pipeline, controlnet: ControlNetSpec, model) -> str | None:
    """Why a ControlNet cannot steer the entry's model (None if it can): it adds to a UNet of its own block widths
    and text width, which a ControlNet made for another family (SD 1.5 against SD 2.x, SDXL) does not have."""
    unet = getattr(pipeline, "unet", None)
    if unet is None:
        return (
            f"Model {spec.name!r} ({type(pipeline).__name__}) has no UNet for ControlNet {controlnet.name!r} to steer: "
            "ControlNets run here with SD 1.x/2.x and SDXL models; remove `controlnets` from the entry."
        )

    theirs, ours = model.config, unet.config
    if (theirs.cross_attention_dim, list(theirs.block_out_channels)) != (
        ours.cross_attention_dim,
        list(ours.block_out_channels),
    ):
        return (
            f"ControlNet {controlnet.name!r} was made for another kind of model (text width "
            f"{theirs.cross_attention_dim}, blocks {list(theirs.block_out_channels)}) than {spec.name!r} (text width "
            f"{ours.cross_attention_dim}, blocks {list(ours.block_out_channels)}): give the entry a ControlNet of its "
            "model's family (an SD 1.5 ControlNet for SD 1.x models, an SDXL one for SDXL)."
        )
    return None


def adapter_names(pipeline) -> set[str]:
    """Names of the LoRA adapters loaded into the pipeline's modules (none without peft layers)."""
    return {name for module in _torch_modules(pipeline) for name in (getattr(module, "peft_config", None) or {})}


def adapter_name(path: str) -> str:
    """The adapter's name inside a pipeline: from its file's content, so entries naming one file share it, and a
    replaced file loads as a new adapter. (Long and unique: diffusers matches adapter names as substrings of
    parameter names when it reports missing keys.)"""
    stat = Path(path).stat()
    return "lora_" + _file_digest(str(path), stat.st_size, stat.st_mtime_ns).hex()[:16]


def lora_hash(path: str) -> str | None:
    """AUTOMATIC1111's `Lora hashes` value for a LoRA file, None if it cannot be read.

    As A1111 computes it (extensions-builtin/Lora/network.py, NetworkOnDisk: `shorthash = hash[0:12]`, the hash
    being the file's `sshs_model_hash` metadata or else modules/hashes.py `sha256(..., use_addnet_hash=True)` for
    .safetensors): the first 12 hex digits of the sha256 of the file's tensor bytes after its header (kohya-ss's
    "addnet" hash, which editing the metadata leaves alone), not of the whole file as the model hash is."""
    try:
        stat = Path(path).stat()
        return _addnet_hash(str(path), stat.st_size, stat.st_mtime_ns)[:12]
    except (OSError, ValueError):
        return None


@lru_cache(maxsize=256)
def _addnet_hash(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as handle:
        header = handle.read(int.from_bytes(handle.read(8), "little"))
        try:
            recorded = json.loads(header).get("__metadata__", {}).get("sshs_model_hash")
        except (ValueError, AttributeError):
            recorded = None
        if isinstance(recorded, str) and recorded:
            return recorded
        digest = hashlib.sha256()
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def embedding_hash(path: str) -> str | None:
    """AUTOMATIC1111's `TI hashes` value for an embedding file, None if it cannot be read: the first 12 hex digits
    of the sha256 of the whole file (A1111 modules/textual_inversion/textual_inversion.py: `embedding.set_hash(
    hashes.sha256(path, "textual_inversion/" + name))`, and `Embedding.set_hash`: `shorthash = hash[0:12]`;
    modules/hashes.py hashes the file's bytes, with no addnet variant for embeddings)."""
    try:
        stat = Path(path).stat()
        return _file_digest(str(path), stat.st_size, stat.st_mtime_ns).hex()[:12]
    except OSError:
        return None


def _explain_embedding_failure(spec: ModelSpec, embedding: EmbeddingSpec, exc: Exception) -> str:
    text = str(exc)
    if "already in tokenizer vocabulary" in text:
        hint = (
            f"The token {embedding.token!r} is already a token of this base's tokenizer: choose one that is not, "
            'such as "<my-style>".'
        )
    elif "incorrect shape" in text:
        hint = (
            "Its vectors do not fit this base's text encoder: it was made for another kind of model (SD 1.x, SD 2.x)."
        )
    else:
        hint = "The file is not an embedding diffusers can read (A1111 or diffusers format), or it is damaged."
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if "incorrect shape" in text:  # diffusers' own line names the widths as unfilled `{...}` placeholders
        first = "its vectors are not as wide as the text encoder's"
    return f"Model {spec.name!r}: embedding file {embedding.path} failed to load: {first[:300].rstrip(':. ')}. {hint}"


# peft's message for a LoRA whose layers do not fit the base: its first mismatched layer and both shapes.
SIZE_MISMATCH = re.compile(
    r"size mismatch for ([\w.]+): copying a param with shape torch\.Size\(\[([\d, ]+)\]\) from checkpoint, "
    r"the shape in current model is torch\.Size\(\[([\d, ]+)\]\)"
)


def _explain_lora_failure(spec: ModelSpec, lora: LoraSpec, exc: Exception, adapter: str, family: str) -> str:
    """Why the adapter did not load, with the fix; `family` is the base's (families.Family.label)."""
    text = str(exc)
    if mismatch := SIZE_MISMATCH.search(text):
        layer = mismatch[1].replace(f".{adapter}", "")
        theirs, ours = ("x".join(shape.replace(" ", "").split(",")) for shape in (mismatch[2], mismatch[3]))
        return (
            f"Model {spec.name!r}: LoRA file {lora.path} does not fit this base ({family}): it was made for another "
            f"kind of model ({layer} is {theirs} in the file and {ours} in the base). Use a LoRA made for {family} "
            "models, or put this one on an entry of the model it was made for."
        )
    if "PEFT backend is required" in text:
        hint = "diffusers loads LoRAs through the peft package: install it (`pip install peft`)."
    elif "Target modules" in text:
        hint = f"It was made for another kind of model than this base ({family}): use a LoRA made for this base."
    else:
        hint = "The file is not a LoRA diffusers can read, or it is damaged: download it again."
    first = text.strip().splitlines()[0].rstrip(":. ") if text.strip() else type(exc).__name__
    return f"Model {spec.name!r}: LoRA file {lora.path} failed to load: {first[:300]}. {hint}"


def free_memory() -> None:
    """Drop unreachable tensors and hand cached CUDA blocks back, so a retry has room."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
