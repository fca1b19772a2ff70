"""Running planned jobs: reuse finished results, group by model, batch, fall back on OOM, write atomically."""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import groupby

from PIL import Image
from upath import UPath

from .choice import ImageJob
from .images import (
    ImageLoadError,
    a1111_parameters,
    fit_to_resolution,
    load_rgb,
    open_image_copy,
    read_record,
    thumbnail_data_uri,
    write_png_atomic,
)
from .freshness import stat_signature
from .pipelines import ModelLoadError, PipelineCache, free_memory
from .storage import location, write_bytes_atomic

FAILURES_DIR = ".failures"


@dataclass
class ImageResult:
    job: ImageJob
    status: str  # "generated", "reused" (identical result already on disk) or "failed"
    record: dict | None = None
    error: str | None = None
    preview: str | None = None  # small inline JPEG of the result


@dataclass
class RunSummary:
    results: list[ImageResult]
    pipeline_loads: int
    batch_size: int
    seconds: float
    device: str

    def with_status(self, status: str) -> list[ImageResult]:
        return [r for r in self.results if r.status == status]

    @property
    def images_per_second(self) -> float:
        generated = len(self.with_status("generated"))
        return generated / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Batch:
    model_name: str
    items: list[tuple[ImageJob, Image.Image]]
    fallbacks: list[str] = field(default_factory=list)


def failure_path(output_dir: str | os.PathLike, key: str) -> UPath:
    return location(output_dir) / FAILURES_DIR / f"{key}.json"


def run_jobs(
    jobs: list[ImageJob],
    cache: PipelineCache,
    batch_size: int = 4,
    log: Callable[[str], None] = print,
    progress_bar: bool = False,
) -> RunSummary:
    """Make every job's image, at most one load per model, carrying on past failures."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    started = time.perf_counter()
    loads_before = cache.loads
    results: dict[str, ImageResult] = {}
    pending = []
    for job in jobs:
        reused = _reuse_existing(job)
        if reused:
            results[job.key] = reused
        else:
            pending.append(job)
    if results:
        log(f"Reusing {len(results)} identical results already on disk; {len(pending)} to generate.")
    progress = _Progress(len(pending), log, progress_bar)
    by_model = groupby(sorted(pending, key=lambda j: j.model.name), key=lambda j: j.model.name)
    with _ResultWriter() as writer:
        for _model_name, model_jobs in by_model:
            for result in _run_model(list(model_jobs), cache, batch_size, progress, writer):
                results[result.job.key] = result
    progress.close()
    for result in results.values():
        _record_outcome(result)
    return RunSummary(
        results=[results[j.key] for j in jobs],
        pipeline_loads=cache.loads - loads_before,
        batch_size=batch_size,
        seconds=time.perf_counter() - started,
        device=cache.device,
    )


class _ResultWriter:
    """Encodes and writes result PNGs on background threads while the GPU works on the next batch.

    Pillow releases the GIL while compressing, so writing overlaps inference. Leaving the
    `with` block waits for every write; a write that failed turns its result into a failure.
    """

    def __init__(self, threads: int = 2):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="png-writer")
        self._pending = []

    def submit(self, result: ImageResult, image: Image.Image, parameters: str) -> None:
        self._pending.append((result, self._pool.submit(self._write, result, image, parameters)))

    @staticmethod
    def _write(result: ImageResult, image: Image.Image, parameters: str) -> None:
        write_png_atomic(image, result.job.output_path, parameters, result.record)
        result.preview = thumbnail_data_uri(image)

    def __enter__(self) -> "_ResultWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        for result, future in self._pending:
            try:
                future.result()
            except OSError as exc:
                result.status, result.error = "failed", f"writing {result.job.output_path} failed: {exc}"
        self._pool.shutdown()


class _Progress:
    """A log line per batch (what the Dagster UI shows) and an optional terminal progress bar."""

    def __init__(self, total: int, log: Callable[[str], None], show_bar: bool):
        from tqdm.auto import tqdm

        self.total, self.done, self.log = total, 0, log
        self.bar = tqdm(total=total, disable=not show_bar, unit="image", desc="diffusing")

    def advance(self, count: int, message: str) -> None:
        self.done += count
        self.bar.update(count)
        self.log(f"[{self.done}/{self.total}] {message}")

    def close(self) -> None:
        self.bar.close()


def _run_model(
    jobs: list[ImageJob], cache: PipelineCache, batch_size: int, progress: _Progress, writer: _ResultWriter
) -> Iterator[ImageResult]:
    spec = jobs[0].model
    loaded: list[tuple[ImageJob, Image.Image]] = []
    for job in jobs:
        try:
            loaded.append((job, _load_source(job)))
        except ImageLoadError as exc:
            progress.advance(1, f"skipped unreadable source: {exc}")
            yield ImageResult(job, "failed", error=str(exc))
    if not loaded:
        return
    try:
        pipeline, load_seconds = cache.get(spec)
    except ModelLoadError as exc:
        progress.advance(len(loaded), f"{len(loaded)} images failed: {exc}")
        for job, _image in loaded:
            yield ImageResult(job, "failed", error=str(exc))
        return
    # Same-size images batch together; per-image generators keep batching from changing pixels.
    loaded.sort(key=lambda item: item[1].size)
    for size, group in groupby(loaded, key=lambda item: item[1].size):
        group = list(group)
        for start in range(0, len(group), batch_size):
            batch = _Batch(spec.name, group[start : start + batch_size])
            batch_started = time.perf_counter()
            outcomes = list(_generate_with_fallback(pipeline, batch, cache.device))
            results = list(_finish_batch(batch, outcomes, cache, pipeline, load_seconds, time.perf_counter() - batch_started, writer))
            failed = sum(r.status == "failed" for r in results)
            progress.advance(
                len(results),
                f"model {spec.name!r}: batch of {len(results)} at {size[0]}x{size[1]} in "
                f"{time.perf_counter() - batch_started:.2f} s" + (f", {failed} failed" if failed else ""),
            )
            yield from results
            load_seconds = 0.0  # charged to the first batch only


def _load_source(job: ImageJob) -> Image.Image:
    return fit_to_resolution(load_rgb(job.source_path, min_side=job.model.resolution), job.model.resolution)


def _generate_with_fallback(pipeline, batch: _Batch, device: str):
    """Yield (job, image or None, error or None, fallbacks) for every item in the batch.

    Out of memory: free memory, split the batch in halves down to one image, then try
    VAE tiling, and only then fail the image. Any other error in a batch of several is
    retried image by image, so one bad input fails only itself.
    """
    try:
        images, memory = _infer(pipeline, batch, device)
        for (job, _source), image in zip(batch.items, images):
            yield job, image, None, batch.fallbacks, memory
        return
    except Exception as exc:  # noqa: BLE001 - every failure is attributed and recorded below
        error = exc
    out_of_memory = _is_out_of_memory(error)
    free_memory()
    if len(batch.items) > 1:
        middle = len(batch.items) // 2 if out_of_memory else 1
        step = "batch_split" if out_of_memory else None
        for start in range(0, len(batch.items), middle):
            part = batch.items[start : start + middle]
            fallbacks = batch.fallbacks + ([step] if step else [])
            yield from _generate_with_fallback(pipeline, _Batch(batch.model_name, part, fallbacks), device)
        return
    if out_of_memory and "vae_tiling" not in batch.fallbacks and hasattr(pipeline, "vae"):
        pipeline.vae.enable_tiling()
        try:
            yield from _generate_with_fallback(
                pipeline, _Batch(batch.model_name, batch.items, batch.fallbacks + ["vae_tiling"]), device
            )
        finally:
            pipeline.vae.disable_tiling()
        return
    job = batch.items[0][0]
    reason = "out of memory even at batch size 1 with VAE tiling" if out_of_memory else "generation failed"
    yield job, None, f"{job.source_path}: {reason} with model {job.model.name!r}: {error}", batch.fallbacks, None


def _is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def _infer(pipeline, batch: _Batch, device: str):
    jobs = [job for job, _ in batch.items]
    return generate(
        pipeline, jobs[0].model, [job.prompt for job in jobs], [image for _, image in batch.items], [job.seed for job in jobs], device
    )


def generate(pipeline, spec, prompts: list[str], images: list[Image.Image], seeds: list[int], device: str):
    """One pipeline call for a batch: (result images, peak CUDA memory in MiB during the call)."""
    import torch

    on_cuda = device.startswith("cuda")
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        output = pipeline(
            prompt=prompts,
            negative_prompt=[spec.negative_prompt] * len(prompts) if spec.negative_prompt else None,
            image=images,
            strength=spec.strength,
            num_inference_steps=spec.num_inference_steps,
            guidance_scale=spec.guidance_scale,
            # CPU generators, one per image: seeds are portable and batch-independent.
            generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
            output_type="pil",
        )
    memory = {"vram_peak_allocated_mb": 0.0, "vram_peak_reserved_mb": 0.0}
    if on_cuda:
        memory = {
            "vram_peak_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "vram_peak_reserved_mb": round(torch.cuda.max_memory_reserved() / 2**20, 1),
        }
    return output.images, memory


def _finish_batch(batch: _Batch, outcomes, cache, pipeline, load_seconds: float, batch_seconds: float, writer: _ResultWriter):
    count = len(batch.items)
    sources = {job.key: source for job, source in batch.items}
    pipeline_info = cache.describe(batch.model_name)
    for job, image, error, fallbacks, memory in outcomes:
        if image is None:
            yield ImageResult(job, "failed", error=error)
            continue
        record = _record(job, sources[job.key], image, pipeline_info, memory, fallbacks, count, load_seconds, batch_seconds)
        record["prompt_truncated"] = _prompt_too_long(pipeline, job.prompt)
        result = ImageResult(job, "generated", record=record)
        writer.submit(result, image, _parameters_text(job, record))
        yield result


def _record(job, source, image, pipeline_info, memory, fallbacks, count, load_seconds, batch_seconds) -> dict:
    spec = job.model
    source_bytes, source_mtime_ns = stat_signature(job.source_path)
    with Image.open(job.source_path) as original:
        source_size = f"{original.width}x{original.height}"
    return {
        "key": job.key,
        "prompt": job.prompt,
        "negative_prompt": spec.negative_prompt,
        "model": spec.name,
        "model_source": f"{spec.source_kind}:{spec.source}",
        "scheduler": pipeline_info["scheduler"],
        "dtype": pipeline_info["dtype"],
        "safety_checker": pipeline_info["safety_checker"],
        "device": pipeline_info["device"],
        "seed": job.seed,
        "run_seed": job.run_seed,
        "strength": spec.strength,
        "num_inference_steps": spec.num_inference_steps,
        "guidance_scale": spec.guidance_scale,
        "source_path": job.source_path,
        "source_sha256": job.source_sha256,
        # With the fingerprint these let a schedule see a stale result without hashing the source.
        "source_bytes": source_bytes,
        "source_mtime_ns": source_mtime_ns,
        "source_size": source_size,
        "model_input_size": f"{source.width}x{source.height}",
        "output_size": f"{image.width}x{image.height}",
        # A batch's load and inference time, shared equally by its images.
        "pipeline_load_seconds": round(load_seconds / count, 4),
        "inference_seconds": round(batch_seconds / count, 4),
        "total_seconds": round((load_seconds + batch_seconds) / count, 4),
        "batch_size": count,
        "fallback": ",".join(fallbacks) or "none",
        **memory,
        "rss_peak_mb": round(_rss_peak_mb(), 1),
        "output_path": job.output_path,
        "fingerprint": job.fingerprint,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _prompt_too_long(pipeline, prompt: str) -> bool:
    """Whether the text encoder sees only the start of the prompt (CLIP reads 77 tokens)."""
    tokenizer = getattr(pipeline, "tokenizer", None)
    return tokenizer is not None and len(tokenizer(prompt).input_ids) > tokenizer.model_max_length


def _parameters_text(job: ImageJob, record: dict) -> str:
    return a1111_parameters(
        job.prompt,
        job.model.negative_prompt,
        {
            "Steps": job.model.num_inference_steps,
            "Sampler": record["scheduler"],
            "CFG scale": job.model.guidance_scale,
            "Seed": job.seed,
            "Size": record["output_size"],
            "Model": job.model.name,
            "Denoising strength": job.model.strength,
        },
    )


def _reuse_existing(job: ImageJob) -> ImageResult | None:
    record = read_record(job.output_path)
    if not record or record.get("fingerprint") != job.fingerprint:
        return None
    preview = thumbnail_data_uri(open_image_copy(job.output_path))
    return ImageResult(job, "reused", record=record, preview=preview)


def _record_outcome(result: ImageResult) -> None:
    """Keep a failure file per failed image (read by the report); clear it once the image succeeds."""
    output_dir = location(result.job.output_path).parent
    path = failure_path(output_dir, result.job.key)
    if result.status == "failed":
        payload = {"key": result.job.key, "model": result.job.model.name, "error": result.error,
                   "source_path": result.job.source_path}
        write_bytes_atomic(path, json.dumps(payload, indent=2).encode())
    else:
        path.unlink(missing_ok=True)


def _rss_peak_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
