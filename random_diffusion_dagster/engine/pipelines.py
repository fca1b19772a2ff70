"""Loading diffusion pipelines and keeping the recently used ones resident under a budget."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .catalog import ModelSpec
from .local_files import kind_problem
from .quiet import quiet_libraries

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt")
# Components that may be shared between pipelines when their weights are byte-identical
# (SD 1.4 and 1.5 ship the same VAE and text encoder, for example).
SHAREABLE_COMPONENTS = ("vae", "text_encoder", "text_encoder_2", "unet", "transformer")


@dataclass(frozen=True)
class Speedups:
    """What the engine applies to each loaded pipeline; defaults are safe everywhere.

    channels_last: NHWC memory layout for the UNet's convolutions (CUDA only).
    vae_slicing: decode a batch one image at a time, so big batches fit.
    compile_unet: fuse the attention QKV projections and torch.compile the UNet; about a
        minute of compilation per model and batch shape, worth it only for long runs.
    compile_vae: torch.compile the VAE encoder and decoder (channels_last on CUDA); a VAE
        shared by several models compiles once.
    """

    channels_last: bool = True
    vae_slicing: bool = True
    compile_unet: bool = False
    compile_vae: bool = False


class ModelLoadError(RuntimeError):
    """A catalog model could not be loaded; the message names the model, its source and the fix."""


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
    dtype = pick_dtype(spec.dtype, device, dtype_override)
    skip_checker = {} if spec.safety_checker else _without_safety_checker(spec)
    try:
        if spec.source_kind == "single_file":
            pipeline = diffusers.StableDiffusionImg2ImgPipeline.from_single_file(
                spec.source, config=spec.config, dtype=dtype, **skip_checker
            )
        else:
            pipeline = diffusers.AutoPipelineForImage2Image.from_pretrained(
                spec.source, dtype=dtype, variant=spec.variant, **skip_checker, **(shared or {})
            )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelLoadError(_explain_load_failure(spec, exc)) from exc
    if spec.scheduler:
        pipeline.scheduler = _make_scheduler(spec, pipeline.scheduler)
    pipeline.set_progress_bar_config(disable=True)
    return apply_speedups(pipeline.to(device), device, speedups)


def _without_safety_checker(spec: ModelSpec) -> dict[str, Any]:
    """Loader arguments that leave the checker out; `requires_safety_checker=False` says it is on purpose
    (the catalog decides), which spares every load diffusers' licence notice. Only SD pipelines take it."""
    arguments: dict[str, Any] = {"safety_checker": None, "feature_extractor": None}
    index = Path(spec.source) / "model_index.json"
    if spec.source_kind == "single_file" or (index.is_file() and '"safety_checker"' in index.read_text()):
        arguments["requires_safety_checker"] = False
    return arguments


def apply_speedups(pipeline, device: str, speedups: Speedups):
    import torch

    unet = getattr(pipeline, "unet", None)
    if speedups.channels_last and device.startswith("cuda") and unet is not None:
        unet.to(memory_format=torch.channels_last)
    if speedups.vae_slicing and hasattr(pipeline, "vae"):
        pipeline.vae.enable_slicing()
    if speedups.compile_unet and unet is not None and not hasattr(unet, "_orig_mod"):
        if hasattr(pipeline, "fuse_qkv_projections"):
            pipeline.fuse_qkv_projections()
        import torch._inductor.config as inductor_config

        inductor_config.conv_1x1_as_mm = True  # 1x1 convolutions as matrix products
        pipeline.unet = torch.compile(pipeline.unet, fullgraph=True)
    vae = getattr(pipeline, "vae", None)
    if speedups.compile_vae and vae is not None:
        if speedups.channels_last and device.startswith("cuda"):
            vae.to(memory_format=torch.channels_last)
        for part in (vae.encoder, vae.decoder):
            if getattr(part, "_compiled_call_impl", None) is None:  # a shared VAE is compiled already
                part.compile(fullgraph=True)
    return pipeline


def compiled_graphs() -> int:
    """Graphs torch.compile has made in this process so far (0 before anything was compiled)."""
    dynamo = sys.modules.get("torch._dynamo.utils")  # imported by the first compilation, not before
    return int(dynamo.counters["stats"]["unique_graphs"]) if dynamo else 0


def component_identities(spec: ModelSpec, dtype: str) -> dict[str, str]:
    """Component name -> hash of its weight files (and the dtype they load as), for local folders."""
    if spec.source_kind != "path":
        return {}
    identities = {}
    for name in SHAREABLE_COMPONENTS:
        folder = Path(spec.source) / name
        weights = sorted(p for p in folder.glob("*") if p.suffix in WEIGHT_SUFFIXES) if folder.is_dir() else []
        if weights:
            digest = hashlib.sha256(dtype.encode())
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
            demo = source.parent.name == "models" and source.name.startswith("tiny-sd")  # data/models/tiny-sd15
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
    elif "AutoPipeline" in text or "can't find a pipeline" in text.lower():
        hint = (
            "Its pipeline type has no image-to-image form: use a Stable Diffusion (1.x, 2.x, XL) or similar checkpoint."
        )
    elif spec.variant and "variant" in text:
        hint = f"The files for variant {spec.variant!r} are missing: remove `variant` or add those files."
    else:
        hint = "Its files are incomplete or corrupt: rebuild or re-download the model."
    return f"{where} failed to load: {text.splitlines()[0] if text else type(exc).__name__}. {hint}"


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


class PipelineCache:
    """Pipelines loaded on first use and kept; the least recently used go first.

    Limits: at most `max_models` resident, and (if set) their weights within
    `memory_budget_mb`: preloading every catalog model would run a GPU out of memory, so
    only what the current work needs is resident. Components whose weight files
    are byte-identical across models are loaded once and shared.
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
        self.loads = 0
        self.evictions = 0
        self.log = log  # rebound per run when a long-lived worker keeps the cache
        self._loader = loader
        self._resident: OrderedDict[str, ResidentPipeline] = OrderedDict()

    @property
    def resident(self) -> list[str]:
        """Names of resident models, least recently used first."""
        return list(self._resident)

    @property
    def resident_bytes(self) -> int:
        """Weight bytes of the resident pipelines, each shared component counted once."""
        modules = {id(m): m for r in self._resident.values() for m in _torch_modules(r.pipeline)}
        return sum(_module_bytes(m) for m in modules.values())

    @property
    def shared_components(self) -> int:
        """How many component loads sharing has saved among the resident pipelines."""
        seen = [i for r in self._resident.values() for i in r.identities.values()]
        return len(seen) - len(set(seen))

    def get(self, spec: ModelSpec) -> tuple[Any, float]:
        """(pipeline, seconds spent loading it now: 0.0 when it was already resident)."""
        entry = self._resident.get(spec.name)
        if entry is not None and _same_pipeline(entry.spec, spec):
            self._resident.move_to_end(spec.name)
            return entry.pipeline, 0.0
        if entry is not None:
            self.evict(spec.name)  # same name, changed catalog entry
        self._make_room(estimate_bytes(spec))
        started = time.perf_counter()
        dtype_name = str(pick_dtype(spec.dtype, self.device, self.dtype))
        identities = component_identities(spec, dtype_name)
        shared = self._shared_modules(identities)
        pipeline = self._loader(spec, self.device, self.dtype, shared=shared, speedups=self.speedups)
        seconds = time.perf_counter() - started
        self.loads += 1
        self._resident[spec.name] = ResidentPipeline(spec, pipeline, seconds, identities)
        reused = f", reusing {sorted(shared)}" if shared else ""
        self.log(f"Loaded model {spec.name!r} on {self.device} in {seconds:.2f} s{reused} (resident: {self.resident})")
        self._make_room(0, keep=spec.name)
        return pipeline, seconds

    def _shared_modules(self, identities: dict[str, str]) -> dict[str, Any]:
        shared = {}
        for name, identity in identities.items():
            for entry in self._resident.values():
                if entry.identities.get(name) == identity:
                    shared[name] = getattr(entry.pipeline, name)
                    break
        return shared

    def describe(self, name: str) -> dict[str, Any]:
        """Scheduler, dtype, device and model hash of a resident pipeline, for result records."""
        entry = self._resident[name]
        pipeline = entry.pipeline
        return {
            "scheduler": type(pipeline.scheduler).__name__,
            "karras_sigmas": bool(getattr(pipeline.scheduler.config, "use_karras_sigmas", False)),
            "dtype": str(pipeline.dtype).replace("torch.", ""),
            "device": self.device,
            "safety_checker": "run" if getattr(pipeline, "safety_checker", None) is not None else "not run",
            "model_hash": model_hash(entry.spec),
        }

    def evict(self, name: str) -> None:
        entry = self._resident.pop(name, None)
        if entry is None:
            return
        self.evictions += 1
        del entry
        free_memory()
        self.log(f"Evicted model {name!r} (resident: {self.resident})")

    def clear(self) -> None:
        for name in list(self._resident):
            self.evict(name)

    def _make_room(self, incoming_bytes: int, keep: str | None = None) -> None:
        incoming = 0 if keep else 1
        while True:
            candidates = [n for n in self._resident if n != keep]
            if not candidates:
                return
            over_count = len(self._resident) + incoming > self.max_models
            over_budget = self.budget_bytes is not None and self.resident_bytes + incoming_bytes > self.budget_bytes
            if not (over_count or over_budget):
                return
            self.evict(candidates[0])


def _same_pipeline(resident: ModelSpec, wanted: ModelSpec) -> bool:
    """Whether a resident pipeline serves `wanted`: strength and steps are call arguments, not part of the load,
    so a comparison over them keeps one load per model."""
    return (
        dataclasses.replace(wanted, strength=resident.strength, num_inference_steps=resident.num_inference_steps)
        == resident
    )


def free_memory() -> None:
    """Drop unreachable tensors and hand cached CUDA blocks back, so a retry has room."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
