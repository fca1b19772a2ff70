"""Dagster resources: where the data lives, and the engine that holds loaded pipelines."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field, PrivateAttr, field_validator

from .. import settings
from ..engine.catalog import DTYPES, ModelSpec, catalog_variants, load_catalog
from ..engine.dataset import require_dataset_folder
from ..engine.granularity import TOP_FOLDER, Granularity
from ..engine.images import FolderScan, SourceFile, is_image_file, scan_images, scan_one_folder
from ..engine.output_location import require_separate_folders, require_writable_folder
from ..engine.pairs import PairFolders, require_pairs_apart
from ..engine.plan import ImageTask, Planner
from ..engine.prompts import PromptListError, load_numbered_prompts, load_prompts
from ..engine.results import FAILURES_DIR
from .step_io_manager import SharedStepStorage

if TYPE_CHECKING:  # the runner imports torch-adjacent code; keep it out of definition loading
    from ..engine.pipelines import PipelineCache, Speedups
    from ..engine.runner import ImageResult, RunSummary


class DatasetResource(dg.ConfigurableResource):
    """The folders and files a user edits, each with a default and an environment variable."""

    images_dir: str = Field(
        default_factory=settings.images_dir,
        description="Folder of source images (RANDOM_DIFFUSION_IMAGES_DIR).",
    )
    output_dir: str = Field(
        default_factory=settings.output_dir,
        description="Folder or fsspec URL (s3://bucket/outputs) the diffused PNGs and the report go to "
        "(RANDOM_DIFFUSION_OUTPUT_DIR).",
    )
    prompts_file: str = Field(
        default_factory=settings.prompts_file,
        description="One prompt per line (RANDOM_DIFFUSION_PROMPTS_FILE).",
    )
    models_file: str = Field(
        default_factory=settings.models_file,
        description="The model catalog (RANDOM_DIFFUSION_MODELS_FILE).",
    )
    wildcards_dir: str = Field(
        default_factory=settings.wildcards_dir,
        description="Wildcard files for `__name__` in prompt templates, one value per line "
        "(RANDOM_DIFFUSION_WILDCARDS_DIR).",
    )
    masks_dir: str = Field(
        default_factory=settings.masks_dir,
        description="Inpainting masks, each at its source's path (`cat/001.png` for `cat/001.jpg`); a "
        "`<stem>.mask.png` beside the source also counts (RANDOM_DIFFUSION_MASKS_DIR).",
    )
    controls_dir: str = Field(
        default_factory=settings.controls_dir,
        description="ControlNet control images: a folder per control type, each image at its source's path "
        "(`depth/cat/001.png`) (RANDOM_DIFFUSION_CONTROLS_DIR).",
    )
    seed: int = Field(
        default_factory=settings.run_seed,
        ge=-settings.MAX_SEED,
        le=settings.MAX_SEED,
        description="Run seed: together with each image's content it decides prompt, model and "
        "diffusion seed. Change it to re-roll every image (RANDOM_DIFFUSION_SEED).",
    )

    dataset_dir: str = Field(
        default_factory=settings.dataset_dir,
        description="Folder augmented_dataset writes the results to as a Hugging Face ImageFolder dataset "
        "(RANDOM_DIFFUSION_DATASET_DIR).",
    )
    recursive: bool = Field(
        default_factory=settings.recursive_scan,
        description="Scan the images folder's subfolders too; a file's first folder is its `{label}` "
        "(RANDOM_DIFFUSION_RECURSIVE, default on).",
    )
    variants: int | None = Field(
        default_factory=settings.variants,
        ge=1,
        le=settings.MAX_VARIANTS,
        description="Results per image, each its own draw of prompt, model and seed; raising it adds results and "
        "keeps the existing ones (RANDOM_DIFFUSION_VARIANTS; unset: the catalog's `defaults: {variants: K}`, "
        "else 1).",
    )
    caption_fallback: str | None = Field(
        default_factory=settings.caption_fallback,
        description="What `{caption}` becomes for an image without a caption; unset, such an image fails by name "
        "(RANDOM_DIFFUSION_CAPTION_FALLBACK).",
    )
    partitions: str = Field(
        default_factory=settings.partition_granularity,
        description="What one partition of diffused_image holds: `image` (one image), `folder` (a folder of the tree) "
        "or `shard:N` (N stable hash shards of the images) (RANDOM_DIFFUSION_PARTITIONS, default image).",
    )

    @field_validator("partitions")
    @classmethod
    def _known_granularity(cls, value: str) -> str:
        try:
            return str(Granularity.parse(value))
        except ValueError as exc:
            raise ValueError(f"dataset.partitions: {exc}") from None

    @property
    def granularity(self) -> Granularity:
        return Granularity.parse(self.partitions)

    def scan(self) -> FolderScan:
        """The image files, and the entries skipped with their reasons (loops, unreadable, ...)."""
        return scan_images(self.images_dir, self.recursive)

    def source_files(self) -> list[SourceFile]:
        return self.scan().files

    def files_for(self, keys: list[str]) -> tuple[list[SourceFile], dict[str, str]]:
        """(the files behind these partitions, in partition order, then folder order; key -> why it has none)."""
        by_partition = self._folders_alone(keys)
        if by_partition is None:
            by_partition = self.by_partition(self.source_files(), set(keys))
        missing = {k: f"partition {k!r} has no source file in {self.images_dir} any more" for k in keys}
        missing = {k: why for k, why in missing.items() if k not in by_partition}
        return [file for k in keys for file in by_partition.get(k, [])], missing

    def by_partition(self, files: list[SourceFile], keys: set[str]) -> dict[str, list[SourceFile]]:
        """The scanned `files` of these partitions, by partition. A folder or shard partition holds the files that look
        like images (is_image_file: by suffix, else by header), as image partitions are given only to images."""
        partition_of = self.granularity.partition_of
        by_partition: dict[str, list[SourceFile]] = {}
        for file in files:
            key = partition_of(file.partition_key)
            if key in keys and self._holds(file):
                by_partition.setdefault(key, []).append(file)
        return by_partition

    def _holds(self, file: SourceFile) -> bool:
        return self.granularity.per_image or is_image_file(file.path)

    def _folders_alone(self, keys: list[str]) -> dict[str, list[SourceFile]] | None:
        """Folder partitions' files, each listed from its own folder (a run over one folder of a million-image tree
        does not scan the tree); None for other granularities, or where a key names a folder only the whole scan
        finds."""
        if self.granularity.kind != "folder":
            return None
        found = {}
        for key in keys:
            relative = "" if key == TOP_FOLDER else key
            files = scan_one_folder(self.images_dir, relative) if self.recursive or not relative else []
            if files is None:
                return None
            found[key] = [file for file in files if self._holds(file)]
        return {key: files for key, files in found.items() if files}

    def source_paths(self, keys: list[str], files: list[SourceFile] | None = None) -> dict[str, str | None]:
        """The images of these partitions (`files`, when the caller has them: files_for(keys)): image key -> its path
        under the images folder, which names its results. An image partition whose source is gone maps to None (its
        results are then looked for under their key)."""
        if files is None:
            files, _missing = self.files_for(keys)
        paths = {file.partition_key: file.relative_path for file in files}
        return {key: paths.get(key) for key in keys} if self.granularity.per_image else paths

    def planner(self, prompts: list[str], catalog: list[ModelSpec], rerolls: frozenset[str] = frozenset()) -> Planner:
        """The planner for today's inputs; `rerolls` (`key` or `key~vN`) draw those results anew."""
        require_separate_folders(self.images_dir, self.output_dir)  # before any result is planned or written
        self._require_pairs_apart()
        lines = self.prompt_lines(prompts)
        return Planner(
            prompts,
            catalog,
            self.seed,
            self.output_dir,
            self.wildcards_dir,
            self.caption_fallback,
            self.result_variants(),
            rerolls,
            self.pair_folders(),
            self.prompts_file if lines else "prompt list",
            lines,
        )

    def pair_folders(self) -> PairFolders:
        return PairFolders(self.masks_dir, self.controls_dir)

    def _require_pairs_apart(self) -> None:
        named = {
            f"{settings.MASKS_DIR_VARIABLE} (or the dataset resource's masks_dir)": self.masks_dir,
            f"{settings.CONTROLS_DIR_VARIABLE} (or the dataset resource's controls_dir)": self.controls_dir,
        }
        require_pairs_apart(self.images_dir, self.output_dir, named)

    def result_variants(self) -> int:
        """Results per image: this resource's `variants` (run config, `run --variants`, RANDOM_DIFFUSION_VARIANTS),
        else the catalog's `defaults: {variants: K}` (read from models_file), else 1."""
        if self.variants is not None:
            return self.variants
        return catalog_variants(self.models_file) or 1

    def check_folders(self, dataset: bool = False) -> None:
        """Raise OSError naming the problem if the images or output folder cannot be used, before any work; with
        `dataset`, the dataset folder too (a run that exports one)."""
        self.scan()
        require_separate_folders(self.images_dir, self.output_dir)
        self._require_pairs_apart()
        require_writable_folder(self.output_dir, subfolders=(FAILURES_DIR,))
        if dataset:
            require_dataset_folder(self.images_dir, self.output_dir, self.dataset_dir)

    def prompts(self) -> list[str]:
        return load_prompts(self.prompts_file)

    def prompt_lines(self, prompts: list[str]) -> tuple[int, ...] | None:
        """Each prompt's line in the prompts file while `prompts` are its prompts (a message then sends a person to
        the line), else None (a submitted list, or the file edited since)."""
        try:
            numbered = load_numbered_prompts(self.prompts_file)
        except (PromptListError, OSError):
            return None
        return tuple(number for number, _ in numbered) if [prompt for _, prompt in numbered] == prompts else None

    def catalog(self) -> list[ModelSpec]:
        return load_catalog(self.models_file)


MAX_BATCH_SIZE = 256  # far past what any GPU holds at 512 px; a typo of 10000 would only fail halfway
MAX_MEMORY_BUDGET_MB = 2**24  # 16 TiB

# Pipelines kept by this process between steps (keep_loaded): one cache per engine setting.
_KEPT_CACHES: dict[tuple, PipelineCache] = {}


class DiffusionEngineResource(dg.ConfigurableResource):
    """Holds the run's loaded diffusion pipelines: loaded on first use, LRU-evicted, freed at teardown.

    With `keep_loaded` (on in Celery workers) the pipelines, and what torch.compile made of them, stay
    in the worker process for its next step instead: a run then pays no imports, loads or compilation.
    torch and diffusers are imported only when the first pipeline is needed, so loading
    definitions, sensor ticks and the UI stay fast.
    """

    device: str | None = Field(default=None, description="cuda, cuda:1, mps or cpu; default: cuda, then mps, then cpu.")
    dtype: str | None = Field(
        default=None,
        description="float16, bfloat16 or float32; default: per catalog entry (auto: fp16 on CUDA, fp32 elsewhere).",
    )
    max_resident_models: int = Field(
        default_factory=settings.resident_models,
        ge=1,
        le=settings.MAX_RESIDENT_MODELS,
        description="Pipelines kept loaded at once; the least recently used is evicted "
        "(RANDOM_DIFFUSION_RESIDENT_MODELS, default 2).",
    )
    memory_budget_mb: float | None = Field(
        default=None, gt=0, le=MAX_MEMORY_BUDGET_MB, description="Cap on the resident pipelines' weights, in MiB."
    )
    batch_size: int | None = Field(
        default=None,
        ge=1,
        le=MAX_BATCH_SIZE,
        description="Images per pipeline call (same model, same size); default 16 on CUDA, 4 elsewhere "
        "(docs/speed.md).",
    )
    torch_threads: int | None = Field(
        default_factory=settings.torch_threads,
        ge=1,
        le=4 * (os.cpu_count() or 1),  # more only thrashes, and enough of them exhaust the machine's threads
        description="CPU threads for torch (RANDOM_DIFFUSION_TORCH_THREADS); default: torch's own choice.",
    )
    progress_bar: bool = Field(default=False, description="Show a terminal progress bar (the CLI turns it on).")
    channels_last: bool = Field(default=True, description="NHWC layout for the UNet on CUDA.")
    vae_slicing: bool = Field(default=True, description="Decode batches one image at a time (less peak memory).")
    compile_unet: bool | None = Field(
        default_factory=lambda: settings.compile_part("unet"),
        description="torch.compile the UNet (SD3's or Flux.1's transformer: block by block): faster steps after a "
        "minute or two of compiling per process (RANDOM_DIFFUSION_COMPILE=unet); default: on in a worker that keeps "
        "its pipelines on a CUDA GPU, else off.",
    )
    compile_vae: bool | None = Field(
        default_factory=lambda: settings.compile_part("vae"),
        description="torch.compile the VAE encoder and decoder (RANDOM_DIFFUSION_COMPILE=vae); "
        "default: as compile_unet.",
    )
    compile_mode: str = Field(
        default="default",
        description="torch.compile's mode where compiling: reduce-overhead replays each step as a CUDA graph, "
        "max-autotune also benchmarks kernels while compiling (docs/speed.md).",
    )
    compile_ahead_of_time: bool = Field(
        default_factory=settings.compile_ahead_of_time,
        description="Compile into AOTInductor packages kept in the compile cache, which a fresh worker loads in a "
        "second instead of tracing each graph again; not in the modes that record CUDA graphs "
        "(RANDOM_DIFFUSION_COMPILE_AHEAD_OF_TIME=0 turns it off).",
    )

    keep_loaded: bool = Field(
        default_factory=settings.keep_pipelines_loaded,
        description="Keep pipelines loaded in this process after the step, for the next step: on when "
        "RANDOM_DIFFUSION_EXECUTOR=celery (steps run in long-lived workers), else off "
        "(RANDOM_DIFFUSION_KEEP_LOADED=1 or 0 overrides).",
    )

    _cache = PrivateAttr(default=None)

    @field_validator("device")
    @classmethod
    def _a_torch_device(cls, value: str | None) -> str | None:
        """Checked when the run starts, not when torch first meets the value in the middle of loading a model."""
        if value is not None and not re.fullmatch(r"(cpu|mps|xpu|cuda)(:\d+)?", value):
            raise ValueError(f"{value!r} is not a torch device: use cuda, cuda:1, mps or cpu, or leave it unset")
        return value

    @field_validator("compile_mode")
    @classmethod
    def _a_compile_mode(cls, value: str) -> str:
        from ..engine.pipelines import COMPILE_MODES

        if value not in COMPILE_MODES:
            raise ValueError(f"{value!r} is not a torch.compile mode: use one of {', '.join(COMPILE_MODES)}")
        return value

    @field_validator("dtype")
    @classmethod
    def _a_known_dtype(cls, value: str | None) -> str | None:
        if value is not None and value not in DTYPES:
            raise ValueError(f"{value!r} is not one of {', '.join(DTYPES)}: use one, or leave it unset")
        return value

    def pipelines(self, log=lambda message: None):
        """The run's PipelineCache, created on first use (or the one this process kept, with keep_loaded)."""
        if self._cache is None:
            settings = self._cache_settings()
            kept = _KEPT_CACHES.get(settings) if self.keep_loaded else None
            self._cache = kept or self._new_cache()
            if self.keep_loaded:
                for other in [key for key in _KEPT_CACHES if key != settings]:  # changed settings: free the GPU
                    _KEPT_CACHES.pop(other).clear()
                _KEPT_CACHES[settings] = self._cache
        self._cache.log = log
        return self._cache

    def _cache_settings(self) -> tuple:
        return (
            self.device,
            self.dtype,
            self.max_resident_models,
            self.memory_budget_mb,
            self.torch_threads,
            self.channels_last,
            self.vae_slicing,
            self.compile_unet,
            self.compile_vae,
            self.compile_mode,
            self.compile_ahead_of_time,
        )

    def speedups_on(self, device: str) -> Speedups:
        """What pipelines on `device` get. Compilation, where not set: on in a warm worker on a CUDA GPU, which
        compiles once (minutes, less from the compile cache) for every later run's faster steps (docs/speed.md);
        off elsewhere, where each run process would compile again."""
        from ..engine.pipelines import Speedups

        warm_gpu = self.keep_loaded and device.startswith("cuda")
        return Speedups(
            channels_last=self.channels_last,
            vae_slicing=self.vae_slicing,
            compile_unet=warm_gpu if self.compile_unet is None else self.compile_unet,
            compile_vae=warm_gpu if self.compile_vae is None else self.compile_vae,
            compile_mode=self.compile_mode,
            ahead_of_time=self.compile_ahead_of_time,
        )

    def _new_cache(self) -> PipelineCache:
        from ..engine.pipelines import PipelineCache, pick_device

        if self.torch_threads:
            import torch

            torch.set_num_threads(self.torch_threads)
        device = pick_device(self.device)
        speedups = self.speedups_on(device)
        if (speedups.compile_unet or speedups.compile_vae) and (shared := settings.compile_cache_for_this_process()):
            speedups = dataclasses.replace(speedups, read_only_cache=str(shared))
        return PipelineCache(
            device=device,
            dtype=self.dtype,
            max_models=self.max_resident_models,
            memory_budget_mb=self.memory_budget_mb,
            speedups=speedups,
        )

    def batch_size_on(self, device: str) -> int:
        return self.batch_size or (16 if device.startswith("cuda") else 4)

    def run(
        self,
        tasks: list[ImageTask],
        log=lambda message: None,
        finished: Callable[[list[ImageResult]], None] | None = None,
    ) -> RunSummary:
        """Make the tasks' images with this run's pipelines: reused, generated or failed, one result each
        (`finished`: called with results as their images are written, see run_tasks)."""
        from ..engine.runner import run_tasks

        pipelines = self.pipelines(log)
        return run_tasks(tasks, pipelines, self.batch_size_on(pipelines.device), log, self.progress_bar, finished)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._cache is not None:
            self._cache.log = lambda message: None  # the step's logger ends with the step
            if not self.keep_loaded:
                self._cache.clear()
            self._cache = None


def project_resources() -> dict:
    """The dataset and engine, plus step storage every worker reaches when RANDOM_DIFFUSION_STEP_STORAGE is set
    (required with celery and k8s); unset, step values stay in Dagster's local storage under DAGSTER_HOME."""
    resources = {"dataset": DatasetResource(), "engine": DiffusionEngineResource()}
    location = settings.step_storage_location()
    if location:
        resources["io_manager"] = SharedStepStorage(base_dir=location)
    return resources
