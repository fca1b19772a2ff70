"""Dagster resources: where the data lives, and the engine that holds loaded pipelines."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field, PrivateAttr

from .engine.catalog import ModelSpec, load_catalog
from .engine.images import FolderScan, SourceFile, scan_images
from .engine.plan import ImageTask, Planner
from .engine.prompts import load_prompts
from .settings import env_choices, env_int, env_path

if TYPE_CHECKING:  # the runner imports torch-adjacent code; keep it out of definition loading
    from .engine.runner import RunSummary


class DatasetResource(dg.ConfigurableResource):
    """The folders and files a user edits, each with a default and an environment variable."""

    images_dir: str = Field(
        default_factory=lambda: env_path("RANDOM_DIFFUSION_IMAGES_DIR", "data/images"),
        description="Folder of source images (RANDOM_DIFFUSION_IMAGES_DIR).",
    )
    output_dir: str = Field(
        default_factory=lambda: env_path("RANDOM_DIFFUSION_OUTPUT_DIR", "data/outputs"),
        description="Folder or fsspec URL (s3://bucket/outputs) the diffused PNGs and the report go to "
        "(RANDOM_DIFFUSION_OUTPUT_DIR).",
    )
    prompts_file: str = Field(
        default_factory=lambda: env_path("RANDOM_DIFFUSION_PROMPTS_FILE", "data/prompts.txt"),
        description="One prompt per line (RANDOM_DIFFUSION_PROMPTS_FILE).",
    )
    models_file: str = Field(
        default_factory=lambda: env_path("RANDOM_DIFFUSION_MODELS_FILE", "data/models.yaml"),
        description="The model catalog (RANDOM_DIFFUSION_MODELS_FILE).",
    )
    wildcards_dir: str = Field(
        default_factory=lambda: env_path("RANDOM_DIFFUSION_WILDCARDS_DIR", "data/wildcards"),
        description="Wildcard files for `__name__` in prompt templates, one value per line "
        "(RANDOM_DIFFUSION_WILDCARDS_DIR).",
    )
    seed: int = Field(
        default_factory=lambda: env_int("RANDOM_DIFFUSION_SEED", 0),
        description="Run seed: together with each image's content it decides prompt, model and "
        "diffusion seed. Change it to re-roll every image (RANDOM_DIFFUSION_SEED).",
    )

    def scan(self) -> FolderScan:
        """The image files, and the entries skipped with their reasons (loops, unreadable, ...)."""
        return scan_images(self.images_dir)

    def source_files(self) -> list[SourceFile]:
        return self.scan().files

    def files_for(self, keys: list[str]) -> tuple[list[SourceFile], dict[str, str]]:
        """(the files behind these partitions, key -> why it has none)."""
        by_key = {f.partition_key: f for f in self.source_files()}
        missing = {
            k: f"partition {k!r} has no source file in {self.images_dir} any more" for k in keys if k not in by_key
        }
        return [by_key[k] for k in keys if k in by_key], missing

    def planner(self, prompts: list[str], catalog: list[ModelSpec]) -> Planner:
        return Planner(prompts, catalog, self.seed, self.output_dir, self.wildcards_dir)

    def prompts(self) -> list[str]:
        return load_prompts(self.prompts_file)

    def catalog(self) -> list[ModelSpec]:
        return load_catalog(self.models_file)


COMPILABLE_PARTS = ("unet", "vae")


def _compile_from_env(part: str) -> bool:
    """Whether RANDOM_DIFFUSION_COMPILE (e.g. "unet,vae") names `part`: how sensor and schedule runs get compiled."""
    return part in env_choices("RANDOM_DIFFUSION_COMPILE", COMPILABLE_PARTS)


class DiffusionEngineResource(dg.ConfigurableResource):
    """Holds the run's loaded diffusion pipelines: loaded on first use, LRU-evicted, freed at teardown.

    torch and diffusers are imported only when the first pipeline is needed, so loading
    definitions, sensor ticks and the UI stay fast.
    """

    device: str | None = Field(default=None, description="cuda, cuda:1, mps or cpu; default: cuda, then mps, then cpu.")
    dtype: str | None = Field(
        default=None,
        description="float16, bfloat16 or float32; default: per catalog entry (auto: fp16 on CUDA, fp32 elsewhere).",
    )
    max_resident_models: int = Field(
        default=2, ge=1, description="Pipelines kept loaded at once; the least recently used is evicted."
    )
    memory_budget_mb: float | None = Field(default=None, description="Cap on the resident pipelines' weights, in MiB.")
    batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Images per pipeline call (same model, same size); default 16 on CUDA "
        "(benchmarks/results: 4x the throughput of one at a time on an H100), 4 elsewhere.",
    )
    torch_threads: int | None = Field(
        default_factory=lambda: env_int("RANDOM_DIFFUSION_TORCH_THREADS", None, minimum=1),
        description="CPU threads for torch (RANDOM_DIFFUSION_TORCH_THREADS); default: torch's own choice.",
    )
    progress_bar: bool = Field(default=False, description="Show a terminal progress bar (the CLI turns it on).")
    channels_last: bool = Field(default=True, description="NHWC layout for the UNet on CUDA.")
    vae_slicing: bool = Field(default=True, description="Decode batches one image at a time (less peak memory).")
    compile_unet: bool = Field(
        default_factory=lambda: _compile_from_env("unet"),
        description="torch.compile the UNet: faster steps after a minute or two of compiling per run "
        "(RANDOM_DIFFUSION_COMPILE=unet).",
    )
    compile_vae: bool = Field(
        default_factory=lambda: _compile_from_env("vae"),
        description="torch.compile the VAE encoder and decoder (RANDOM_DIFFUSION_COMPILE=vae).",
    )

    _cache = PrivateAttr(default=None)

    def pipelines(self, log=lambda message: None):
        """The run's PipelineCache, created on first use."""
        if self._cache is None:
            from .engine.pipelines import PipelineCache, Speedups

            if self.torch_threads:
                import torch

                torch.set_num_threads(self.torch_threads)
            self._cache = PipelineCache(
                device=self.device,
                dtype=self.dtype,
                max_models=self.max_resident_models,
                memory_budget_mb=self.memory_budget_mb,
                log=log,
                speedups=Speedups(
                    channels_last=self.channels_last,
                    vae_slicing=self.vae_slicing,
                    compile_unet=self.compile_unet,
                    compile_vae=self.compile_vae,
                ),
            )
        return self._cache

    def batch_size_on(self, device: str) -> int:
        return self.batch_size or (16 if device.startswith("cuda") else 4)

    def run(self, tasks: list[ImageTask], log=lambda message: None) -> RunSummary:
        """Make the tasks' images with this run's pipelines: reused, generated or failed, one result each."""
        from .engine.runner import run_tasks

        pipelines = self.pipelines(log)
        return run_tasks(tasks, pipelines, self.batch_size_on(pipelines.device), log, self.progress_bar)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._cache is not None:
            self._cache.clear()
            self._cache = None
