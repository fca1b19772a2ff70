"""`input_files_sensor`: versions the prompts and catalog files, and refreshes what reads them when they change."""

from __future__ import annotations

import dagster as dg

from ...settings import catch_up_setting
from ..checks import results_up_to_date
from ..jobs import diffuse_images_job, refresh_inputs_job
from ..out_of_date import OutOfDate, current_planner, out_of_date, summary
from ..resources import DatasetResource
from ..source_versions import MODELS_FILE, PROMPTS_FILE, file_version, version_event


@dg.sensor(
    name="input_files_sensor",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    jobs=[refresh_inputs_job, diffuse_images_job],
    description="Versions the prompts file and the model catalog file by content hash, and when one changes "
    "refreshes prompt_list / model_catalog and counts the images made from the old contents (check "
    "results_up_to_date; their partitions show as Unsynced). With RANDOM_DIFFUSION_CATCH_UP=on-change it also "
    "requests the runs that redo them.",
)
def input_files_sensor(context: dg.SensorEvaluationContext, dataset: DatasetResource) -> dg.SensorResult:
    seen = dict(pair.split("=", 1) for pair in (context.cursor or "").split(",") if "=" in pair)
    files = [(PROMPTS_FILE, dataset.prompts_file, "prompt_list"), (MODELS_FILE, dataset.models_file, "model_catalog")]
    changed, refresh, versions = [], [], {}
    for source, path, reader in files:
        version = file_version(path)
        if version is None:
            continue  # missing or unreadable: the asset that reads it says why when it runs
        versions[source.key.to_user_string()] = version
        previous = seen.get(source.key.to_user_string())
        if previous != version:
            changed.append((source, version, path, previous is not None))
            if previous is not None:
                refresh.append(dg.AssetKey(reader))
    cursor = ",".join(f"{key}={version}" for key, version in sorted(versions.items()))
    found = _out_of_date(context, dataset) if refresh else None
    events = [
        version_event(source, version, path=dg.MetadataValue.path(str(path)), **(_cost(found) if edited else {}))
        for source, version, path, edited in changed
    ]
    if not refresh:
        return dg.SensorResult(asset_events=events, cursor=cursor)
    run_key = f"refresh:{','.join(sorted(versions.values()))}"
    requests = [
        dg.RunRequest(
            run_key=run_key,
            job_name=refresh_inputs_job.name,
            asset_selection=refresh,
            asset_check_keys=[results_up_to_date.check_key],
        )
    ]
    if found is not None and found.reasons and catch_up_setting() == "on-change":
        context.log.info("Redoing them now (RANDOM_DIFFUSION_CATCH_UP=on-change)")
        requests += found.run_requests(lambda first: f"{run_key}:catch-up:{first}", diffuse_images_job.name)
    return dg.SensorResult(run_requests=requests, asset_events=events, cursor=cursor)


def _out_of_date(context: dg.SensorEvaluationContext, dataset: DatasetResource) -> OutOfDate | None:
    """What the edit makes out of date, judged against the files as they are now; None when they are unusable (the
    refresh run names the problem)."""
    try:
        found = out_of_date(context.instance, dataset, current_planner(context.instance, dataset), log=context.log)
    except (ValueError, OSError) as exc:
        context.log.warning(f"Cannot tell what the edit makes out of date: {exc}")
        return None
    stale = found.made_before()
    context.log.info(f"{summary(stale, found.images)}; redoing them takes {found.estimate(stale).words()}")
    return found


def _cost(found: OutOfDate | None) -> dict:
    """What the edit costs, shown on the changed file's observation before anything is redone: the made images it
    makes out of date, as the check counts them (an image never made, or failing, is not the edit's)."""
    if found is None:
        return {}
    stale = found.made_before()
    estimate = found.estimate(stale)
    cost = {
        "out_of_date_images": len(stale),
        "results_to_make": estimate.results,
        "estimated_gpu_time": estimate.words(),
    }
    if estimate.seconds is not None:
        cost["estimated_gpu_seconds"] = estimate.seconds
    return cost
