"""`model_comparison` and `comparison_report`: what every catalog model makes of chosen images (an X/Y plot).

Pick images by launching `model_comparison` partitions: `images` partitions x models, from the UI (a backfill)
or `random-diffusion compare IMAGE ...`. A cell is one partition's images with one model, each made from the
image's own drawn prompt and seed, so the cell of an image's drawn model equals its `diffused_image` result. With
image partitions a cell is one image; with folder or shard partitions (RANDOM_DIFFUSION_PARTITIONS) it is the images
of that folder or shard that run config `images` names, or all of them.
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
from ...engine.granularity import Granularity
from ...engine.images import thumbnail_data_uri
from ...engine.pairs import PairError
from ...engine.plan import ImageTask
from ...engine.results import read_record
from ..metadata import TABLE_ROWS, partition_metadata, record_partition_metadata, run_figures, table
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
CELL_HISTORY = 50  # a folder or shard cell's latest materializations the report merges (each names its images)


class ComparisonConfig(dg.Config):
    """The X/Y plot's optional axes beyond model: every (strength, steps) combination is made in every cell."""

    strengths: list[float] = Field(
        default=[], description="Denoising strengths to compare, each above 0 and at most 1; empty: each model's own."
    )
    steps: list[int] = Field(
        default=[], description="Inference step counts to compare, each at least 1; empty: each model's own."
    )
    images: list[str] = Field(
        default=[],
        description="With folder or shard partitions: the image keys (`cat/001`) to compare in each cell's folder or "
        "shard; empty: all of its images. `random-diffusion compare` sets it. Unused with image partitions.",
    )


def cell_image_and_model(key: str) -> tuple[str, str]:
    """(`images` partition key, model name) of a `model_comparison` partition key, given as a MultiPartitionKey or
    `image|model`; the first is an image's key, or a folder's or shard's."""
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
    try:
        variants = comparison_variants(config.strengths, config.steps)
    except ComparisonError as exc:
        raise dg.Failure(description=f"model_comparison run config: {exc}") from None
    granularity = dataset.granularity
    cells = {key: cell_image_and_model(key) for key in context.partition_keys}
    partitions = list(dict.fromkeys(partition for partition, _ in cells.values()))
    files, missing = dataset.files_for(partitions)
    if config.images and not granularity.per_image:
        named = set(config.images)
        files = [file for file in files if file.partition_key in named]
    planner = dataset.planner(prompt_list, model_catalog)
    planned, unreadable = planner.plan(files, with_pairs=False)  # each cell reads its own model's pairs (with_model)
    # Each image's first result, drawn exactly as diffused_image draws it (variants draw other prompts and seeds).
    by_image = {task.key: task for task in planned if task.variant == 0}
    images_of = granularity.group(file.partition_key for file in files)
    by_model = {spec.name: spec for spec in model_catalog}
    failures: dict[str, str] = {}
    tasks_by_cell: dict[str, dict[str, list[ImageTask]]] = {}  # cell -> image -> its tasks, one per variant
    for key, (partition, model) in cells.items():
        if partition not in images_of:
            failures[key] = missing.get(partition) or (
                f"none of the images run config `images` names is in {granularity.unit} {partition!r}"
            )
        elif model not in by_model:
            failures[key] = (
                f"model {model!r} is no longer in the catalog; rematerialize model_catalog to drop its column"
            )
        else:
            problems = {image: unreadable[image] for image in images_of[partition] if image not in by_image}
            tasks_by_cell[key] = {}
            for image in images_of[partition]:
                if image in by_image:
                    try:  # every combination checked before any model loads
                        task = planner.with_model(by_image[image], by_model[model])  # the pairs this model reads
                        tasks_by_cell[key][image] = cell_tasks(task, by_model[model], variants, dataset.output_dir)
                    except ComparisonError as exc:
                        raise dg.Failure(description=f"model_comparison run config: {exc}") from None
                    except PairError as exc:
                        problems[image] = str(exc)
            if problems:  # each names its image
                failures[key] = "; ".join(problems.values())
    tasks = [task for by_cell in tasks_by_cell.values() for image_tasks in by_cell.values() for task in image_tasks]
    summary = engine.run(tasks, context.log.info)

    results = {r.task.output_path: r for r in summary.results}
    finished = {}
    for key, by_cell in tasks_by_cell.items():
        cell_results = {image: [results[t.output_path] for t in image_tasks] for image, image_tasks in by_cell.items()}
        errors = [f"{image}: {r.error}" for image, rs in cell_results.items() for r in rs if r.status == "failed"]
        if errors:
            failures[key] = "; ".join(([failures[key]] if key in failures else []) + errors)
        done = {image: rs for image, rs in cell_results.items() if all(r.status != "failed" for r in rs)}
        if granularity.per_image and done and key not in failures:
            finished[key] = _cell_metadata(next(iter(done.values())), variants)
        elif not granularity.per_image and done:  # a folder's cell keeps what finished, as its results do
            finished[key] = _group_cell_metadata(done, variants, not_made=len(images_of[cells[key][0]]) - len(done))
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
    rows = [_variant_row(v, r) for v, r in zip(variants, results, strict=True)]
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


def _group_cell_metadata(done: dict[str, list], variants: list[Variant], not_made: int) -> dict:
    """A folder's or shard's cell: totals over its compared images, the first TABLE_ROWS results as a table, and
    `compared_files` (image -> row label -> file) for comparison_report."""
    results = [r for rs in done.values() for r in rs]
    made = [r for r in results if r.status != "reused"]
    metadata = {"images": len(done), "generated": len(made), "reused": len(results) - len(made), "not_made": not_made}
    for name in SUMMED_FIGURES:
        metadata[name] = round(sum(getattr(r.record, name) for r in made), 4)
    for name in PEAK_FIGURES:
        if values := [getattr(r.record, name) for r in made if getattr(r.record, name) is not None]:
            metadata[name] = max(values)
    rows = [
        {"image": image, **_variant_row(v, r)} for image, rs in done.items() for v, r in zip(variants, rs, strict=True)
    ]
    shown = f"variants (first {TABLE_ROWS} of {len(rows)})" if len(rows) > TABLE_ROWS else "variants"
    metadata[shown] = table(rows[:TABLE_ROWS], {"image": "string"} | VARIANT_COLUMNS)
    metadata["compared_files"] = dg.MetadataValue.json(
        {image: {v.label: r.task.output_path for v, r in zip(variants, rs, strict=True)} for image, rs in done.items()}
    )
    if results[0].preview:
        metadata["preview"] = dg.MetadataValue.md(f"![result]({results[0].preview})")
    return metadata


def _variant_row(variant: Variant, result) -> dict:
    return {
        "label": variant.label,
        "strength": result.record.strength,
        "steps": result.record.num_inference_steps,
        "inference_seconds": result.record.inference_seconds,
        "output_path": result.task.output_path,
    }


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
    partitions = [
        key
        for key in instance.get_dynamic_partitions(images_partitions.name)
        if any((key, model) in done for model in models)
    ]
    sources = {file.partition_key: file.path for file in dataset.files_for(partitions)[0]}
    compared: dict[str, dict[str, dict[str, str]]] = {}  # image -> model -> row label -> file
    cells_per_model: dict[str, int] = {}
    for partition in partitions:
        for model in models:
            if (partition, model) in done:
                cells_per_model[model] = cells_per_model.get(model, 0) + 1
                for image, files in _compared_files(instance, partition, model, dataset.granularity).items():
                    compared.setdefault(image, {})[model] = files
    grids, records, previews = [], [], []
    for image, variant_files in compared.items():
        records += [r for files in variant_files.values() for r in map(read_record, files.values()) if r is not None]
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


def _compared_files(
    instance: dg.DagsterInstance, partition: str, model: str, granularity: Granularity
) -> dict[str, dict[str, str]]:
    """Image -> row label -> file of a cell's latest materialization (the settings it was last compared with); a
    folder's or shard's cell merges its last CELL_HISTORY, as each names only the images its run compared."""
    key = dg.MultiPartitionKey({"image": partition, "model": model})
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=model_comparison.key, asset_partitions=[key]),
        limit=1 if granularity.per_image else CELL_HISTORY,
    ).records  # newest first
    merged: dict[str, dict[str, str]] = {}
    for record in reversed(records):
        metadata = record.asset_materialization.metadata
        if granularity.per_image and "variant_files" in metadata:
            merged[partition] = dict(metadata["variant_files"].value)
        elif not granularity.per_image and "compared_files" in metadata:
            merged |= {image: dict(files) for image, files in metadata["compared_files"].value.items()}
    return merged
