"""Asset checks: what Dagster believes is done really is on disk."""

import dagster as dg

from .assets import diffused_image
from .engine.results import read_record, result_path
from .partitions import images_partitions
from .resources import DatasetResource


@dg.asset_check(
    asset=diffused_image,
    description="Every current partition Dagster has materialized has a readable result PNG. "
    "A missing or unreadable one is redone by catch_up_schedule.",
)
def results_readable_on_disk(context: dg.AssetCheckExecutionContext, dataset: DatasetResource) -> dg.AssetCheckResult:
    materialized = context.instance.get_materialized_partitions(diffused_image.key)
    current = set(context.instance.get_dynamic_partitions(images_partitions.name))
    checked = sorted(materialized & current)
    missing = [key for key in checked if read_record(result_path(dataset.output_dir, key)) is None]
    metadata = {"checked": len(checked), "missing_or_unreadable": len(missing)}
    if missing:
        metadata["partitions"] = dg.MetadataValue.md("\n".join(f"- {key}" for key in missing[:200]))
    return dg.AssetCheckResult(passed=not missing, metadata=metadata)
