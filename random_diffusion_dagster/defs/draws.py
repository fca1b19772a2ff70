"""`image_draw`'s records: each image's draw (prompt, model with its settings, seed of each result) as its own data
version, so Dagster shows as stale exactly the results whose draw an edit changed.

`prompt_list` and `model_catalog` have one data version each: were `diffused_image` made from them directly, editing
one catalog entry would make every partition stale. It is made from `image_draw` instead, whose partitions change
version only where the draw changed; the diffusion step records the draws it makes, and `results_up_to_date` records
those an edit changes (the refresh run after an edit holds no GPU, so it cannot run the diffusion step).
"""

from __future__ import annotations

import hashlib

import dagster as dg
from dagster._core.definitions.data_version import (
    CODE_VERSION_TAG,
    DATA_VERSION_IS_USER_PROVIDED_TAG,
    DATA_VERSION_TAG,
    extract_data_version_from_entry,
    get_input_data_version_tag,
    get_input_event_pointer_tag,
)
from dagster._core.events import DagsterEvent, DagsterEventBatchMetadata, generate_event_batch_id
from dagster._core.execution.context.system import StepExecutionContext

from ..engine.plan import ImageTask, Planner, catalog_version, draw_version, prompts_version
from .asset_keys import IMAGE_DRAW_KEY, MODEL_CATALOG_KEY, PROMPT_LIST_KEY
from .metadata import table

DRAWN_FROM = (PROMPT_LIST_KEY, MODEL_CATALOG_KEY)
MATERIALIZATION = dg.DagsterEventType.ASSET_MATERIALIZATION

# On each diffused_image materialization: the prompt list and catalog its draw came from (prompt changed or catalog
# changed, as results_up_to_date tells them apart). Dagster's own input tags now name image_draw, not these two.
DRAWN_FROM_TAGS = {
    PROMPT_LIST_KEY: "random_diffusion/drawn_from_prompt_list",
    MODEL_CATALOG_KEY: "random_diffusion/drawn_from_model_catalog",
}


def drawn_from_tags(planner: Planner) -> dict[str, str]:
    """The DRAWN_FROM_TAGS of results drawn by `planner`."""
    return {
        DRAWN_FROM_TAGS[PROMPT_LIST_KEY]: prompts_version(planner.prompts),
        DRAWN_FROM_TAGS[MODEL_CATALOG_KEY]: catalog_version(planner.catalog),
    }


def record_draws(
    step: StepExecutionContext,
    draws: dict[str, list[ImageTask]],
    current: frozenset[str] = frozenset(),
    undrawable: dict[str, str] | None = None,
) -> int:
    """Record each image's draw (key -> its tasks, all variants) where Dagster's latest record of it is missing, holds
    another draw, or was drawn from another prompt list or catalog version (so an unchanged draw is not shown as
    Unsynced either); one batch of events, one storage write. Returns how many were recorded.

    Images in `current` have current results (the caller judged them): their record is only renewed, never changed,
    as a run with other settings (more variants) may have drawn them. `undrawable` (key -> why) records that today's
    inputs draw nothing for an image (a template word it lacks): its result is stale, and its run says why.
    """
    undrawable = undrawable or {}
    versions = {key: draw_version(tasks) for key, tasks in draws.items() if tasks}
    versions |= {key: _digest_of_why(why) for key, why in undrawable.items()}
    if not versions:
        return 0
    drawn_from, pointers = _drawn_from(step.instance)
    latest = _latest_tags(step.instance, list(versions))

    def wanted(key: str) -> bool:
        recorded = latest.get(key, {})
        same_draw = recorded.get(DATA_VERSION_TAG) == versions[key]
        same_inputs = all(recorded.get(name) == value for name, value in drawn_from.items())
        return not same_inputs and same_draw if key in current else not (same_draw and same_inputs)

    to_record = [key for key in versions if wanted(key)]
    tags = drawn_from | pointers | {CODE_VERSION_TAG: step.run_id, DATA_VERSION_IS_USER_PROVIDED_TAG: "true"}
    batch = generate_event_batch_id()
    for i, key in enumerate(to_record):
        materialization = dg.AssetMaterialization(
            IMAGE_DRAW_KEY,
            partition=key,
            metadata=draw_metadata(draws[key])
            if key in draws
            else {"cannot_draw": dg.MetadataValue.text(undrawable[key])},
            tags=tags | {DATA_VERSION_TAG: versions[key]},
        )
        DagsterEvent.asset_materialization(
            step, materialization, DagsterEventBatchMetadata(batch, is_end=i == len(to_record) - 1)
        )
    # What this step reads of image_draw for the provenance of what it records next (diffused_image) is now newer.
    step.wipe_input_asset_version_info(IMAGE_DRAW_KEY)
    return len(to_record)


def _digest_of_why(why: str) -> str:
    return hashlib.sha256(f"cannot draw: {why}".encode()).hexdigest()[:16]


def _latest_tags(instance: dg.DagsterInstance, keys: list[str]) -> dict[str, dict[str, str]]:
    """The tags of each partition's latest draw record."""
    latest = latest_materializations(instance, IMAGE_DRAW_KEY, keys)
    return {key: record.asset_materialization.tags or {} for key, record in latest.items()}


STORAGE_IDS_PER_QUERY = 10_000  # SQLite binds at most 32,766 values in one statement


def latest_materializations(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partitions: list[str]
) -> dict[str, dg.EventLogRecord]:
    """Each partition's latest materialization record: one query for their storage ids, then the records in chunks
    (a folder of 100,000 images is more values than SQLite binds in one query)."""
    if not partitions:
        return {}
    latest = instance.event_log_storage.get_latest_storage_id_by_partition(
        asset_key, MATERIALIZATION, partitions=set(partitions)
    )
    storage_ids = sorted(latest.values())
    records = {}
    for start in range(0, len(storage_ids), STORAGE_IDS_PER_QUERY):
        chunk = storage_ids[start : start + STORAGE_IDS_PER_QUERY]
        fetched = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key, storage_ids=chunk), limit=len(chunk)
        ).records
        records |= {record.partition_key: record for record in fetched}
    return records


def _drawn_from(instance: dg.DagsterInstance) -> tuple[dict[str, str], dict[str, str]]:
    """The provenance tags of a draw made now, as Dagster writes them on a step's output: the data versions of the
    current prompt list and catalog, and their events (apart: a run that reads an unchanged list records it again,
    which is no new draw)."""
    versions, pointers = {}, {}
    for record in instance.get_asset_records(list(DRAWN_FROM)):
        event = record.asset_entry.last_materialization_record
        version = extract_data_version_from_entry(event.event_log_entry) if event else None
        if version is not None:
            versions[get_input_data_version_tag(record.asset_entry.asset_key)] = version.value
            pointers[get_input_event_pointer_tag(record.asset_entry.asset_key)] = str(event.storage_id)
    return versions, pointers


def draw_metadata(tasks: list[ImageTask]) -> dict:
    """What a partition of `image_draw` shows: the first result's prompt, model and seed; every variant's as a table
    when it has several."""
    first = min(tasks, key=lambda task: task.variant)
    metadata = {
        "prompt": dg.MetadataValue.text(first.prompt),
        "model": dg.MetadataValue.text(first.model.name),
        "seed": dg.MetadataValue.text(str(first.seed)),
        "strength": dg.MetadataValue.text(f"{first.model.strength:g}"),
    }
    if first.prompt_template != first.prompt:
        metadata["prompt_template"] = dg.MetadataValue.text(first.prompt_template)
    if len(tasks) > 1:
        rows = [
            {"variant": t.variant, "prompt": t.prompt, "model": t.model.name, "seed": str(t.seed)}
            for t in sorted(tasks, key=lambda task: task.variant)
        ]
        metadata["variants"] = table(rows, {"variant": "int", "prompt": "string", "model": "string", "seed": "string"})
    return metadata


def by_image(tasks: list[ImageTask]) -> dict[str, list[ImageTask]]:
    """Tasks grouped by partition key (an image's variants together)."""
    grouped: dict[str, list[ImageTask]] = {}
    for task in tasks:
        grouped.setdefault(task.key, []).append(task)
    return grouped
