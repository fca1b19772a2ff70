"""`catch_up_schedule`: redo every image whose result is missing or stale, in batched runs."""

import dagster as dg

from ...settings import catch_up_cron, catch_up_setting
from ..jobs import diffuse_images_job
from ..out_of_date import current_planner, out_of_date, summary
from ..resources import DatasetResource


@dg.schedule(
    name="catch_up_schedule",
    job=diffuse_images_job,
    cron_schedule=catch_up_cron(),
    default_status=dg.DefaultScheduleStatus.STOPPED
    if catch_up_setting() == "off"
    else dg.DefaultScheduleStatus.RUNNING,
    description="Nightly (RANDOM_DIFFUSION_CATCH_UP_CRON; stopped when RANDOM_DIFFUSION_CATCH_UP=off): runs every "
    "partition whose result is missing, unreadable, made from other prompts, catalog, seed or source, or not "
    "recorded as materialized; requests nothing when all is current. To redo now: Preview tick result > Launch "
    "all & commit tick result.",
)
def catch_up_schedule(context: dg.ScheduleEvaluationContext, dataset: DatasetResource):
    try:
        found = out_of_date(context.instance, dataset, current_planner(context.instance, dataset), log=context.log)
    except (ValueError, OSError) as exc:  # a prompt list, catalog or folder no run could use: its message says why
        return dg.SkipReason(f"Nothing requested: {exc}")
    if not found.reasons:
        return dg.SkipReason(f"All {found.images} results are current.")
    context.log.info(summary(found.reasons, found.images) + ": " + ", ".join(list(found.reasons)[:20]))
    return found.run_requests(lambda first: f"catch-up:{context.scheduled_execution_time.isoformat()}:{first}")
