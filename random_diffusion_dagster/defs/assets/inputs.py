"""The inputs users edit: the images folder, the prompts file and the model catalog."""

import dagster as dg
from PIL import Image
from pydantic import Field, model_validator

from ...engine.catalog import ModelSpec
from ...engine.images import ImageLoadError, image_strip, load_rgb, probe_image, thumbnail_data_uri
from ...engine.pipelines import problem_before_loading
from ...engine.plan import catalog_version
from ..metadata import table
from ..partitions import (
    images_partitions,
    models_partitions,
    multi_key_problem,
    partition_ceiling_warning,
    sync_dynamic_partitions,
)
from ..pools import ensure_gpu_pool_limit
from ..prompt_sets import SUBMITTED_BY_TAG, check_templates, current_prompt_set, prompt_set_metadata
from ..resources import DatasetResource
from ..source_versions import MODELS_FILE, PROMPTS_FILE, file_version, report_what_was_read, version_event

IMAGE_COLUMNS = {"key": "string", "name": "string", "format": "string", "width": "int", "height": "int", "bytes": "int"}
MODEL_COLUMNS = {
    "name": "string",
    "source": "string",
    "weight": "float",
    "resolution": "int",
    "steps": "int",
    "strength": "float",
    "guidance": "float",
    "scheduler": "string",
    "dtype": "string",
    "prompt_weighting": "bool",
}


class PromptListConfig(dg.Config):
    """Submit a prompt list (`{"prompt_list": [...]}`): it stays current until the prompts file changes or another
    list is submitted."""

    prompt_list: list[str] | None = None
    use_prompts_file: bool = Field(
        default=False, description="Go back to the prompts file now, even if a submitted list is current."
    )

    @model_validator(mode="after")
    def _one_source(self) -> "PromptListConfig":
        if self.prompt_list is not None and self.use_prompts_file:
            raise ValueError(
                "prompt_list and use_prompts_file: true ask for two different prompt lists: give one of them"
            )
        return self


@dg.asset(
    group_name="inputs",
    description="The images found in the images folder; registers their `images` partitions (one per image, "
    "folder or shard: RANDOM_DIFFUSION_PARTITIONS).",
)
def source_images(context: dg.AssetExecutionContext, dataset: DatasetResource) -> list[dict]:
    scan = dataset.scan()
    found, skipped = [], [{"name": entry.name, "reason": entry.reason} for entry in scan.skipped]
    for source in scan.files:
        try:
            image_format, (width, height) = probe_image(source.path)
        except ImageLoadError as exc:
            skipped.append({"name": source.name, "reason": str(exc)})
            continue
        found.append(
            {
                "key": source.partition_key,
                "name": source.name,
                "path": source.path,
                "format": image_format,
                "width": width,
                "height": height,
                "bytes": source.size,
            }
        )
    ensure_gpu_pool_limit(context.instance)  # before any run over these partitions can be queued
    partitions = list(dataset.granularity.group(row["key"] for row in found))
    sync_dynamic_partitions(context.instance, images_partitions, partitions)
    metadata = {
        "count": len(found),
        "partitions": len(partitions),
        "total_bytes": sum(row["bytes"] for row in found),
        "images": table(found, IMAGE_COLUMNS),
        "skipped": len(skipped),
        "images_dir": dg.MetadataValue.path(dataset.images_dir),
    }
    for entry in skipped:
        context.log.warning(f"Skipped {entry['name']}: {entry['reason']}")
    if not scan.files and scan.unscanned_folders:
        folders = ", ".join(f"{name}/" for name in scan.unscanned_folders[:5])
        context.log.warning(
            f"No images in {dataset.images_dir} itself, and its subfolders ({folders}) are not scanned: "
            "RANDOM_DIFFUSION_RECURSIVE=0 (the dataset resource's `recursive`) leaves them out. Set it to 1 to take "
            "their images."
        )
    warning = partition_ceiling_warning(len(partitions))
    if warning:
        context.log.warning(warning)
        metadata["warning"] = dg.MetadataValue.text(warning)
    if skipped:
        metadata["skipped_files"] = table(skipped, {"name": "string", "reason": "string"})
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


@dg.asset(
    deps=[PROMPTS_FILE],
    group_name="inputs",
    description="The current prompt list: a submitted list (run config `prompt_list`) until the prompts file "
    "changes or another list is submitted, else the prompts file.",
)
def prompt_list(
    context: dg.AssetExecutionContext, config: PromptListConfig, dataset: DatasetResource
) -> dg.Output[list[str]]:
    prompt_set = current_prompt_set(
        context.instance,
        dataset,
        config.prompt_list,
        context.run.tags.get(SUBMITTED_BY_TAG),
        context.run.run_id,
        use_prompts_file=config.use_prompts_file,
    )
    check_templates(prompt_set, dataset)  # a broken template fails here, before any image
    version = file_version(dataset.prompts_file)
    if version:  # what this run read, so the stored list's provenance names that file content
        report_what_was_read(context, [version_event(PROMPTS_FILE, version)])
    return dg.Output(
        prompt_set.prompts, data_version=dg.DataVersion(prompt_set.version), metadata=prompt_set_metadata(prompt_set)
    )


@dg.asset(
    deps=[MODELS_FILE],
    group_name="inputs",
    description="The diffusion models to choose from, with their per-model defaults.",
)
def model_catalog(context: dg.AssetExecutionContext, dataset: DatasetResource) -> dg.Output[list[ModelSpec]]:
    catalog = dataset.catalog()
    version = file_version(dataset.models_file)
    if version:
        report_what_was_read(context, [version_event(MODELS_FILE, version)])
    rows = [
        {
            "name": m.name,
            "source": f"{m.source_kind}: {m.source}"
            + (f" (config: {m.config})" if m.config else "")
            + "".join(f" + LoRA {lora.name} ({lora.weight:g})" for lora in m.loras)
            + "".join(f" + embedding {embedding.name} ({embedding.token})" for embedding in m.embeddings),
            "weight": m.weight,
            "resolution": m.resolution,
            "steps": m.num_inference_steps,
            "strength": m.strength,
            "guidance": m.guidance_scale,
            "scheduler": m.scheduler or "(model's own)",
            "dtype": m.dtype,
            "prompt_weighting": m.prompt_weighting,
        }
        for m in catalog
    ]
    metadata = {
        "count": len(catalog),
        "catalog_file": dg.MetadataValue.path(dataset.models_file),
        "models": table(rows, MODEL_COLUMNS),
    }
    if problems := {m.name: problem for m in catalog if (problem := problem_before_loading(m))}:
        for problem in problems.values():
            context.log.warning(f"{problem} The images that draw it will fail; the others run.")
        metadata["models_that_will_fail"] = table(
            [{"name": name, "problem": problem} for name, problem in problems.items()],
            {"name": "string", "problem": "string"},
        )
    _sync_model_partitions(context, [m.name for m in catalog])
    return dg.Output(catalog, data_version=dg.DataVersion(catalog_version(catalog)), metadata=metadata)


def _sync_model_partitions(context: dg.AssetExecutionContext, names: list[str]) -> None:
    """The comparison grid's `models` column keys follow the catalog: a removed model removes its column."""
    usable = []
    for name in names:
        problem = multi_key_problem(name)
        if problem:
            context.log.warning(f"Model {name!r} gets no comparison column: {problem}; rename it in the catalog.")
        else:
            usable.append(name)
    sync_dynamic_partitions(context.instance, models_partitions, usable)
