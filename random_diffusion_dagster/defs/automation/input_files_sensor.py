"""`input_files_sensor`: versions the prompts and catalog files, and refreshes what reads them when they change."""

from __future__ import annotations

import dagster as dg

from ..resources import DatasetResource
from ..source_versions import MODELS_FILE, PROMPTS_FILE, file_version, version_event


@dg.sensor(
    name="input_files_sensor",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    asset_selection=dg.AssetSelection.assets("prompt_list", "model_catalog"),
    description="Versions the prompts file and the model catalog file by content hash, and when one changes "
    "refreshes prompt_list / model_catalog: the images made from the old contents then show as stale.",
)
def input_files_sensor(context: dg.SensorEvaluationContext, dataset: DatasetResource) -> dg.SensorResult:
    seen = dict(pair.split("=", 1) for pair in (context.cursor or "").split(",") if "=" in pair)
    files = [(PROMPTS_FILE, dataset.prompts_file, "prompt_list"), (MODELS_FILE, dataset.models_file, "model_catalog")]
    events, refresh, versions = [], [], {}
    for source, path, reader in files:
        version = file_version(path)
        if version is None:
            continue  # missing or unreadable: the asset that reads it says why when it runs
        versions[source.key.to_user_string()] = version
        previous = seen.get(source.key.to_user_string())
        if previous != version:
            events.append(version_event(source, version, path=dg.MetadataValue.path(str(path))))
            if previous is not None:
                context.log.info(f"{path} changed: refreshing {reader}")
                refresh.append(dg.AssetKey(reader))
    requests = [dg.RunRequest(run_key=f"refresh:{','.join(sorted(versions.values()))}", asset_selection=refresh)]
    return dg.SensorResult(
        run_requests=requests if refresh else [],
        asset_events=events,
        cursor=",".join(f"{key}={version}" for key, version in sorted(versions.items())),
    )
