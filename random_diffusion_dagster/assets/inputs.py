"""The inputs users edit: the images folder, the prompts file and the model catalog."""

import dagster as dg
import pandas as pd
from PIL import Image

from ..engine.catalog import ModelSpec
from ..engine.images import ImageLoadError, image_strip, load_rgb, probe_image, thumbnail_data_uri
from ..engine.prompts import require_prompts
from ..partitions import images_partitions, partition_changes
from ..resources import DatasetResource

# Dagster's documentation recommends at most this many partitions per asset; it enforces no limit.
MAX_RECOMMENDED_PARTITIONS = 100_000


def partition_ceiling_warning(count: int) -> str | None:
    """What to tell a user whose folder has more images than Dagster recommends partitions for one asset."""
    if count <= MAX_RECOMMENDED_PARTITIONS:
        return None
    return (
        f"{count:,} images partitions: Dagster recommends at most {MAX_RECOMMENDED_PARTITIONS:,} partitions per "
        "asset (it enforces no limit, but partition views, status queries and backfills slow down past it). "
        "All images are still registered. To stay within it, split the images into folders of at most "
        f"{MAX_RECOMMENDED_PARTITIONS:,} and serve each from its own Dagster deployment (its own DAGSTER_HOME "
        "and RANDOM_DIFFUSION_IMAGES_DIR); going past it is at your own risk."
    )


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
    warning = partition_ceiling_warning(len(found))
    if warning:
        context.log.warning(warning)
        metadata["warning"] = dg.MetadataValue.text(warning)
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
    changes = partition_changes(instance.get_dynamic_partitions(images_partitions.name), keys)
    if changes.new:
        instance.add_dynamic_partitions(images_partitions.name, changes.new)
    for key in changes.gone:
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
