"""`catch_up_schedule`: redo every image whose result is missing or stale, in batched runs."""

import dagster as dg

from ...engine.freshness import why_stale
from ...settings import catch_up_cron
from ..jobs import diffuse_images_job
from ..partitions import images_partitions
from ..prompt_sets import current_prompt_set
from ..resources import DatasetResource
from ..run_ranges import partition_ranges, ranged_run_requests


@dg.schedule(
    name="catch_up_schedule",
    job=diffuse_images_job,
    cron_schedule=catch_up_cron(),
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Nightly (RANDOM_DIFFUSION_CATCH_UP_CRON): runs every partition whose result is missing, "
    "unreadable, made from other prompts, catalog, seed or source, or not recorded as materialized; "
    "requests nothing when all is current.",
)
def catch_up_schedule(context: dg.ScheduleEvaluationContext, dataset: DatasetResource):
    keys = context.instance.get_dynamic_partitions(images_partitions.name)
    files, _missing = dataset.files_for(keys)
    # The same inputs a run would use: the current prompt list (a submitted one stays current).
    planner = dataset.planner(current_prompt_set(context.instance, dataset).prompts, dataset.catalog())
    recorded = context.instance.get_materialized_partitions(dg.AssetKey("diffused_image"))
    reasons = {}
    for source in files:
        try:
            reason = why_stale(planner, source)
        except OSError as exc:  # gone or unreadable since the scan: the sensor deals with it, not this tick
            context.log.warning(f"Skipping {source.name}: {exc}")
            continue
        if reason is None and source.partition_key not in recorded:
            reason = "on disk but not recorded in Dagster"  # a run reuses the file and records it
        if reason:
            reasons[source.partition_key] = reason
    if not reasons:
        return dg.SkipReason(f"All {len(keys)} results are current.")
    context.log.info(
        f"{len(reasons)} of {len(keys)} images need work: "
        + ", ".join(f"{k} ({r})" for k, r in list(reasons.items())[:20])
    )
    # Current results inside a range are reused, not recomputed: bridging them makes fewer runs.
    ranges = partition_ranges(keys, reasons, bridge_gaps=True)
    return ranged_run_requests(ranges, lambda r: f"catch-up:{context.scheduled_execution_time.isoformat()}:{r.first}")
