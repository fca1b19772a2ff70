"""How results appear in Dagster: per-partition metadata from result records, run-level figures."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from ..engine.runner import ImageResult, RunSummary


def partition_metadata(result: ImageResult) -> dict:
    """What one partition's materialization shows: its record's partition fields, path and preview.

    Numbers Dagster would plot across materializations are kept for measurements (timings, memory);
    settings such as the seed or the step count are shown as text, so the Plots tab holds only measurements.
    """
    measurements = type(result.record).measurements()
    fields = result.record.partition_metadata()
    reused = result.status == "reused"
    if reused:  # its measurements and batch size are the making run's: said so in words, kept off this run's plots
        fields = {name: value for name, value in fields.items() if name not in measurements and name != "batch_size"}
    metadata = {
        name: value if name in measurements or not _is_number(value) else dg.MetadataValue.text(str(value))
        for name, value in fields.items()
    }
    metadata["reused_existing"] = reused
    if reused:
        metadata["when_made"] = dg.MetadataValue.text(when_made(result.record))
    metadata["output_path"] = dg.MetadataValue.path(result.task.output_path)
    metadata["preview"] = dg.MetadataValue.md(f"![result]({result.preview})")
    return metadata


def when_made(record) -> str:
    """A reused result's making, in one line: `made 2026-12-06T12:00:00: inference 0.52 s, total 0.61 s, ...`."""
    figures = [
        f"{label} {value:g}{unit}"
        for label, value, unit in (
            ("inference", record.inference_seconds, " s"),
            ("total", record.total_seconds, " s"),
            ("model load share", record.pipeline_load_seconds, " s"),
            ("peak VRAM reserved", record.vram_peak_reserved_mb, " MiB"),
            ("batch of", record.batch_size, ""),
        )
        if value is not None
    ]
    return f"reused; made {record.created_at or 'by an earlier run'}: " + ", ".join(figures)


def metadata_by_partition(results: list[ImageResult]) -> dict[str, dict]:
    """Each partition's metadata from its results: the first variant's fields, and with several variants a
    `variants` table of every one (its prompt, model, seed and file)."""
    by_key: dict[str, list[ImageResult]] = {}
    for result in sorted(results, key=lambda r: r.task.variant):
        by_key.setdefault(result.task.key, []).append(result)
    metadata = {}
    for key, variants in by_key.items():
        metadata[key] = partition_metadata(variants[0])
        if len(variants) > 1 or variants[0].task.variant:
            rows = [
                {
                    "variant": r.task.variant,
                    "prompt": r.record.prompt,
                    "model": r.record.model,
                    "seed": str(r.record.seed),
                    "file": r.task.output_path,
                    "reused": r.status == "reused",
                }
                for r in variants
            ]
            columns = {"variant": "int", "prompt": "string", "model": "string", "seed": "string", "file": "path"}
            metadata[key]["variants"] = table(rows, columns | {"reused": "bool"})
    return metadata


def record_partition_metadata(context: dg.AssetExecutionContext, metadata_by_partition: Mapping[str, dict]) -> None:
    """Give each partition of the run's range its own materialization metadata, reading the partition list once.

    Dagster's `add_asset_metadata(partition_key=...)` checks the key against the run's range by reading every
    key of the dynamic partitions from storage, and two more lookups, on each call: a run's worth of calls over a
    large folder reads millions of keys. While the metadata is added, the instance
    answers those reads from one read of each partition set; the check then sees the keys as the step began.
    """
    instance = context.instance
    read_keys = type(instance).get_dynamic_partitions
    keys_by_name: dict[str, list[str]] = {}
    known_by_name: dict[str, set[str]] = {}

    def get_dynamic_partitions(partitions_def_name: str) -> list[str]:
        if partitions_def_name not in keys_by_name:
            keys_by_name[partitions_def_name] = list(read_keys(instance, partitions_def_name))
        return keys_by_name[partitions_def_name]

    def has_dynamic_partition(partitions_def_name: str, partition_key: str) -> bool:
        if partitions_def_name not in known_by_name:
            known_by_name[partitions_def_name] = set(get_dynamic_partitions(partitions_def_name))
        return partition_key in known_by_name[partitions_def_name]

    instance.get_dynamic_partitions = get_dynamic_partitions
    instance.has_dynamic_partition = has_dynamic_partition
    try:
        for partition_key, metadata in metadata_by_partition.items():
            context.add_asset_metadata(metadata, partition_key=partition_key)
    finally:
        del instance.get_dynamic_partitions, instance.has_dynamic_partition


RUN_TAG_PREFIX = "random_diffusion/"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def run_figures(summary: RunSummary, failures: dict[str, str]) -> dict[str, str]:
    """The run's totals, as run tags: shown on the run's page, not stamped on each image."""
    generated = len(summary.with_status("generated"))
    figures = {  # rates and batch figures over the images this run made; "" where it made none
        "generated": generated,
        "reused": len(summary.with_status("reused")),
        "failed": len(failures),
        "pipeline_loads": summary.pipeline_loads,
        "compiled_graphs": summary.compiled_graphs,
        "batch_size": max(summary.batches, default=""),  # the largest pipeline call made, not the limit
        "batch_size_limit": summary.batch_size,
        "pipeline_calls": len(summary.batches),
        "mean_batch_fill": "" if summary.mean_batch_fill is None else round(summary.mean_batch_fill, 3),
        "images_per_second": round(summary.images_per_second, 3) if generated else "",
        "device": summary.device,
    }
    return {f"{RUN_TAG_PREFIX}{name}": str(value) for name, value in figures.items()}


def table(rows: list[dict], columns: dict[str, str]) -> dg.TableMetadataValue:
    """A real table in the UI (sortable, not clipped like markdown); `columns` maps name -> Dagster type."""
    schema = dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in columns.items()])
    records = [dg.TableRecord({name: _cell(row.get(name)) for name in columns}) for row in rows]
    return dg.MetadataValue.table(records, schema=schema)


def _cell(value):
    """Table cells take plain values; missing numbers (NaN, e.g. no VRAM on a CPU) are empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item"):  # numpy scalars from pandas
        return value.item()
    return value if isinstance(value, (str, int, float, bool)) else str(value)
