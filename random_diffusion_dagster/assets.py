"""The assets: source images, prompts, the model catalog, one diffused image per partition, a report."""

import os

import pandas as pd
import dagster as dg
from PIL import Image

from .engine.catalog import ModelSpec
from .engine.choice import plan_job
from .engine.images import ImageLoadError, file_sha256, image_strip, load_rgb, probe_image, thumbnail_data_uri
from .engine.prompts import require_prompts
from .engine.report import build_report
from .partitions import images_partitions
from .resources import DatasetResource, DiffusionEngineResource

# A backfill of N partitions runs as ceil(N / this) runs: each run pays process start,
# imports and model loads once, so bigger is cheaper, while a failure redoes less when smaller.
MAX_PARTITIONS_PER_RUN = int(os.environ.get("RANDOM_DIFFUSION_MAX_PARTITIONS_PER_RUN", "32"))


class PromptListConfig(dg.Config):
    """Override the prompt file for one run, as the old server took {"prompt_list": [...]}."""

    prompt_list: list[str] | None = None


@dg.asset(group_name="inputs", description="The images found in the images folder; registers one `images` partition each.")
def source_images(context: dg.AssetExecutionContext, dataset: DatasetResource) -> list[dict]:
    found, skipped = [], []
    for source in dataset.source_files():
        try:
            image_format, (width, height) = probe_image(source.path)
        except ImageLoadError as exc:
            skipped.append({"name": source.name, "reason": str(exc)})
            continue
        found.append(
            {"key": source.partition_key, "name": source.name, "path": source.path, "format": image_format,
             "width": width, "height": height, "bytes": source.size}
        )
    _sync_partitions(context.instance, [row["key"] for row in found])
    table = pd.DataFrame(found, columns=["key", "name", "format", "width", "height", "bytes"])
    metadata = {
        "count": len(found),
        "total_bytes": int(table["bytes"].sum()) if found else 0,
        "images": dg.MetadataValue.md(table.to_markdown(index=False) if found else "_no images_"),
        "skipped": len(skipped),
        "images_dir": dg.MetadataValue.path(dataset.images_dir),
    }
    if skipped:
        metadata["skipped_files"] = dg.MetadataValue.md(pd.DataFrame(skipped).to_markdown(index=False))
    previews = _preview_images([row["path"] for row in found], count=8)
    if previews:
        metadata["preview"] = dg.MetadataValue.md(f"![preview]({thumbnail_data_uri(image_strip(previews), size=768)})")
    context.add_output_metadata(metadata)
    return found


def _preview_images(paths: list[str], count: int) -> list[Image.Image]:
    """The first `count` images that decode (bombs and truncated files are shown in the run, not here)."""
    previews = []
    for path in paths:
        if len(previews) == count:
            break
        try:
            previews.append(load_rgb(path, min_side=96))
        except ImageLoadError:
            continue
    return previews


def _sync_partitions(instance: dg.DagsterInstance, keys: list[str]) -> None:
    """Add partitions for new images and delete those whose file is gone (their history stays)."""
    existing = set(instance.get_dynamic_partitions(images_partitions.name))
    new = [k for k in keys if k not in existing]
    gone = sorted(existing - set(keys))
    if new:
        instance.add_dynamic_partitions(images_partitions.name, new)
    for key in gone:
        instance.delete_dynamic_partition(images_partitions.name, key)


@dg.asset(group_name="inputs", description="Prompts to choose from: the prompts file, or `prompt_list` in run config.")
def prompt_list(context: dg.AssetExecutionContext, config: PromptListConfig, dataset: DatasetResource) -> list[str]:
    if config.prompt_list is not None:
        prompts = require_prompts(config.prompt_list, source="run config `prompt_list`")
        source = "run config"
    else:
        prompts = dataset.prompts()
        source = dataset.prompts_file
    context.add_output_metadata(
        {"count": len(prompts), "source": source,
         "prompts": dg.MetadataValue.md("\n".join(f"1. {p}" for p in prompts))}
    )
    return prompts


@dg.asset(group_name="inputs", description="The diffusion models to choose from, with their per-model defaults.")
def model_catalog(context: dg.AssetExecutionContext, dataset: DatasetResource) -> list[ModelSpec]:
    catalog = dataset.catalog()
    table = pd.DataFrame(
        [{"name": m.name, "source": f"{m.source_kind}: {m.source}" + (f" (config: {m.config})" if m.config else ""),
          "resolution": m.resolution,
          "steps": m.num_inference_steps, "strength": m.strength, "guidance": m.guidance_scale,
          "scheduler": m.scheduler or "(model's own)", "dtype": m.dtype} for m in catalog]
    )
    context.add_output_metadata(
        {"count": len(catalog), "catalog_file": dg.MetadataValue.path(dataset.models_file),
         "models": dg.MetadataValue.md(table.to_markdown(index=False))}
    )
    return catalog


PER_PARTITION_FIELDS = (
    "prompt", "model", "seed", "strength", "num_inference_steps", "guidance_scale", "source_size",
    "output_size", "pipeline_load_seconds", "inference_seconds", "total_seconds", "vram_peak_allocated_mb",
    "vram_peak_reserved_mb", "rss_peak_mb", "device", "scheduler", "batch_size", "fallback", "prompt_truncated", "safety_checker",
    "fingerprint",
)


@dg.asset(
    partitions_def=images_partitions,
    deps=[source_images],
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=MAX_PARTITIONS_PER_RUN),
    pool="gpu",
    # Celery routes this step to GPU workers; Kubernetes gives its pod one GPU on a GPU node.
    op_tags={
        "dagster-celery/queue": "gpu",
        "dagster-k8s/config": {
            "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}},
            "pod_spec_config": {
                "node_selector": {"nvidia.com/gpu.present": "true"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            },
        },
    },
    group_name="diffusion",
    description="One img2img result per source image: `<output dir>/<partition key>.png`.",
)
def diffused_image(
    context: dg.AssetExecutionContext,
    dataset: DatasetResource,
    engine: DiffusionEngineResource,
    prompt_list: list[str],
    model_catalog: list[ModelSpec],
) -> dg.MaterializeResult:
    files = dataset.files_by_key()
    jobs, missing = [], {}
    for key in context.partition_keys:
        source = files.get(key)
        if source is None:
            missing[key] = f"partition {key!r} has no source file in {dataset.images_dir} any more"
            continue
        jobs.append(plan_job(key, source.path, file_sha256(source.path), prompt_list, model_catalog,
                             dataset.seed, dataset.output_dir))
    from .engine.runner import run_jobs  # imports torch only when there is work

    pipelines = engine.pipelines(context.log.info)
    summary = run_jobs(jobs, pipelines, engine.batch_size_on(pipelines.device), context.log.info, engine.progress_bar)
    for result in summary.results:
        if result.status == "failed":
            continue
        # Results written by older versions may lack newer fields.
        metadata = {name: result.record[name] for name in PER_PARTITION_FIELDS if result.record.get(name) is not None}
        metadata["reused_existing"] = result.status == "reused"
        metadata["output_path"] = dg.MetadataValue.path(result.record["output_path"])
        metadata["preview"] = dg.MetadataValue.md(f"![result]({result.preview})")
        if result.record.get("prompt_truncated"):
            context.log.warning(f"{result.job.key}: prompt longer than the text encoder reads; only its start was used")
        context.add_asset_metadata(metadata, partition_key=result.job.key)
    failures = {r.job.key: r.error for r in summary.with_status("failed")} | missing
    run_metadata = {
        "generated": len(summary.with_status("generated")),
        "reused": len(summary.with_status("reused")),
        "failed": len(failures),
        "pipeline_loads": summary.pipeline_loads,
        "batch_size": summary.batch_size,
        "images_per_second": round(summary.images_per_second, 3),
        "device": summary.device,
    }
    if failures:
        raise dg.Failure(
            description=f"{len(failures)} of {len(context.partition_keys)} images failed; finished images "
            "are saved and a rerun reuses them:\n" + "\n".join(f"- {k}: {e}" for k, e in failures.items()),
            metadata=run_metadata,
        )
    return dg.MaterializeResult(metadata=run_metadata)


# Refresh after diffused images change, but (unlike `eager()`) do not wait for every
# partition: one image that keeps failing must not block the report forever.
REPORT_AUTOMATION = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("after diffused images update")


@dg.asset(
    deps=[diffused_image],
    automation_condition=REPORT_AUTOMATION,
    group_name="diffusion",
    description="Per-model summary of every diffused image and a contact sheet of sources beside results.",
)
def diffusion_report(context: dg.AssetExecutionContext, dataset: DatasetResource) -> dg.MaterializeResult:
    keys = context.instance.get_dynamic_partitions(images_partitions.name)
    report = build_report(dataset.output_dir, keys)
    metadata = {
        "images": report.image_count,
        "failures": report.failure_count,
        "summary": dg.MetadataValue.md(report.summary.to_markdown(index=False)),
        "contact_sheet_path": dg.MetadataValue.path(str(report.contact_sheet_path)),
        "summary_csv": dg.MetadataValue.path(str(report.summary_csv_path)),
    }
    if report.contact_sheet is not None:
        metadata["contact_sheet"] = dg.MetadataValue.md(
            f"![contact sheet]({thumbnail_data_uri(report.contact_sheet, size=1024)})"
        )
    if report.failure_count:
        metadata["failed_images"] = dg.MetadataValue.md(report.failures.to_markdown(index=False))
    return dg.MaterializeResult(metadata=metadata)
