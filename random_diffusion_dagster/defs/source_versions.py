"""The files users edit, as observable source assets whose data versions are content hashes.

Dagster marks a result stale when something it was made from has a newer data version.
The prompts file, the catalog file and each source image are observed with content hashes:
by `input_files_sensor` (automation/) when the files change (it then refreshes `prompt_list` /
`model_catalog`), by `new_images_sensor` when an image is replaced, by the runs themselves
for the bytes they actually read, and by "Observe sources" in the UI.
"""

from __future__ import annotations

import hashlib
import os

import dagster as dg
from dagster._core.events import DagsterEvent, DagsterEventBatchMetadata, generate_event_batch_id

from ..engine.captions import Captions, image_version
from ..engine.images import SourceFile
from ..engine.pairs import PairFolders
from ..engine.prompts import PromptListError
from .partitions import images_partitions

# The event tag Dagster reads an observation's data version from (dagster._core.definitions.data_version).
DATA_VERSION_TAG = "dagster/data_version"


@dg.observable_source_asset(
    group_name="inputs",
    required_resource_keys={"dataset"},
    description="The prompts file (RANDOM_DIFFUSION_PROMPTS_FILE), versioned by content hash.",
)
def prompts_file(context) -> dg.ObserveResult:
    return _observe_file(context.resources.dataset.prompts_file)


@dg.observable_source_asset(
    group_name="inputs",
    required_resource_keys={"dataset"},
    description="The model catalog file (RANDOM_DIFFUSION_MODELS_FILE), versioned by content hash.",
)
def models_file(context) -> dg.ObserveResult:
    return _observe_file(context.resources.dataset.models_file)


@dg.observable_source_asset(
    name="image_file",
    partitions_def=images_partitions,
    group_name="inputs",
    required_resource_keys={"dataset"},
    description="Each source image, versioned by content hash: a replaced image makes its result stale.",
)
def image_files(context) -> dg.DataVersionsByPartition:
    """All registered images at once (the UI's "Observe sources"): reads every file and its caption."""
    dataset = context.resources.dataset
    files, _gone = dataset.files_for(context.instance.get_dynamic_partitions(images_partitions.name))
    captions, pairs = Captions(), dataset.pair_folders()
    versions = {file.partition_key: image_file_version(file, captions, pairs) for file in files}
    return dg.DataVersionsByPartition(dataset.granularity.partition_versions(versions))


def image_file_version(source: SourceFile, captions: Captions, pairs: PairFolders) -> str | None:
    """An image's data version: its content, its caption (engine/captions.py) and its pairs (engine/pairs.py), or
    None if it cannot be read. A caption file that cannot be read counts as none here; the run that reads it names
    the problem."""
    content = file_version(source.path)
    if content is None:
        return None
    try:
        caption = captions.caption_for(source)
    except (PromptListError, OSError):
        caption = None
    try:
        paired = pairs.versions(source.path, source.relative_path)
    except OSError:
        paired = {}
    return image_version(content, caption, paired)


def _observe_file(path: str) -> dg.ObserveResult:
    version = file_version(path)
    if version is None:
        raise dg.Failure(f"{path} cannot be read: create it, or point the RANDOM_DIFFUSION_* variable at it.")
    return dg.ObserveResult(data_version=dg.DataVersion(version), metadata={"path": dg.MetadataValue.path(path)})


PROMPTS_FILE, MODELS_FILE, IMAGE_FILES = prompts_file, models_file, image_files


def version_event(
    source: dg.SourceAsset, version: str, partition: str | None = None, **metadata
) -> dg.AssetObservation:
    """A file's content, as the observation Dagster reads the source asset's data version from."""
    return dg.AssetObservation(source.key, partition=partition, tags={DATA_VERSION_TAG: version}, metadata=metadata)


def report_what_was_read(context: dg.AssetExecutionContext, events: list[dg.AssetObservation]) -> None:
    """Report the versions of the inputs a step read, and let its materialization's provenance name them.

    Dagster reads the upstream versions for a step's provenance when the step starts; without the refresh, the first
    result made from a file would record no version for it, and a later change would never show as stale. (The step
    context's wipe is Dagster's own tool for inputs that change during the step.) A file or partition whose latest
    recorded version is the one read is not reported again: re-rolls and catch-up runs read unchanged images. The
    rest go to the storage as one batch, as a step's output's events do (`context.log_event` writes each alone, while
    the GPU waits); they show in the run's event log, not among an in-process result's events.
    """
    events = _not_on_record(context.instance, events)
    step = context.get_step_execution_context()
    batch = generate_event_batch_id()
    for i, event in enumerate(events):
        DagsterEvent.asset_observation(step, event, DagsterEventBatchMetadata(batch, is_end=i == len(events) - 1))
    for key in {event.asset_key for event in events}:
        step.wipe_input_asset_version_info(key)


def _not_on_record(instance: dg.DagsterInstance, events: list[dg.AssetObservation]) -> list[dg.AssetObservation]:
    """The events whose asset's (or partition's) latest observation holds another version, or none (one query per
    asset). An unchanged prompts or catalog file keeps its latest observation: the one input_files_sensor wrote,
    with what the edit costs, stays the one its page shows."""
    recorded: dict[tuple[dg.AssetKey, str | None], str | None] = {}
    for key in {event.asset_key for event in events if not event.partition}:
        latest = instance.fetch_observations(key, limit=1).records
        observation = latest[0].asset_observation if latest else None
        recorded[(key, None)] = observation.tags.get(DATA_VERSION_TAG) if observation else None
    for key in {event.asset_key for event in events if event.partition}:
        partitions = [event.partition for event in events if event.asset_key == key and event.partition]
        latest = instance.event_log_storage.get_latest_tags_by_partition(
            key, dg.DagsterEventType.ASSET_OBSERVATION, [DATA_VERSION_TAG], asset_partitions=partitions
        )
        recorded.update({(key, partition): tags.get(DATA_VERSION_TAG) for partition, tags in latest.items()})
    return [
        event for event in events if recorded.get((event.asset_key, event.partition)) != event.tags[DATA_VERSION_TAG]
    ]


def file_version(path: str | os.PathLike) -> str | None:
    """Content hash of a file, or None if it cannot be read (the asset that reads it explains why)."""
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()[:16]
    except OSError:
        return None
