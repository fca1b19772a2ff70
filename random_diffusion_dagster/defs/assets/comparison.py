"""`model_comparison` and `comparison_report`: what every catalog model makes of chosen images (an X/Y plot).

Pick images by launching `model_comparison` partitions: image keys x models, from the UI (a backfill)
or `random-diffusion compare IMAGE ...`. A cell is one image with one model, made from the image's own
drawn prompt and seed, so the cell of the image's drawn model equals its `diffused_image` result.
Strength and steps values in run config are extra grid axes mapped inside a cell (Dagster's
multi-partitions have two dimensions): a cell makes one image per (strength, steps) combination.
"""

import dagster as dg
from pydantic import Field

from ...engine.catalog import ModelSpec
from ...engine.comparison import (
    SUMMARY_COLUMNS,
    ComparisonError,
    Variant,
    cell_tasks,
    comparison_variants,
    draw_grid,
    grid_path,
    model_summary,
    write_grid,
)
from ...engine.images import thumbnail_data_uri
from ...engine.results import read_record
from ..metadata import partition_metadata, record_partition_metadata, run_figures, table
from ..partitions import comparison_partitions, images_partitions, models_partitions
from ..pools import GPU_POOL
from ..resources import DatasetResource, DiffusionEngineResource
from ..source_versions import IMAGE_FILES
from .diffused_image import DIFFUSION_KINDS, GPU_STEP_TAGS

# Summed over a cell's variants (each variant's share of its batch), or the cell's peak.
SUMMED_FIGURES = ("pipeline_load_seconds", "inference_seconds", "total_seconds")
PEAK_FIGURES = ("rss_peak_mb", "vram_peak_allocated_mb", "vram_peak_reserved_mb")
VARIANT_COLUMNS = {
    "label": "string",
    "strength": "float",
    "steps": "int",
    "inference_seconds": "float",
    "output_path": "string",
}
MAX_PREVIEW_GRIDS = 4


class ComparisonConfig(dg.Config):
    """The X/Y plot's optional axes beyond model: every (strength, steps) combination is made in every cell."""

    strengths: list[float] = Field(
        default=[], description="Denoising strengths to compare, each above 0 and at most 1; empty: each model's own."
    )
    steps: list[int] = Field(
        default=[], description="Inference step counts to compare, each at least 1; empty: each model's own."
    )


# A comparison cell is one image x one model; its `image` dimension holds the `images` partitions.
PER_IMAGE_ONLY = (
    "Model comparisons need one partition per image, and RANDOM_DIFFUSION_PARTITIONS={granularity}: compare with "
    "RANDOM_DIFFUSION_PARTITIONS=image and its own DAGSTER_HOME (results are shared through the output folder)."
)


def cell_image_and_model(key: str) -> tuple[str, str]:
    """(image key, model name) of a `model_comparison` partition key, given as a MultiPartitionKey or `image|model`."""
    multi = key if isinstance(key, dg.MultiPartitionKey) else comparison_partitions.get_partition_key_from_str(key)
    return multi.keys_by_dimension["image"], multi.keys_by_dimension["model"]


@dg.asset(
    partitions_def=comparison_partitions,
    deps=[IMAGE_FILES],
    # A backfill makes one run per image (or per model, whichever is fewer) over a contiguous range; each run
    # loads each of its models once. Ranged runs over both dimensions cover a rectangle of images x models.
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool=GPU_POOL,
    op_tags=GPU_STEP_TAGS,
    kinds=DIFFUSION_KINDS,
    group_name="comparison",
    description="Every catalog model on chosen images, with each image's own drawn prompt and seed: "
    "`<output dir>/comparisons/<image key>/<model>[-s<strength>][-steps<n>].png`. Run config `strengths` and "
    "`steps` add grid axes inside each image x model cell.",
)
def model_comparison(
    context: dg.AssetExecutionContext,
    config: ComparisonConfig,
    dataset: DatasetResource,
    engine: DiffusionEngineResource,
    prompt_list: list[str],
    model_catalog: list[ModelSpec],
) -> dg.MaterializeResult:
    if not dataset.granularity.per_image:
        raise dg.Failure(description=PER_IMAGE_ONLY.format(granularity=dataset.granularity))
    try:
        variants = comparison_variants(config.strengths, config.steps)
    except ComparisonError as exc:
        raise dg.Failure(description=f"model_comparison run config: {exc}") from None
    cells = {key: cell_image_and_model(key) for key in context.partition_keys}
    image_keys = list(dict.fromkeys(image for image, _ in cells.values()))
    files, missing = dataset.files_for(image_keys)
    planned, unreadable = dataset.planner(prompt_list, model_catalog).plan(files)
    # Each image's first result, planned exactly as diffused_image plans it (variants draw other prompts and seeds).
    by_image = {task.key: task for task in planned if task.variant == 0}
    by_model = {spec.name: spec for spec in model_catalog}
    failures: dict[str, str] = {}
    tasks_by_cell = {}
    for key, (image, model) in cells.items():
        if image not in by_image:
            failures[key] = (missing | unreadable)[image]
        elif model not in by_model:
            failures[key] = (
                f"model {model!r} is no longer in the catalog; rematerialize model_catalog to drop its column"
            )
        else:
            try:  # every combination checked before any model loads
                tasks_by_cell[key] = cell_tasks(by_image[image], by_model[model], variants, dataset.output_dir)
            except ComparisonError as exc:
                raise dg.Failure(description=f"model_comparison run config: {exc}") from None
    summary = engine.run([t for tasks in tasks_by_cell.values() for t in tasks], context.log.info)

    results = {r.task.output_path: r for r in summary.results}
    finished = {}
    for key, tasks in tasks_by_cell.items():
        cell_results = [results[t.output_path] for t in tasks]
        errors = [r.error for r in cell_results if r.status == "failed"]
        if errors:
            failures[key] = "; ".join(errors)
        else:
            finished[key] = _cell_metadata(cell_results, variants)
    context.instance.add_run_tags(context.run.run_id, run_figures(summary, failures))
    if not failures:
        record_partition_metadata(context, finished)
        return dg.MaterializeResult()
    for key, metadata in finished.items():  # a failing step records none of its partitions: record these first
        context.log_event(dg.AssetMaterialization(context.asset_key, partition=key, metadata=metadata))
    raise dg.Failure(
        description=f"{len(failures)} of {len(cells)} comparison cells failed; the {len(finished)} finished are "
        "saved and recorded, and a rerun reuses them:\n" + "\n".join(f"- {k}: {e}" for k, e in failures.items()),
    )


def _cell_metadata(results: list, variants: list[Variant]) -> dict:
    """The first variant's partition metadata (as diffused_image shows it), with figures over all variants."""
    metadata = partition_metadata(results[0])
    rows = [
        {
            "label": v.label,
            "strength": r.record.strength,
            "steps": r.record.num_inference_steps,
            "inference_seconds": r.record.inference_seconds,
            "output_path": r.task.output_path,
        }
        for v, r in zip(variants, results, strict=True)
    ]
    metadata["variants"] = table(rows, VARIANT_COLUMNS)
    # Read by comparison_report: row label -> file, the settings this cell was last compared with.
    metadata["variant_files"] = dg.MetadataValue.json({row["label"]: row["output_path"] for row in rows})
    if len(results) > 1:
        records = [r.record for r in results]
        for name in SUMMED_FIGURES:
            metadata[name] = round(sum(getattr(record, name) for record in records), 4)
        for name in PEAK_FIGURES:
            values = [getattr(record, name) for record in records if getattr(record, name) is not None]
            if values:
                metadata[name] = max(values)
        metadata["reused_existing"] = all(r.status == "reused" for r in results)
    return metadata


@dg.asset(
    deps=[model_comparison],
    group_name="comparison",
    description="Per compared image a labelled grid (source, then one column per model; one row per strength/steps "
    "combination) at `<output dir>/comparisons/<image key>/grid.png`, and per-model timing and memory.",
)
def comparison_report(context: dg.AssetExecutionContext, dataset: DatasetResource) -> dg.MaterializeResult:
    instance = context.instance
    models = instance.get_dynamic_partitions(models_partitions.name)
    done = {cell_image_and_model(k) for k in instance.get_materialized_partitions(model_comparison.key)}
    images = [
        key
        for key in instance.get_dynamic_partitions(images_partitions.name)
        if any((key, model) in done for model in models)
    ]
    sources = {file.partition_key: file.path for file in dataset.files_for(images)[0]}
    grids, records, cells_per_model, previews = [], [], {}, []
    for image in images:
        variant_files = {}
        for model in models:
            if (image, model) in done:
                files = _latest_variant_files(instance, image, model)
                variant_files[model] = files
                cells_per_model[model] = cells_per_model.get(model, 0) + 1
                records += [r for r in map(read_record, files.values()) if r is not None]
        rows = list(dict.fromkeys(label for files in variant_files.values() for label in files))
        cells = {(model, label): path for model, files in variant_files.items() for label, path in files.items()}
        grid = draw_grid(sources.get(image), models, rows, cells)
        path = grid_path(dataset.output_dir, image)
        write_grid(grid, path)
        grids.append({"image": image, "path": str(path), "columns": grid.column_labels, "rows": grid.row_labels})
        if len(previews) < MAX_PREVIEW_GRIDS:
            previews.append(f"**{image}**\n\n![{image}]({thumbnail_data_uri(grid.image, size=768)})")
    summary = model_summary(records, cells_per_model)
    metadata = {
        "images": len(grids),
        "models": len(models),
        "grids": table(
            [{**g, "columns": " | ".join(g["columns"]), "rows": " | ".join(g["rows"])} for g in grids],
            {"image": "string", "path": "string", "columns": "string", "rows": "string"},
        ),
        # The labels drawn on each grid: columns (source, then models) and rows (settings).
        "labels": dg.MetadataValue.json({g["image"]: {"columns": g["columns"], "rows": g["rows"]} for g in grids}),
        "summary": table(summary.to_dict("records"), SUMMARY_COLUMNS),
    }
    if previews:
        metadata["grid"] = dg.MetadataValue.md("\n\n".join(previews))
    for g in grids:
        context.log.info(f"Comparison grid for {g['image']}: {g['path']}")
    return dg.MaterializeResult(metadata=metadata)


def _latest_variant_files(instance: dg.DagsterInstance, image: str, model: str) -> dict[str, str]:
    """Row label -> image file of a cell's latest materialization (the settings it was last compared with)."""
    key = dg.MultiPartitionKey({"image": image, "model": model})
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=model_comparison.key, asset_partitions=[key]), limit=1
    ).records
    if not records:
        return {}
    value = records[0].asset_materialization.metadata.get("variant_files")
    return dict(value.value) if value is not None else {}
