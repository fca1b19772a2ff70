"""Running planned tasks: reuse finished results, group by model, batch, fall back on OOM, judge each result by its
model's quality gates and re-roll the failures with their next seeds, write atomically."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import resource
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Literal

from PIL import Image, ImageFilter

from .families import (
    SDXL,
    UnsupportedByModel,
    family_of_pipeline,
    family_of_spec,
    guidance_parameters,
    inpainting_problem,
    negative_prompt_problem,
    negative_prompt_source,
    prompt_truncated,
    settings_problem,
)
from .images import (
    ImageLoadError,
    ModelInput,
    image_strip,
    load_rgb,
    open_image_copy,
    prepare_model_input,
    shown_size,
    thumbnail_data_uri,
)
from .output_location import location, require_writable_folder, write_bytes_atomic
from .pairs import MASK, PairError, canny_edges, read_control, read_mask
from .pipelines import ModelLoadError, PipelineCache, base_key, compiled_graphs, free_memory, graphs_from_cache
from .plan import ImageTask, active_controlnets
from .quality import measured_box, verdict
from .quiet import engine_warnings_to
from .results import (
    FAILURES_DIR,
    FailureRecord,
    ResultRecord,
    a1111_parameters,
    a1111_sampler,
    clear_failure,
    read_record,
    write_failure,
    write_result_png,
)
from .weighting import plain_text, weighted_embeddings, weighted_embeddings_sdxl

Status = Literal["generated", "reused", "failed"]
PREVIEW_HEIGHT = 192


@dataclass
class ImageResult:
    task: ImageTask
    status: Status  # "reused": an identical result was already on disk
    record: ResultRecord | None = None
    error: str | None = None
    preview: str | None = None  # small inline JPEG: the source beside the result


@dataclass
class RunSummary:
    results: list[ImageResult]
    pipeline_loads: int
    batch_size: int
    seconds: float
    device: str
    compiled_graphs: int  # graphs torch.compile compiled during the run (0 when nothing new had to be compiled)
    batches: list[int] = field(default_factory=list)  # images in each planned pipeline call (OOM fallbacks split)
    graphs_from_cache: int = 0  # graphs whose compiled code came from the on-disk compile cache instead

    @property
    def mean_batch_fill(self) -> float | None:
        """How full the pipeline calls were on average (1.0: every call held batch_size images)."""
        return sum(self.batches) / len(self.batches) / self.batch_size if self.batches else None

    def with_status(self, status: Status) -> list[ImageResult]:
        return [r for r in self.results if r.status == status]

    @property
    def images_per_second(self) -> float:
        generated = len(self.with_status("generated"))
        return generated / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Source:
    """A source decoded from the bytes that were hashed, prepared for its model."""

    model_input: ModelInput  # resized and padded to the VAE's multiple; `restore` undoes the padding
    original_size: tuple[int, int]
    mask: Image.Image | None = None  # its mask ("L", blurred), fitted as model_input.image is
    controls: dict[str, Image.Image] = field(default_factory=dict)  # control type -> its image, fitted likewise


@dataclass
class _Batch:
    model_name: str
    items: list[tuple[ImageTask, _Source]]
    fallbacks: list[str] = field(default_factory=list)


@dataclass
class _Outcome:
    """One image's result from a pipeline call: the image, or why there is none."""

    task: ImageTask
    image: Image.Image | None
    error: str | None
    fallbacks: list[str]
    memory: dict[str, float] | None


@dataclass
class _BatchCost:
    """Seconds a batch took, shared equally by its images in their records."""

    images: int
    load_seconds: float
    batch_seconds: float


def run_tasks(
    tasks: list[ImageTask],
    cache: PipelineCache,
    batch_size: int = 4,
    log: Callable[[str], None] = print,
    progress_bar: bool = False,
    finished: Callable[[list[ImageResult]], None] | None = None,
) -> RunSummary:
    """Make every task's image, at most one load per model, carrying on past failures.

    `finished`, if given, is called with the results whose images are on disk as they get there, so a caller can
    record them while the run goes on: first the identical results already on disk, then each batch's once its
    files are written (a failed write marks its result failed and leaves it out). It is called on a thread of its
    own, one call at a time, in order; returning or raising (Ctrl-C too) waits for every call, and an error the
    calls raised is raised here."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    for folder in sorted({str(location(t.output_path).parent) for t in tasks}):
        require_writable_folder(folder, subfolders=(FAILURES_DIR,))  # before any model loads
    started = time.perf_counter()
    loads_before, graphs_before, cached_before = cache.loads, compiled_graphs(), graphs_from_cache()
    # Keyed by output path: a comparison has several tasks per source key (one per model and setting).
    results: dict[str, ImageResult] = {}
    pending = []
    for task in tasks:
        record = read_record(task.output_path)
        if record is not None and record.fingerprint == task.fingerprint:
            results[task.output_path] = _reused(task, record)
        elif problem := _not_ours_to_replace(task, record):
            results[task.output_path] = ImageResult(task, "failed", error=problem)
        else:
            pending.append(task)
    if results:
        log(f"Reusing {len(results)} identical results already on disk; {len(pending)} to generate.")
    progress = _Progress(len(pending), log, progress_bar)
    # By name, except that entries on one base (LoRA entries, per-call settings) go together, at the place of the
    # first of them: their base loads once, however the names sort and however few models stay resident.
    models = {task.model.name: task.model for task in pending}
    bases = {name: base_key(model) for name, model in models.items()}
    first_on_base: dict[str, str] = {}
    for name in sorted(bases):
        first_on_base.setdefault(bases[name], name)
    place = {name: first_on_base[key] for name, key in bases.items()}
    in_order = sorted(pending, key=lambda t: (place[t.model.name], t.model.name))
    by_model = groupby(in_order, key=lambda t: t.model.name)
    batches: list[int] = []
    finished = (lambda results: None) if finished is None else finished
    with (
        _ResultWriter(finished) as writer,
        _SourceReader([list(tasks) for _name, tasks in by_model]) as sources,
        engine_warnings_to(log),
    ):
        writer.add_written([result for result in results.values() if result.status == "reused"])
        writer.hand_over()
        for model_sources in sources:
            for result in _run_model(model_sources, cache, batch_size, progress, writer, batches):
                results[result.task.output_path] = result
    progress.close()
    _record_outcomes(list(results.values()))
    return RunSummary(
        results=[results[t.output_path] for t in tasks],
        pipeline_loads=cache.loads - loads_before,
        batch_size=batch_size,
        seconds=time.perf_counter() - started,
        device=cache.device,
        compiled_graphs=compiled_graphs() - graphs_before,
        batches=batches,
        graphs_from_cache=graphs_from_cache() - cached_before,
    )


class _ResultWriter:
    """Encodes and writes result PNGs on background threads while the GPU works on the next batch, and hands each
    batch's results to `finished` once their files are written.

    Pillow releases the GIL while compressing, so writing overlaps inference. A hand-over waits for its results'
    writes on one more thread, so the GPU never waits for the caller's recording either; hand-overs run one at a
    time, in order. A failed write turns its result into a failure, which is not handed over. Leaving the `with`
    block, also on Ctrl-C, hands over what was written since the last hand-over (Ctrl-C can land between a batch's
    writes and its hand-over) and waits for every write and hand-over.
    """

    def __init__(self, finished: Callable[[list[ImageResult]], None], threads: int = 2):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="png-writer")
        self._handovers = ThreadPoolExecutor(max_workers=1, thread_name_prefix="result-handover")
        self._finished = finished
        self._group: list[tuple[ImageResult, Future | None]] = []  # since the last hand-over
        self._handed: list[Future] = []

    def submit(self, result: ImageResult, image: Image.Image, parameters: str, beside: list[tuple]) -> None:
        """`beside`: (label, picture) shown left of the result in its preview: the source, its mask, controls."""
        self._group.append((result, self._pool.submit(self._write, result, image, parameters, beside)))

    def add_written(self, results: list[ImageResult]) -> None:
        """Results whose files are already on disk (reused), for the next hand-over."""
        self._group.extend((result, None) for result in results)

    def hand_over(self) -> None:
        """The results submitted since the last hand-over go to `finished` as soon as their writes end."""
        if self._group:
            group, self._group = self._group, []
            self._handed.append(self._handovers.submit(self._settle, group))

    @staticmethod
    def _write(result: ImageResult, image: Image.Image, parameters: str, beside: list[tuple]) -> None:
        write_result_png(image, result.task.output_path, parameters, result.record)
        result.preview = _preview(beside, image)

    def _settle(self, group: list[tuple[ImageResult, Future | None]]) -> None:
        for result, write in group:
            try:
                if write is not None:
                    write.result()
            except OSError as exc:
                result.status, result.error = "failed", f"writing {result.task.output_path} failed: {exc}"
        if written := [result for result, _write in group if result.status != "failed"]:
            self._finished(written)

    def __enter__(self) -> _ResultWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.hand_over()
        try:
            errors = [handed.exception() for handed in self._handed]
        finally:
            self._handovers.shutdown()
            self._pool.shutdown()
        first_error = next((error for error in errors if error is not None), None)
        if first_error is not None and exc is None:  # an exception already leaving the block goes on as it is
            raise first_error


class _SourceReader:
    """Yields each model's decoded sources, reading the next model's on a background thread meanwhile.

    Reading, hashing and decoding release the GIL, so the next model's reads overlap this model's batches;
    at most two models' sources are held at once. A source that cannot be read comes as its ImageLoadError.
    """

    def __init__(self, groups: list[list[ImageTask]]):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="source-reader")
        self._futures = (self._pool.submit(_load_sources, group) for group in groups)

    def __iter__(self) -> Iterator[list[tuple[ImageTask, _Source | ImageLoadError]]]:
        upcoming = next(self._futures, None)
        while upcoming is not None:
            current, upcoming = upcoming, next(self._futures, None)
            yield current.result()

    def __enter__(self) -> _SourceReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self._pool.shutdown(cancel_futures=True)


class _Progress:
    """A log line per batch (what the Dagster UI shows) and an optional terminal progress bar."""

    def __init__(self, total: int, log: Callable[[str], None], show_bar: bool):
        from tqdm.auto import tqdm

        self.total, self.done, self.log = total, 0, log
        # No bar for a run with nothing to make (every result reused): an empty bar says nothing.
        self.bar = tqdm(total=total, disable=not show_bar or total == 0, unit="image", desc="diffusing")

    def advance(self, count: int, message: str) -> None:
        self.done += count
        self.bar.update(count)
        self.log(f"[{self.done}/{self.total}] {message}")

    def close(self) -> None:
        self.bar.close()


def _run_model(
    sources: list[tuple[ImageTask, _Source | ImageLoadError]],
    cache: PipelineCache,
    batch_size: int,
    progress: _Progress,
    writer: _ResultWriter,
    batches: list[int],
) -> Iterator[ImageResult]:
    spec = sources[0][0].model
    loaded: list[tuple[ImageTask, _Source]] = []
    for task, source in sources:
        if isinstance(source, ImageLoadError):
            progress.advance(1, f"skipped unreadable source: {source}")
            yield ImageResult(task, "failed", error=str(source))
        else:
            loaded.append((task, source))
    if not loaded:
        return
    try:
        pipeline, load_seconds = cache.get(spec)
    except ModelLoadError as exc:
        progress.advance(len(loaded), f"{len(loaded)} images failed: {exc}")
        for task, _source in loaded:
            yield ImageResult(task, "failed", error=str(exc))
        return
    loaded = yield from _refuse_unsupported_negatives(loaded, pipeline, spec.name, progress)
    # Same-size images with the same call settings (a comparison varies strength and steps) batch together;
    # per-image generators keep batching from changing pixels. Those failing a quality gate come round again with
    # their next seed, batched together, until they pass or run out of tries.
    loaded.sort(key=_batch_key)
    base = pipeline
    for (size, *_settings), group in groupby(loaded, key=_batch_key):
        todo, attempts = list(group), _Attempts()
        masked = todo[0][0].mask is not None
        try:  # diffusers' inpaint or ControlNet pipeline on the base's components, for images with those pairs
            if problem := inpainting_problem(spec, base, masked):
                raise ModelLoadError(problem)
            pipeline = cache.with_pairs(spec, base, masked, active_controlnets(todo[0][0]))
        except ModelLoadError as exc:
            progress.advance(len(todo), f"{len(todo)} images failed: {exc}")
            yield from (ImageResult(task, "failed", error=str(exc)) for task, _source in todo)
            continue
        while todo:
            for start in range(0, len(todo), batch_size):
                batch = _Batch(spec.name, todo[start : start + batch_size])
                batches.append(len(batch.items))
                batch_started = time.perf_counter()
                outcomes = list(_generate_with_fallback(pipeline, batch, cache.device))
                cost = _BatchCost(len(batch.items), load_seconds, time.perf_counter() - batch_started)
                results = list(_finish_batch(batch, outcomes, cache, pipeline, cost, writer, attempts))
                writer.hand_over()
                failed = sum(r.status == "failed" for r in results)
                kept_failing = sum(bool(r.record and r.record.quality_failure) for r in results)
                again = len(batch.items) - len(results)
                progress.advance(
                    len(results),
                    f"model {spec.name!r}: batch of {len(batch.items)} at {size[0]}x{size[1]} in "
                    f"{time.perf_counter() - batch_started:.2f} s"
                    + (f", {failed} failed" if failed else "")
                    + (f", {again} to re-roll (quality gates)" if again else "")
                    + (f", {kept_failing} kept failing quality gates" if kept_failing else "")
                    + f" ({_some_keys([task.key for task, _source in batch.items])})",
                )
                yield from results
                load_seconds = 0.0  # charged to the first batch only
            todo = attempts.take_rerolls()


@dataclass
class _Attempts:
    """The quality-gate attempts of a batch group's results so far, and the re-rolls still to make."""

    by_output: dict[str, list[dict]] = field(default_factory=dict)  # output path -> each attempt's gate results
    rerolls: list[tuple[ImageTask, _Source]] = field(default_factory=list)

    def take_rerolls(self) -> list[tuple[ImageTask, _Source]]:
        rerolls, self.rerolls = self.rerolls, []
        return rerolls


def _refuse_unsupported_negatives(loaded: list, pipeline, model_name: str, progress: _Progress):
    """Fail, each with the reason and the fix, the images whose negative prompt the model would ignore (Flux.1 takes
    none); returns the others."""
    family = family_of_pipeline(pipeline)
    runnable = []
    for task, source in loaded:
        where = negative_prompt_source(task.line_negative_prompt)
        if problem := negative_prompt_problem(model_name, family, task.negative_prompt, where):
            progress.advance(1, f"{task.key} failed: {problem}")
            yield ImageResult(task, "failed", error=f"{task.source_path}: {problem}")
        else:
            runnable.append((task, source))
    return runnable


def _some_keys(keys: list[str], shown: int = 3) -> str:
    """The images a batch line is about: 'coffee.jpg, rocket.jpg, +14'."""
    more = f", +{len(keys) - shown}" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def _batch_key(item: tuple[ImageTask, _Source]) -> tuple:
    """Images that run in one pipeline call: same size, settings and pairs (a mask, the same control types)."""
    task, source = item
    pairs = tuple(pair.role for pair in task.pairs)
    alone = task.output_path if _mask_padding(task) is not None else ""  # diffusers crops one image per call
    return source.model_input.image.size, task.model.strength, task.model.num_inference_steps, pairs, alone


def _mask_padding(task: ImageTask) -> int | None:
    """The entry's "only masked" padding, for an image that runs with its mask."""
    return task.model.inpaint.padding if task.model.inpaint and task.mask else None


def _load_sources(tasks: list[ImageTask]) -> list[tuple[ImageTask, _Source | ImageLoadError]]:
    loaded: list[tuple[ImageTask, _Source | ImageLoadError]] = []
    for task in tasks:
        try:
            loaded.append((task, _load_source(task)))
        except ImageLoadError as exc:
            loaded.append((task, exc))
    return loaded


def _load_source(task: ImageTask) -> _Source:
    """Decode the source from one read of its bytes, refusing bytes other than those planned.

    A file replaced or deleted after planning fails by name here instead of giving a result whose
    record mixes the planned content with other pixels; the next run plans the new content.
    """
    try:
        with open(task.source_path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ImageLoadError(
            f"{task.source_path} could not be read during the run ({exc.strerror or exc}); "
            "if it was deleted or moved, its partition goes away with it"
        ) from exc
    if hashlib.sha256(data).hexdigest() != task.source.sha256:
        raise ImageLoadError(
            f"{task.source_path} changed after this run planned it; it was not diffused from the new content. "
            "The next run (new_images_sensor or catch_up_schedule) makes it from what is there now."
        )
    image = load_rgb(io.BytesIO(data), min_side=task.model.resolution, name=task.source_path)
    with Image.open(io.BytesIO(data)) as original:
        original_size = original.size
        upright = shown_size(original) if task.pairs else original_size
    # Sides a multiple of what the model takes as given (16 for SD3 and Flux.1): padded here, cropped off after.
    multiple = family_of_spec(task.model).side_multiple
    model_input = prepare_model_input(image, task.model.resolution, multiple)
    if not task.pairs:
        return _Source(model_input, original_size)
    try:
        mask, controls = _load_pairs(task, upright, model_input)  # a pair matches the source as shown
    except PairError as exc:
        raise ImageLoadError(str(exc)) from None
    return _Source(model_input, original_size, mask, controls)


def _load_pairs(
    task: ImageTask, source_size: tuple[int, int], model_input: ModelInput
) -> tuple[Image.Image | None, dict[str, Image.Image]]:
    """The task's mask (blurred by its entry's `mask_blur`) and control images, each read from the bytes planned and
    fitted to the model input as the source is; a computed control (canny) made from the model input."""
    mask, controls = None, {}
    for pair in task.pairs:
        if pair.computed:
            controls[pair.role] = canny_edges(model_input.image)
            continue
        try:
            data = Path(pair.path).read_bytes()
        except OSError as exc:
            raise PairError(f"{pair.path} could not be read during the run ({exc.strerror or exc})") from None
        if hashlib.sha256(data).hexdigest() != pair.sha256:
            raise PairError(f"{pair.path} changed after this run planned it; the next run uses what is there now.")
        if pair.role == MASK:
            blur = task.model.inpaint.mask_blur if task.model.inpaint else 0
            mask = model_input.fit(read_mask(pair.path, data, source_size))
            mask = mask.filter(ImageFilter.GaussianBlur(blur)) if blur else mask
        else:
            controls[pair.role] = model_input.fit(read_control(pair.path, data, source_size))
    return mask, controls


def _generate_with_fallback(pipeline, batch: _Batch, device: str) -> Iterator[_Outcome]:
    """An outcome for every item in the batch.

    Out of memory: free memory, split the batch in halves down to one image, then try
    VAE tiling, then model CPU offload, and only then fail the image. Any other error in a batch of several is
    retried image by image, so one bad input fails only itself.
    """
    try:
        images, memory = _infer(pipeline, batch, device)
        for (task, source), image in zip(batch.items, images, strict=True):
            yield _Outcome(task, _kept_outside_mask(source, image), None, batch.fallbacks, memory)
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
    if out_of_memory and "cpu_offload" not in batch.fallbacks and hasattr(pipeline, "enable_model_cpu_offload"):
        yield from _with_cpu_offload(pipeline, batch, device, error)
        return
    task = batch.items[0][0]
    reason = (
        "out of memory even at batch size 1 with VAE tiling and CPU offload" if out_of_memory else "generation failed"
    )
    yield _Outcome(
        task, None, f"{task.source_path}: {reason} with model {task.model.name!r}: {error}", batch.fallbacks, None
    )


def _batch_array(images: list[Image.Image]):
    import numpy as np

    return np.stack([np.asarray(image, dtype=np.float32) / 255 for image in images])


def _judged_box(source: _Source) -> tuple[int, int, int, int]:
    """The part of the result its quality gates measure: the mask's bounding box (at least SSIM's window), or all
    of it."""
    whole = (0, 0, *source.model_input.size)
    if source.mask is None:
        return whole
    mask = source.model_input.restore(source.mask)
    box = mask.getbbox()
    return measured_box(box, mask.size) if box else whole


def _kept_outside_mask(source: _Source, image: Image.Image) -> Image.Image:
    """The result without padding; with a mask, the model's pixels inside it and the source's outside it (blended
    along the blurred edge), as AUTOMATIC1111 pastes an inpainted image back: the VAE changes every pixel it
    encodes, and a mask means "only here"."""
    restored = source.model_input.restore(image)
    if source.mask is None:
        return restored
    model_input = source.model_input
    return Image.composite(restored, model_input.restore(model_input.image), model_input.restore(source.mask))


def _with_cpu_offload(pipeline, batch: _Batch, device: str, error: BaseException) -> Iterator[_Outcome]:
    """The ladder's last step: keep only the running component on the GPU (slow, but it fits), then undo it."""
    fallbacks = batch.fallbacks + ["cpu_offload"]
    try:
        pipeline.enable_model_cpu_offload(device=device)
    except Exception as exc:  # noqa: BLE001 - no offload here (e.g. no accelerator): the image fails as it would
        task = batch.items[0][0]
        yield _Outcome(
            task,
            None,
            f"{task.source_path}: out of memory even at batch size 1 with VAE tiling with model "
            f"{task.model.name!r}, and CPU offload is unavailable ({exc}): {error}",
            fallbacks,
            None,
        )
        return
    try:
        yield from _generate_with_fallback(pipeline, _Batch(batch.model_name, batch.items, fallbacks), device)
    finally:
        pipeline.remove_all_hooks()
        pipeline.to(device)


def _is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def _infer(pipeline, batch: _Batch, device: str):
    tasks = [task for task, _ in batch.items]
    images = [source.model_input.image for _, source in batch.items]
    prompts, negatives = [t.prompt for t in tasks], [t.negative_prompt for t in tasks]
    paired = {}
    if (padding := _mask_padding(tasks[0])) is not None:  # one image: diffusers' crop takes a picture, not a list
        paired |= {"image": images[0], "mask_image": batch.items[0][1].mask, "padding_mask_crop": padding}
    elif tasks[0].mask is not None:
        paired["mask_image"] = [source.mask for _, source in batch.items]
    if controlnets := active_controlnets(tasks[0]):
        per_controlnet = [[source.controls[c.control] for _, source in batch.items] for c in controlnets]
        # One ControlNet: each image's control image. Several: one batch array per ControlNet (N x H x W x 3 in
        # [0, 1]); their img2img and inpaint pipelines refuse a list of image lists for a batch of several.
        paired["control_image"] = (
            per_controlnet[0] if len(controlnets) == 1 else list(map(_batch_array, per_controlnet))
        )
        scales = [c.scale for c in controlnets]
        paired["controlnet_conditioning_scale"] = scales[0] if len(controlnets) == 1 else scales
    seeds = [t.generation_seed for t in tasks]
    return generate(pipeline, tasks[0].model, prompts, images, seeds, device, negatives, paired)


def generate(
    pipeline,
    spec,
    prompts: list[str],
    images: list[Image.Image],
    seeds: list[int],
    device: str,
    negatives: list[str] | None = None,
    paired: dict | None = None,
):
    """One pipeline call for a batch: (result images, peak CUDA memory in MiB during the call, on CUDA).

    `paired`: the inpaint or ControlNet pipeline's own arguments (mask_image, control_image and its scales).

    `negatives` are per image (a prompt line may carry its own); by default the model's. What the model's family
    cannot honour (a negative prompt for Flux.1, emphasis for SD3 and Flux.1) raises UnsupportedByModel instead of
    being dropped; the runner refuses such images and entries before they get here.
    """
    import torch

    negatives = negatives if negatives is not None else [spec.negative_prompt] * len(prompts)
    family = family_of_pipeline(pipeline)
    for negative in negatives:
        if problem := negative_prompt_problem(spec.name, family, negative, "the negative prompts given"):
            raise UnsupportedByModel(problem)
    if problem := settings_problem(spec, family):
        raise UnsupportedByModel(problem)
    on_cuda = device.startswith("cuda")
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        if spec.prompt_weighting:
            embed = weighted_embeddings_sdxl if family is SDXL else weighted_embeddings
            text = embed(pipeline, prompts, negatives)
        elif family.negative_prompt:  # no negatives at all: the pipeline's own empty negative, as before lines set one
            text = {"prompt": prompts, "negative_prompt": negatives if any(negatives) else None}
        else:
            text = {"prompt": prompts}
        output = pipeline(
            **text,
            **_size_arguments(pipeline, images),
            strength=spec.strength,
            num_inference_steps=spec.num_inference_steps,
            guidance_scale=spec.guidance_scale,
            # CPU generators, one per image: seeds are portable and batch-independent.
            generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
            output_type="pil",
            **({"image": images} | (paired or {})),
        )
    memory = {}  # no GPU figures on a device that has no GPU memory
    if on_cuda:
        memory = {
            "vram_peak_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "vram_peak_reserved_mb": round(torch.cuda.max_memory_reserved() / 2**20, 1),
        }
    return output.images, memory


def _size_arguments(pipeline, images: list[Image.Image]) -> dict[str, int]:
    """height and width for pipelines that take them (SD3, Flux.1): without them they resize every image to their
    default size (1024 px) instead of working at the image's own, as the SD and SDXL img2img pipelines do."""
    import inspect

    if "height" not in inspect.signature(pipeline.__call__).parameters:
        return {}
    sizes = {image.size for image in images}
    if len(sizes) > 1:
        raise ValueError(f"one pipeline call takes images of one size; got {sorted(sizes)}")
    width, height = sizes.pop()
    return {"height": height, "width": width}


def _finish_batch(
    batch: _Batch,
    outcomes: list[_Outcome],
    cache: PipelineCache,
    pipeline,
    cost: _BatchCost,
    writer: _ResultWriter,
    attempts: _Attempts,
) -> Iterator[ImageResult]:
    """The batch's results, each judged by its model's quality gates: one that fails them with tries left goes to
    `attempts.rerolls` with its next seed instead; the others are written with every attempt in their record."""
    sources = {task.output_path: source for task, source in batch.items}
    pipeline_info = cache.describe(batch.model_name)
    for outcome in outcomes:
        if outcome.image is None:
            yield ImageResult(outcome.task, "failed", error=outcome.error)
            continue
        task, gates = outcome.task, outcome.task.model.quality
        truncated = _prompt_too_long(pipeline, task.prompt, task.model.prompt_weighting)
        model_input = sources[task.output_path].model_input
        source_view = model_input.restore(model_input.image)  # what the model saw, at the result's size
        box = _judged_box(sources[task.output_path])  # an inpainted image is judged where it could change
        judged = gates.judge(outcome.image.crop(box), source_view.crop(box), truncated)
        history = attempts.by_output.setdefault(task.output_path, [])
        history.append({"attempt": task.attempt, "seed": task.generation_seed, **judged})
        if judged["failed"] and gates.reroll_may_help(judged, task.attempt):
            attempts.rerolls.append((task.next_attempt(), sources[task.output_path]))
            continue
        quality = verdict(gates, attempts.by_output.pop(task.output_path))
        guidance = guidance_parameters(pipeline, task.model.guidance_scale)
        record = _record(outcome, sources[task.output_path], pipeline_info, cost, truncated, quality)
        result = ImageResult(task, "generated", record=record)
        parameters = _parameters_text(task, record, pipeline_info, guidance)
        _keep_computed_controls(task, sources[task.output_path])
        writer.submit(result, outcome.image, parameters, _beside(source_view, sources[task.output_path]))
        yield result


def _record(
    outcome: _Outcome, source: _Source, pipeline_info: dict, cost: _BatchCost, prompt_truncated: bool, quality: dict
) -> ResultRecord:
    task, image, spec = outcome.task, outcome.image, outcome.task.model
    return ResultRecord(
        key=task.key,
        prompt=task.prompt,
        negative_prompt=task.negative_prompt,
        prompt_template=task.prompt_template if task.prompt_template != task.prompt else None,
        model=spec.name,
        # Local sources by their folder or file name only: records carry no local paths.
        model_source=f"{spec.source_kind}:{spec.source if spec.source_kind == 'hub_id' else Path(spec.source).name}",
        model_hash=pipeline_info["model_hash"],
        scheduler=pipeline_info["scheduler"],
        dtype=pipeline_info["dtype"],
        quantize=spec.quantize,
        prompt_weighting=spec.prompt_weighting,
        safety_checker=pipeline_info["safety_checker"],
        device=pipeline_info["device"],
        seed=task.generation_seed,
        attempt=task.attempt,
        quality=quality,
        run_seed=task.run_seed,
        strength=spec.strength,
        num_inference_steps=spec.num_inference_steps,
        guidance_scale=spec.guidance_scale,
        source_file=task.source_file or Path(task.source_path).name,
        variant=task.variant,
        roll=task.roll,
        label=task.label,
        caption=task.caption,
        source_sha256=task.source.sha256,
        source_bytes=task.source.size,
        source_mtime_ns=task.source.mtime_ns,
        source_size=f"{source.original_size[0]}x{source.original_size[1]}",
        model_input_size="{}x{}".format(*source.model_input.image.size),
        output_size=f"{image.width}x{image.height}",
        pipeline_load_seconds=round(cost.load_seconds / cost.images, 4),
        inference_seconds=round(cost.batch_seconds / cost.images, 4),
        total_seconds=round((cost.load_seconds + cost.batch_seconds) / cost.images, 4),
        batch_size=cost.images,
        fallback=",".join(outcome.fallbacks) or "none",
        vram_peak_allocated_mb=outcome.memory.get("vram_peak_allocated_mb"),
        vram_peak_reserved_mb=outcome.memory.get("vram_peak_reserved_mb"),
        rss_peak_mb=round(_rss_peak_mb(), 1),
        output_file=location(task.output_path).name,
        fingerprint=task.fingerprint,
        prompt_truncated=prompt_truncated,
        loras=pipeline_info.get("loras") or None,  # absent for an entry without adapters, as in older records
        embeddings=pipeline_info.get("embeddings") or None,  # so for an entry without embeddings
        pairs=_pairs_record(task) or None,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )


CONTROLS_DIR = ".controls"  # computed control images, beside the results they made


def computed_control_path(task: ImageTask, role: str):
    """Where a computed control image (canny) is kept: `.controls/<result stem>.<type>.png` beside the result."""
    result = location(task.output_path)
    return result.parent / CONTROLS_DIR / f"{result.stem}.{role}.png"


def _pairs_record(task: ImageTask) -> list[dict]:
    """The record's `pairs`: each mask and control image, a control image once for each ControlNet reading it (with
    that ControlNet and its scale), then the roles run without."""
    readers: dict[str, list] = {}
    for controlnet in active_controlnets(task):
        readers.setdefault(controlnet.control, []).append(controlnet)
    rows = []
    for pair in task.pairs:
        row = {"role": pair.role}
        if pair.computed:
            row["file"] = f"{CONTROLS_DIR}/{computed_control_path(task, pair.role).name}"
        else:
            row |= {"file": Path(pair.path).name, "sha256": pair.sha256}
        rows += [row | {"controlnet": c.name, "scale": c.scale} for c in readers.get(pair.role, [])] or [row]
    return rows + [{"role": role, "run_without": True} for role in task.unpaired]


def _keep_computed_controls(task: ImageTask, source: _Source) -> None:
    """Write the control images computed for the task (canny) beside its result, at the result's size."""
    for pair in task.pairs:
        if pair.computed:
            buffer = io.BytesIO()
            source.model_input.restore(source.controls[pair.role]).save(buffer, format="PNG")
            write_bytes_atomic(computed_control_path(task, pair.role), buffer.getvalue())


def _prompt_too_long(pipeline, prompt: str, weighted: bool) -> bool:
    """Whether the model reads only the start of the prompt, as its family defines it (families.prompt_truncated:
    CLIP's 77 tokens for SD and SDXL, T5's max_sequence_length for SD3 and Flux.1); emphasis marks are not tokens
    when prompt weighting reads them."""
    return prompt_truncated(pipeline, plain_text(prompt) if weighted else prompt)


def _parameters_text(task: ImageTask, record: ResultRecord, pipeline_info: dict, guidance: dict) -> str:
    """`guidance`: the `CFG scale` entry, or Flux.1's `CFG scale: 1, Distilled CFG Scale: ...` (guidance_parameters)."""
    settings = {
        "Steps": task.model.num_inference_steps,
        "Sampler": a1111_sampler(pipeline_info["scheduler"], pipeline_info["karras_sigmas"]),
        **guidance,
        "Seed": task.generation_seed,
        "Size": record.output_size,
        "Model hash": pipeline_info["model_hash"],
        "Model": task.model.name,
        "Denoising strength": task.model.strength,
        "Lora hashes": _lora_hashes(pipeline_info.get("loras") or []),
        "TI hashes": _ti_hashes(pipeline_info.get("embeddings") or [], task.prompt, task.negative_prompt),
        "Mask blur": task.model.inpaint.mask_blur if task.model.inpaint and task.mask else None,
        # A1111's setting for brackets read as written (it applies emphasis by default), where the texts hold any.
        "Emphasis": None if task.model.prompt_weighting or not _brackets(task) else "None",
    }
    # sd-webui-controlnet's way: one `ControlNet N` entry per unit, its module (control type), model and weight.
    for index, controlnet in enumerate(active_controlnets(task)):
        unit = f"Module: {controlnet.control}, Model: {controlnet.name}, Weight: {controlnet.scale:g}"
        settings[f"ControlNet {index}"] = unit  # a1111_parameters quotes it, as it holds commas
    # A1111 carries a LoRA's weight only as a `<lora:name:weight>` tag in the prompt (it strips the tags before
    # encoding), so the tags go there: pasted into A1111, the parameters apply the same adapters.
    tags = " ".join(f"<lora:{lora['name']}:{lora['weight']:g}>" for lora in pipeline_info.get("loras") or [])
    prompt = f"{task.prompt} {tags}" if tags else task.prompt
    return a1111_parameters(prompt, task.negative_prompt, {k: v for k, v in settings.items() if v is not None})


def _brackets(task: ImageTask) -> bool:
    return any(mark in f"{task.prompt}{task.negative_prompt}" for mark in "()[]")


def _lora_hashes(loras: list[dict]) -> str | None:
    """A1111's `Lora hashes` value, "name: hash, name2: hash2" (names without `:` or `,`, as A1111 writes them)."""
    pairs = [f"{lora['name'].replace(':', '').replace(',', '')}: {lora['hash']}" for lora in loras if lora["hash"]]
    return ", ".join(pairs) or None


def _ti_hashes(embeddings: list[dict], prompt: str, negative_prompt: str) -> str | None:
    """A1111's `TI hashes` value, "token: hash, ...", for the embeddings the prompt or negative prompt uses, as A1111
    lists only those (modules/sd_hijack_clip.py: `used_embeddings`, names without `:` or `,`). A token is used where
    the text holds it in any case: the CLIP tokenizer reads the text in lower case."""
    text = f"{prompt}\n{negative_prompt}".lower()
    pairs = [
        f"{embedding['token'].replace(':', '').replace(',', '')}: {embedding['hash']}"
        for embedding in embeddings
        if embedding["hash"] and embedding["token"] in text
    ]
    return ", ".join(pairs) or None


def _not_ours_to_replace(task: ImageTask, record: ResultRecord | None) -> str | None:
    """Why the file at the task's output path (whose record is `record`) must not be overwritten, or None: only a
    missing file or this image's own earlier result may be replaced; anything else is the user's."""
    if record is None and not location(task.output_path).exists():
        return None
    if record is None:
        return (
            f"a file not made by this project is at {task.output_path}: move it, or choose another output folder "
            "(RANDOM_DIFFUSION_OUTPUT_DIR)."
        )
    if (record.key, record.variant) != (task.key, task.variant):
        return (
            f"{task.output_path} holds the result of another image ({record.key!r}), not of {task.key!r}: move it, "
            "or choose another output folder (RANDOM_DIFFUSION_OUTPUT_DIR)."
        )
    return None


def _reused(task: ImageTask, record: ResultRecord) -> ImageResult:
    """The identical result already on disk, with its preview."""
    result = open_image_copy(task.output_path)
    try:
        source = load_rgb(task.source_path, min_side=PREVIEW_HEIGHT)
    except ImageLoadError:
        source = None  # the result is still current; only its preview lacks the source
    return ImageResult(task, "reused", record=record, preview=_preview([("source", source)] if source else [], result))


def _beside(source_view: Image.Image, source: _Source) -> list[tuple[str, Image.Image]]:
    """What a preview shows before the result: the source as the model saw it, then its mask and control images."""
    restore = source.model_input.restore
    shown = [("source", source_view)] + ([("mask", restore(source.mask))] if source.mask is not None else [])
    return shown + [(role, restore(control)) for role, control in source.controls.items()]


def _preview(beside: list[tuple[str, Image.Image]], result: Image.Image) -> str:
    """The source (with its mask and controls) beside the result, each labelled, small enough for Dagster's event
    log."""
    labels, images = zip(*[*beside, ("result", result)], strict=True)
    return thumbnail_data_uri(image_strip(list(images), height=PREVIEW_HEIGHT, labels=list(labels)), size=512)


def _record_outcomes(results: list[ImageResult]) -> None:
    """Keep a failure file per image with a failed result (read by the report); clear it once all of the image's
    results (its variants) succeed."""
    by_image: dict[tuple[str, str], list[ImageResult]] = {}
    for result in results:
        folder = location(result.task.output_path).parent
        for _ in range(result.task.key.count("/")):  # a result in a subfolder: the output folder is above it
            folder = folder.parent
        by_image.setdefault((str(folder), result.task.key), []).append(result)
    for (output_dir, key), image_results in by_image.items():
        failed = [result for result in image_results if result.status == "failed"]
        if failed:
            task, variants = failed[0].task, tuple(sorted({result.task.variant for result in failed}))
            write_failure(output_dir, FailureRecord(key, task.model.name, failed[0].error, task.source_path, variants))
        else:
            clear_failure(output_dir, key)


def _rss_peak_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
