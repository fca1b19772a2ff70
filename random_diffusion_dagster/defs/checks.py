"""Asset checks: what Dagster believes is done really is on disk, and made from today's inputs."""

import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from ..engine.results import read_result
from ..settings import catch_up_setting
from .asset_keys import DIFFUSED_IMAGE_KEY
from .assets import model_catalog, prompt_list
from .assets.report import DEPS_UPDATED_OR_FAILED
from .draws import record_judged_draws
from .out_of_date import current_planner, out_of_date, reason_counts, summary
from .partitions import images_partitions
from .resources import DatasetResource


@dg.asset_check(
    asset=DIFFUSED_IMAGE_KEY,
    description="Every result Dagster has recorded is a readable PNG: in a run that made images, those this run "
    "recorded; run on its own, every current partition. A missing or unreadable one is redone by catch_up_schedule.",
)
def results_readable_on_disk(context: dg.AssetCheckExecutionContext, dataset: DatasetResource) -> dg.AssetCheckResult:
    checked = _partitions_to_check(context)
    sources = dataset.source_paths(checked)
    missing = [key for key, source in sources.items() if read_result(dataset.output_dir, key, source) is None]
    metadata = {"checked": len(sources), "missing_or_unreadable": len(missing)}
    if missing:
        metadata["partitions"] = _listed({key: None for key in missing[:SHOWN_KEYS]}, dataset)
    return dg.AssetCheckResult(passed=not missing, metadata=metadata)


def _listed(images: dict[str, str | None], dataset: DatasetResource, more: str = "") -> dg.MetadataValue:
    """`- key: why` per image key; with folder or shard partitions `- partition: key: why`, naming the partition the
    UI shows."""
    partition_of = dataset.granularity.partition_of
    shown = (key if dataset.granularity.per_image else f"{partition_of(key)}: {key}" for key in images)
    lines = (f"- {where}" + (f": {why}" if why else "") for where, why in zip(shown, images.values(), strict=True))
    return dg.MetadataValue.md("\n".join(lines) + more)


def _partitions_to_check(context: dg.AssetCheckExecutionContext) -> list[str]:
    """The partitions this run recorded, when it recorded diffused_image ones; else every materialized one.

    Backfill and sensor runs carry this check along; reading every result in every run would make N images
    cost N^2 reads (100,000 images come as 3,125 runs). Run on its own, the check reads them all.
    """
    instance = context.instance
    current = set(instance.get_dynamic_partitions(images_partitions.name))
    recorded = _recorded_in_this_run(context)
    return sorted((recorded or instance.get_materialized_partitions(DIFFUSED_IMAGE_KEY)) & current)


def _recorded_in_this_run(context: dg.AssetCheckExecutionContext) -> set[str]:
    records = context.instance.all_logs(context.run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    return {r.dagster_event.partition for r in records if r.dagster_event.asset_key == DIFFUSED_IMAGE_KEY}


LISTED_KEYS = 2_000  # out-of-date keys an evaluation keeps whole, so the next run's evaluation re-reads only those
SHOWN_KEYS = 200
REDO = (
    "Redo exactly these: Automation > `catch_up_schedule` > Preview tick result > Launch all & commit tick result. "
    "RANDOM_DIFFUSION_CATCH_UP sets when that happens by itself: `on-change` (as soon as the prompts file or "
    "catalog changes), `nightly` (RANDOM_DIFFUSION_CATCH_UP_CRON, 03:00 by default) or `off`."
)

# Evaluated again whenever diffused_image, prompt_list or model_catalog is updated by a run that did not carry it, or
# fails (report_automation_sensor), so the count follows a prompts edit and a catch-up without anyone asking, and a
# failed run's unevaluated check is not left as the last word.
UP_TO_DATE_AUTOMATION = (
    DEPS_UPDATED_OR_FAILED.since_last_handled() & ~dg.AutomationCondition.any_deps_in_progress()
).with_label("after diffused images or their inputs update or fail")


@dg.asset_check(
    asset=DIFFUSED_IMAGE_KEY,
    additional_deps=[prompt_list, model_catalog],
    automation_condition=UP_TO_DATE_AUTOMATION,
    description="How many made images are out of date (Dagster shows their partitions as Unsynced) and why: prompt "
    "changed, model catalog changed, source image changed, run seed changed, or the result is gone. " + REDO,
)
def results_up_to_date(context: dg.AssetCheckExecutionContext, dataset: DatasetResource) -> dg.AssetCheckResult:
    try:
        planner = current_planner(context.instance, dataset)
        made_here = _recorded_in_this_run(context)
        listed = _last_listing(context, planner.inputs_version) if made_here else None
        # After a run that made images, only the partitions it made and those listed last time can have changed state.
        partition_of = dataset.granularity.partition_of
        only = None if listed is None else {partition_of(key) for key in listed} | made_here
        found = out_of_date(context.instance, dataset, planner, only=only, log=context.log)
        # An edit's new draws, recorded: Dagster then shows exactly the results they change as Unsynced.
        step = context.op_execution_context.get_step_execution_context()
        record_judged_draws(step, planner, found.judged, dataset.granularity)
    except (ValueError, OSError) as exc:  # the prompts file, catalog or folders as they are now: their runs say more
        context.log.warning(f"Cannot tell which images are out of date: {exc}")
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, metadata={"error": str(exc)})
    stale = found.made_before()
    metadata = {"out_of_date": len(stale), "inputs": planner.inputs_version}
    if found.images is not None:
        metadata["images"] = found.images
    said = "Every made image is up to date."
    if stale:
        metadata["why"] = dg.MetadataValue.md(
            "| why | images |\n|---|---|\n" + "".join(f"| {why} | {count} |\n" for why, count in reason_counts(stale))
        )
        shown = list(stale.items())[:SHOWN_KEYS]
        more = f"\n\n...and {len(stale) - len(shown)} more" if len(stale) > len(shown) else ""
        metadata["partitions"] = _listed(dict(shown), dataset, more)
        estimate = found.estimate(stale)
        metadata["estimated_gpu_time"] = estimate.words()
        if estimate.seconds is not None:
            metadata["estimated_gpu_seconds"] = estimate.seconds
        metadata["redo"] = dg.MetadataValue.md(REDO + f" Now: `{catch_up_setting()}`.")
        if len(stale) <= LISTED_KEYS:
            metadata["out_of_date_keys"] = dg.MetadataValue.json(sorted(stale))
        said = f"{summary(stale, found.images)}, {estimate.words()}."
        context.log.warning(f"{said} {REDO}")
    return dg.AssetCheckResult(
        passed=not stale, severity=dg.AssetCheckSeverity.WARN, metadata=metadata, description=said
    )


def _last_listing(context: dg.AssetCheckExecutionContext, inputs: str) -> set[str] | None:
    """The out-of-date keys the last finished evaluation listed whole, if it judged against the same `inputs`; None
    when there is none, it judged other inputs, or it had too many to list."""
    finished = {AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED}
    history = context.instance.event_log_storage.get_asset_check_execution_history(
        results_up_to_date.check_key, 1, status=finished
    )
    if not history or history[0].event is None:
        return None
    evaluation = history[0].event.dagster_event.asset_check_evaluation_data
    judged_against = evaluation.metadata.get("inputs")
    if judged_against is None or judged_against.value != inputs:
        return None  # the prompts, catalog or seed changed since: every image may have
    listed = evaluation.metadata.get("out_of_date_keys")
    if evaluation.passed:
        return set()
    return set(listed.value) if listed is not None else None
