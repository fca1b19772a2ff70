"""How results appear in Dagster: per-partition metadata from result records, run-level figures."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from .engine.runner import ImageResult, RunSummary


def partition_metadata(result: ImageResult) -> dict:
    """What one partition's materialization shows: its record's partition fields, path and preview."""
    metadata = result.record.partition_metadata()
    metadata["reused_existing"] = result.status == "reused"
    metadata["output_path"] = dg.MetadataValue.path(result.task.output_path)
    metadata["preview"] = dg.MetadataValue.md(f"![result]({result.preview})")
    return metadata


RUN_TAG_PREFIX = "random_diffusion/"


def run_figures(summary: RunSummary, failures: dict[str, str]) -> dict[str, str]:
    """The run's totals, as run tags: shown on the run's page, not stamped on each image."""
    figures = {
        "generated": len(summary.with_status("generated")),
        "reused": len(summary.with_status("reused")),
        "failed": len(failures),
        "pipeline_loads": summary.pipeline_loads,
        "batch_size": summary.batch_size,
        "images_per_second": round(summary.images_per_second, 3),
        "device": summary.device,
    }
    return {f"{RUN_TAG_PREFIX}{name}": str(value) for name, value in figures.items()}
