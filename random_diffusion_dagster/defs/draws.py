"""`image_draw`'s records: each image's draw (prompt, model with its settings, seed of each result) as its own data
version, so Dagster shows as stale exactly the results whose draw an edit changed.

`prompt_list` and `model_catalog` have one data version each: were `diffused_image` made from them directly, editing
one catalog entry would make every partition stale. It is made from `image_draw` instead, whose partitions change
version only where the draw changed. The diffusion step records the draw of every image it makes (a backfill counts a
partition done only when its run materialized it; the same version again stales nothing); after an edit,
`results_up_to_date` records the draws that differ from Dagster's record (the refresh run holds no GPU, so it cannot
run the diffusion step).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping

import dagster as dg
from dagster._core.definitions.data_version import (
    CODE_VERSION_TAG,
    DATA_VERSION_IS_USER_PROVIDED_TAG,
    DATA_VERSION_TAG,
    get_input_data_version_tag,
    get_input_event_pointer_tag,
)
from dagster._core.events import DagsterEvent, DagsterEventBatchMetadata, generate_event_batch_id
from dagster._core.execution.context.system import StepExecutionContext

from ..engine.freshness import UNPLANNABLE, Judgement
from ..engine.granularity import Granularity
from ..engine.plan import ImageTask, Planner, catalog_version, draw_version, prompts_version
from .asset_keys import IMAGE_DRAW_KEY, MODEL_CATALOG_KEY, PROMPT_LIST_KEY
from .metadata import TABLE_ROWS, table

MATERIALIZATION = dg.DagsterEventType.ASSET_MATERIALIZATION
VARIANTS_TAG = "random_diffusion/variants"  # on a draw record: how many results it covers (0: it names why none)

# On each diffused_image materialization: the prompt list and catalog its draw came from (prompt changed or catalog
# changed, as results_up_to_date tells them apart). Dagster's own input tags now name image_draw, not these two.
DRAWN_FROM_TAGS = {
    PROMPT_LIST_KEY: "random_diffusion/drawn_from_prompt_list",
    MODEL_CATALOG_KEY: "random_diffusion/drawn_from_model_catalog",
}


def drawn_from(planner: Planner) -> dict[dg.AssetKey, str]:
    """The prompt list and catalog a planner draws from, as the data versions `prompt_list` and `model_catalog` give
    them."""
    return {PROMPT_LIST_KEY: prompts_version(planner.prompts), MODEL_CATALOG_KEY: catalog_version(planner.catalog)}


def drawn_from_tags(planner: Planner) -> dict[str, str]:
    """The DRAWN_FROM_TAGS of results drawn by `planner`."""
    return {DRAWN_FROM_TAGS[key]: version for key, version in drawn_from(planner).items()}


def record_judged_draws(
    step: StepExecutionContext, planner: Planner, judged: Mapping[str, Judgement], granularity: Granularity
) -> int:
    """Record the draws an evaluation of the results judged (engine.freshness), where they differ from Dagster's
    record: today's draw of each image with a result, whether its results are current, or why nothing can be drawn
    for it."""
    return record_draws(
        step,
        planner,
        granularity,
        {key: judgement.planned for key, judgement in judged.items() if judgement.planned},
        current=frozenset(key for key, judgement in judged.items() if judgement.reason is None),
        undrawable={
            key: judgement.reason
            for key, judgement in judged.items()
            if judgement.reason and judgement.reason.startswith(UNPLANNABLE)
        },
    )


def record_draws(
    step: StepExecutionContext,
    planner: Planner,
    granularity: Granularity,
    draws: dict[str, list[ImageTask]],
    *,
    every: bool = False,
    current: frozenset[str] = frozenset(),
    undrawable: dict[str, str] | None = None,
) -> int:
    """Record each partition's draw (image key -> its tasks, all variants; a folder or shard partition's draw is its
    images') by `planner`, as one batch of events (one storage write); returns how many were recorded.

    `every`: the diffusion step's draws, each recorded. Otherwise (an evaluation of the results) only where Dagster's
    latest record is missing, holds another draw, or names another prompt list or catalog version (so an unchanged
    draw is not shown as Unsynced either). Images in `current` have current results: a record of more variants than
    drawn here is left alone (a `--variants 2` run made them). `undrawable` (key -> why): today's inputs draw nothing
    for the image (a template word it lacks): its result is stale, and its run says why.
    """
    undrawable = undrawable or {}
    versions = {key: draw_version(tasks) for key, tasks in draws.items() if tasks}
    versions |= {key: _digest_of_why(why) for key, why in undrawable.items()}
    if not versions:
        return 0
    if not granularity.per_image:
        versions, draws, current, undrawable = _by_partition(granularity, versions, draws, current, undrawable)
    inputs = {get_input_data_version_tag(key): version for key, version in drawn_from(planner).items()}
    to_record = list(versions) if every else _differing(step.instance, versions, draws, inputs, current)
    tags = inputs | _event_pointers(step.instance) | {CODE_VERSION_TAG: step.run_id}
    batch = generate_event_batch_id()
    for i, key in enumerate(to_record):
        tasks = draws.get(key, [])
        metadata = draw_metadata(tasks) if tasks else {}
        if key in undrawable:
            metadata["cannot_draw"] = dg.MetadataValue.text(undrawable[key])
        own = {
            DATA_VERSION_TAG: versions[key],
            DATA_VERSION_IS_USER_PROVIDED_TAG: "true",
            VARIANTS_TAG: str(len(tasks)),
        }
        materialization = dg.AssetMaterialization(IMAGE_DRAW_KEY, partition=key, metadata=metadata, tags=tags | own)
        DagsterEvent.asset_materialization(
            step, materialization, DagsterEventBatchMetadata(batch, is_end=i == len(to_record) - 1)
        )
    # What this step reads of image_draw for the provenance of what it records next (diffused_image) is now newer.
    step.wipe_input_asset_version_info(IMAGE_DRAW_KEY)
    return len(to_record)


def _by_partition(
    granularity: Granularity,
    versions: dict[str, str],
    draws: dict[str, list[ImageTask]],
    current: frozenset[str],
    undrawable: dict[str, str],
) -> tuple[dict[str, str], dict[str, list[ImageTask]], frozenset[str], dict[str, str]]:
    """The images' draws as their folder or shard partitions': a digest of the images' versions, all their tasks,
    current where every image is, and the images that cannot be drawn, named."""
    groups = granularity.group(versions)
    digest = granularity.partition_versions(versions)
    tasks = {partition: [task for key in keys for task in draws.get(key, [])] for partition, keys in groups.items()}
    whole = frozenset(partition for partition, keys in groups.items() if all(key in current for key in keys))
    why = {
        partition: "; ".join(f"{key}: {undrawable[key]}" for key in keys if key in undrawable)
        for partition, keys in groups.items()
        if any(key in undrawable for key in keys)
    }
    return digest, tasks, whole, why


def _differing(
    instance: dg.DagsterInstance,
    versions: dict[str, str],
    draws: dict[str, list[ImageTask]],
    inputs: dict[str, str],
    current: frozenset[str],
) -> list[str]:
    """The keys whose draw Dagster's latest record does not hold as `versions` and `inputs` say."""
    latest = {
        key: record.asset_materialization.tags or {}
        for key, record in latest_materializations(instance, IMAGE_DRAW_KEY, list(versions)).items()
    }

    def differs(key: str) -> bool:
        recorded = latest.get(key, {})
        if recorded.get(DATA_VERSION_TAG) == versions[key]:
            return any(recorded.get(name) != version for name, version in inputs.items())
        more_variants = int(recorded.get(VARIANTS_TAG) or 0) > len(draws.get(key, []))
        return not (key in current and draws.get(key) and more_variants)

    return [key for key in versions if differs(key)]


def _digest_of_why(why: str) -> str:
    return hashlib.sha256(f"cannot draw: {why}".encode()).hexdigest()[:16]


def _event_pointers(instance: dg.DagsterInstance) -> dict[str, str]:
    """The latest `prompt_list` and `model_catalog` events, as the input event tags Dagster writes on a step's
    output (its staleness reads an input's version only with its event)."""
    pointers = {}
    for record in instance.get_asset_records([PROMPT_LIST_KEY, MODEL_CATALOG_KEY]):
        event = record.asset_entry.last_materialization_record
        if event is not None:
            pointers[get_input_event_pointer_tag(record.asset_entry.asset_key)] = str(event.storage_id)
    return pointers


PARTITIONS_PER_QUERY = 10_000  # SQLite binds at most 32,766 values in one statement (some builds)


def latest_materializations(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partitions: list[str]
) -> dict[str, dg.EventLogRecord]:
    """Each partition's latest materialization record, read in chunks: a folder of 100,000 images is more values than
    SQLite binds in one query."""
    records = {}
    for start in range(0, len(partitions), PARTITIONS_PER_QUERY):
        chunk = partitions[start : start + PARTITIONS_PER_QUERY]
        latest = instance.event_log_storage.get_latest_storage_id_by_partition(
            asset_key, MATERIALIZATION, partitions=set(chunk)
        )
        if latest:
            fetched = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key, storage_ids=list(latest.values())), limit=len(latest)
            ).records
            records |= {record.partition_key: record for record in fetched}
    return records


def draw_metadata(tasks: list[ImageTask]) -> dict:
    """What a partition of `image_draw` shows: the first result's prompt, model and seed; every variant's as a table
    when it has several; a folder or shard partition's first TABLE_ROWS results as a table."""
    if len({task.key for task in tasks}) > 1:
        return _group_draw_metadata(tasks)
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


def _group_draw_metadata(tasks: list[ImageTask]) -> dict:
    ordered = sorted(tasks, key=lambda task: (task.source_file, task.variant))
    rows = [
        {"image": t.source_file, "variant": t.variant, "prompt": t.prompt, "model": t.model.name, "seed": str(t.seed)}
        for t in ordered[:TABLE_ROWS]
    ]
    models = Counter(task.model.name for task in tasks)
    shown = f"draws (first {TABLE_ROWS} of {len(tasks)})" if len(tasks) > TABLE_ROWS else "draws"
    columns = {"image": "string", "variant": "int", "prompt": "string", "model": "string", "seed": "string"}
    return {
        "images": len({task.key for task in tasks}),
        "results": len(tasks),
        "models": dg.MetadataValue.text(", ".join(f"{name}: {count}" for name, count in models.most_common())),
        shown: table(rows, columns),
    }
