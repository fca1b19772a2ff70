"""Asset checks: what Dagster believes is done really is on disk."""

import dagster as dg

from ..engine.results import read_result
from .assets import diffused_image
from .partitions import images_partitions
from .resources import DatasetResource


@dg.asset_check(
    asset=diffused_image,
    description="Every result Dagster has recorded is a readable PNG: in a run that made images, those this run "
    "recorded; run on its own, every current partition. A missing or unreadable one is redone by catch_up_schedule.",
)
def results_readable_on_disk(context: dg.AssetCheckExecutionContext, dataset: DatasetResource) -> dg.AssetCheckResult:
    checked = _partitions_to_check(context)
    sources = dataset.source_paths(checked)
    missing = [key for key in checked if read_result(dataset.output_dir, key, sources[key]) is None]
    metadata = {"checked": len(checked), "missing_or_unreadable": len(missing)}
    if missing:
        metadata["partitions"] = dg.MetadataValue.md("\n".join(f"- {key}" for key in missing[:200]))
    return dg.AssetCheckResult(passed=not missing, metadata=metadata)


def _partitions_to_check(context: dg.AssetCheckExecutionContext) -> list[str]:
    """The partitions this run recorded, when it recorded diffused_image ones; else every materialized one.

    Backfill and sensor runs carry this check along; reading every result in every run would make N images
    cost N^2 reads (100,000 images come as 3,125 runs). Run on its own, the check reads them all.
    """
    instance = context.instance
    current = set(instance.get_dynamic_partitions(images_partitions.name))
    records = instance.all_logs(context.run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    recorded = {r.dagster_event.partition for r in records if r.dagster_event.asset_key == diffused_image.key}
    return sorted((recorded or instance.get_materialized_partitions(diffused_image.key)) & current)
