"""The files users edit, as external assets whose observations carry content versions.

Dagster marks a result stale when something it was made from has a newer data version.
The prompts file, the catalog file and each source image are observed here with content
hashes: by `input_files_sensor` when the files change (it then refreshes `prompt_list` /
`model_catalog`), by `new_images_sensor` when an image is replaced, and by the runs
themselves for the bytes they actually read.
"""

from __future__ import annotations

import hashlib
import os

import dagster as dg

from .partitions import images_partitions
from .resources import DatasetResource

# The event tag Dagster reads an observation's data version from (dagster._core.definitions.data_version).
DATA_VERSION_TAG = "dagster/data_version"

PROMPTS_FILE = dg.AssetSpec(
    "prompts_file",
    group_name="inputs",
    description="The prompts file (RANDOM_DIFFUSION_PROMPTS_FILE), observed by content hash.",
)
MODELS_FILE = dg.AssetSpec(
    "models_file",
    group_name="inputs",
    description="The model catalog file (RANDOM_DIFFUSION_MODELS_FILE), observed by content hash.",
)
IMAGE_FILES = dg.AssetSpec(
    "image_file",
    deps=["source_images"],
    partitions_def=images_partitions,
    group_name="inputs",
    description="Each source image, observed by content hash: a replaced image makes its result stale.",
)


def observation(spec: dg.AssetSpec, version: str, partition: str | None = None) -> dg.AssetObservation:
    """An observation Dagster reads as `spec`'s data version: what staleness is computed from."""
    return dg.AssetObservation(spec.key, partition=partition, tags={DATA_VERSION_TAG: version})


def report_what_was_read(context: dg.AssetExecutionContext, observations: list[dg.AssetObservation]) -> None:
    """Log observations of the inputs a step read, and let its materialization's provenance name them.

    Dagster reads the upstream versions for a step's provenance when the step starts; without the
    refresh, the first result made from a file would record no version for it, and a later change
    would never show as stale. (The step context's wipe is Dagster's own tool for inputs that change
    during the step.)
    """
    for event in observations:
        context.log_event(event)
    step = context.get_step_execution_context()
    for key in {event.asset_key for event in observations}:
        step.wipe_input_asset_version_info(key)


def file_version(path: str | os.PathLike) -> str | None:
    """Content hash of a file, or None if it cannot be read (the asset that reads it explains why)."""
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()[:16]
    except OSError:
        return None


@dg.sensor(
    name="input_files_sensor",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    asset_selection=dg.AssetSelection.assets("prompt_list", "model_catalog"),
    description="Observes the prompts file and the model catalog file by content hash, and when one changes "
    "refreshes `prompt_list` / `model_catalog`: the images made from the old contents then show as stale.",
)
def input_files_sensor(context: dg.SensorEvaluationContext, dataset: DatasetResource) -> dg.SensorResult:
    seen = dict(pair.split("=", 1) for pair in (context.cursor or "").split(",") if "=" in pair)
    files = {PROMPTS_FILE.key: (dataset.prompts_file, "prompt_list"), MODELS_FILE.key: (dataset.models_file, "model_catalog")}
    events, refresh, versions = [], [], {}
    for key, (path, reader) in files.items():
        version = file_version(path)
        if version is None:
            continue  # missing or unreadable: the asset that reads it says why when it runs
        versions[key.to_user_string()] = version
        previous = seen.get(key.to_user_string())
        if previous != version:
            events.append(dg.AssetObservation(key, tags={DATA_VERSION_TAG: version},
                                              metadata={"path": dg.MetadataValue.path(str(path))}))
            if previous is not None:
                context.log.info(f"{path} changed: refreshing {reader}")
                refresh.append(dg.AssetKey(reader))
    requests = [dg.RunRequest(run_key=f"refresh:{','.join(sorted(versions.values()))}", asset_selection=refresh)]
    return dg.SensorResult(
        run_requests=requests if refresh else [],
        asset_events=events,
        cursor=",".join(f"{key}={version}" for key, version in sorted(versions.items())),
    )
