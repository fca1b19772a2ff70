"""`catch_up_schedule`: redo every image whose result is missing or stale, in batched runs."""

import os

import dagster as dg

from .assets import MAX_PARTITIONS_PER_RUN
from .engine.freshness import needs_work
from .jobs import diffuse_images_job, partition_range_tags
from .partitions import images_partitions
from .resources import DatasetResource

CATCH_UP_CRON = os.environ.get("RANDOM_DIFFUSION_CATCH_UP_CRON", "0 3 * * *")


@dg.schedule(
    name="catch_up_schedule",
    job=diffuse_images_job,
    cron_schedule=CATCH_UP_CRON,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Nightly (RANDOM_DIFFUSION_CATCH_UP_CRON): runs every partition whose result is missing, "
    "unreadable, or made from other prompts, catalog, seed or source; requests nothing when all is current.",
)
def catch_up_schedule(context: dg.ScheduleEvaluationContext, dataset: DatasetResource):
    keys = context.instance.get_dynamic_partitions(images_partitions.name)
    files = dataset.files_by_key()
    prompts, catalog = dataset.prompts(), dataset.catalog()
    reasons = {}
    for key in keys:
        if key in files:
            reason = needs_work(files[key], prompts, catalog, dataset.seed, dataset.output_dir)
            if reason:
                reasons[key] = reason
    if not reasons:
        return dg.SkipReason(f"All {len(keys)} results are current.")
    context.log.info(f"{len(reasons)} of {len(keys)} images need work: " + ", ".join(f"{k} ({r})" for k, r in list(reasons.items())[:20]))
    # Ranged runs must be contiguous: cover each window of partitions that holds any work.
    # Current results inside a window are reused, not recomputed.
    requests = []
    for start in range(0, len(keys), MAX_PARTITIONS_PER_RUN):
        window = keys[start : start + MAX_PARTITIONS_PER_RUN]
        todo = [k for k in window if k in reasons]
        if todo:
            first, last = todo[0], todo[-1]
            requests.append(dg.RunRequest(run_key=f"catch-up:{context.scheduled_execution_time.isoformat()}:{first}", tags=partition_range_tags(first, last)))
    return requests
