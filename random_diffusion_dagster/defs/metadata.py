"""How results appear in Dagster: each partition recorded as its images are written, with metadata from its result
records; run-level figures."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluationTargetMaterializationData
from dagster._core.events import DagsterEvent, DagsterEventBatchMetadata, generate_event_batch_id

from ..engine.granularity import Granularity
from ..engine.manifest import ManifestRow, write_manifest
from ..engine.results import relative_result_path
from .asset_keys import DIFFUSED_IMAGE_KEY, IMAGE_DRAW_KEY

if TYPE_CHECKING:
    from ..engine.plan import ImageTask
    from ..engine.runner import ImageResult, RunSummary


def partition_metadata(result: ImageResult) -> dict:
    """What one partition's materialization shows: its record's partition fields, path and preview.

    Numbers Dagster would plot across materializations are kept for measurements (timings, memory);
    settings such as the seed or the step count are shown as text, so the Plots tab holds only measurements.
    """
    measurements = type(result.record).measurements()
    fields = result.record.partition_metadata()
    if "attempt" in fields:  # counted from 1 where people read it, as quality_gates' "passed on attempt 2 of 3" is
        fields["attempt"] += 1
    reused = result.status == "reused"
    if reused:  # its measurements and batch size are the making run's: said so in words, kept off this run's plots
        fields = {name: value for name, value in fields.items() if name not in measurements and name != "batch_size"}
    metadata = {
        name: value if name in measurements or not _is_number(value) else dg.MetadataValue.text(str(value))
        for name, value in fields.items()
    }
    if result.record.quality is not None:
        metadata["quality_gates"] = dg.MetadataValue.text(quality_summary(result.record))
    if result.record.pairs:
        metadata["pairs"] = dg.MetadataValue.text(pairs_summary(result.record.pairs))
    metadata["reused_existing"] = reused
    if reused:
        metadata["when_made"] = dg.MetadataValue.text(when_made(result.record))
    metadata["output_path"] = dg.MetadataValue.path(result.task.output_path)
    metadata["preview"] = dg.MetadataValue.md(f"![result]({result.preview})")
    return metadata


def pairs_summary(pairs: list[dict]) -> str:
    """A record's mask and control images in one line: `mask: 001.png; canny (scale 0.8): .controls/001.canny.png`."""
    parts = []
    for pair in pairs:
        scale = f" (scale {pair['scale']:g})" if "scale" in pair else ""
        parts.append(f"{pair['role']}{scale}: " + ("none, run without" if pair.get("run_without") else pair["file"]))
    return "; ".join(parts)


QUALITY_CHECK = "quality_gates"


def quality_summary(record) -> str:
    """A record's gates in one line: `passed on attempt 2 of 3 (seed 1236)` or why the kept result fails them."""
    if record.quality_failure:
        return f"failed, kept attempt {record.attempt + 1}: {record.quality_failure}"
    tries = record.quality["gates"]["tries"]
    return f"passed on attempt {record.attempt + 1} of {tries} (seed {record.seed})"


def quality_evaluation(
    asset_key: dg.AssetKey, key: str, results: list[ImageResult], target: dg.EventLogRecord | None
) -> dg.AssetCheckEvaluation:
    """The partition's `quality_gates` result: passed when each of its results passed its model's gates (or was
    made before gates existed), with every attempt of every result as a table; `target` is the partition's
    materialization it judges, so Dagster shows the check as that materialization's."""
    judged = _judged(results)
    failing = [r for r in judged if r.record.quality_failure]
    several = len({r.task.key for r in results}) > 1  # a folder or shard partition: its results are named by file
    metadata = {
        "attempts": max((len(r.record.quality["attempts"]) for r in judged), default=0),
        # A folder's failing results first, within the table's rows.
        "attempt_table": attempt_table(
            sorted(judged, key=lambda r: not r.record.quality_failure)[:TABLE_ROWS] if several else judged
        ),
    }
    if judged:
        metadata["gates"] = dg.MetadataValue.json(judged[0].record.quality["gates"])
    if failing:
        description = "; ".join(
            f"{r.task.source_file + ' ' if several else ''}variant {r.task.variant}: {r.record.quality_failure}"
            for r in failing
        )
    elif judged and several:
        description = f"all {len(judged)} results passed their gates"
    elif judged:
        description = "; ".join(quality_summary(r.record) for r in judged)
    else:
        description = "made before quality gates existed: not judged"
    return dg.AssetCheckEvaluation(
        asset_key=asset_key,
        check_name=QUALITY_CHECK,
        passed=not failing,
        metadata=metadata,
        description=description,
        partition=key,
        target_materialization_data=None
        if target is None
        else AssetCheckEvaluationTargetMaterializationData(
            storage_id=target.storage_id, run_id=target.run_id, timestamp=target.timestamp
        ),
    )


def _judged(results: list[ImageResult]) -> list[ImageResult]:
    """The results whose records carry gate results (not those made before gates existed), by variant."""
    return sorted((r for r in results if r.record.quality is not None), key=lambda r: r.task.variant)


def attempt_table(judged: list[ImageResult]) -> dg.TableMetadataValue:
    """Every attempt of each result: its seed, measures, failed gates, and which one was kept."""
    rows = [
        {
            "variant": r.task.variant,
            "attempt": attempt["attempt"] + 1,
            "seed": str(attempt["seed"]),
            "contrast": attempt["contrast"],
            "change": attempt["change"],
            "failed_gates": ", ".join(attempt["failed"]) or "none",
            "kept": attempt["attempt"] == r.record.attempt,
        }
        for r in judged
        for attempt in r.record.quality["attempts"]
    ]
    columns = {"variant": "int", "attempt": "int", "seed": "string", "contrast": "float", "change": "float"}
    return table(rows, columns | {"failed_gates": "string", "kept": "bool"})


def when_made(record) -> str:
    """A reused result's making, in one line: `made 2026-12-06T12:00:00: inference 0.52 s, total 0.61 s, ...`."""
    figures = [
        f"{label} {value:g}{unit}"
        for label, value, unit in (
            ("inference", record.inference_seconds, " s"),
            ("total", record.total_seconds, " s"),
            ("model load share", record.pipeline_load_seconds, " s"),
            ("peak VRAM reserved", record.vram_peak_reserved_mb, " MiB"),
            ("peak RSS", record.rss_peak_mb, " MiB"),
            ("batch of", record.batch_size, ""),
        )
        if value is not None
    ]
    return f"reused; made {record.created_at or 'by an earlier run'}: " + ", ".join(figures)


def metadata_by_partition(results: list[ImageResult]) -> dict[str, dict]:
    """Each partition's metadata from its results: the first variant's fields, and with several variants a
    `variants` table of every one (its prompt, model, seed and file)."""
    by_key: dict[str, list[ImageResult]] = {}
    for result in sorted(results, key=lambda r: r.task.variant):
        by_key.setdefault(result.task.key, []).append(result)
    metadata = {}
    for key, variants in by_key.items():
        metadata[key] = partition_metadata(variants[0])
        if len(variants) > 1 or variants[0].task.variant:
            rows = [
                {
                    "variant": r.task.variant,
                    "prompt": r.record.prompt,
                    "model": r.record.model,
                    "seed": str(r.record.seed),
                    "file": r.task.output_path,
                    "reused": r.status == "reused",
                }
                for r in variants
            ]
            columns = {"variant": "int", "prompt": "string", "model": "string", "seed": "string", "file": "path"}
            metadata[key]["variants"] = table(rows, columns | {"reused": "bool"})
        if judged := _judged(variants):
            metadata[key]["quality_attempts"] = attempt_table(judged)
    return metadata


TABLE_ROWS = 100  # rows of a folder or shard partition's table in the UI; its manifest on disk holds every one


def group_metadata(results: list[ImageResult], expected: int, manifest: str) -> dict:
    """What a folder or shard partition's materialization shows: its totals, the first TABLE_ROWS results as a
    table, the path of its manifest (every result's record) and the first result's preview."""
    results = sorted(results, key=lambda r: (r.task.source_file, r.task.variant))
    made = [r for r in results if r.status != "reused"]
    metadata = {
        "images": len({r.task.key for r in results}),
        "results": len(results),
        "generated": len(made),
        "reused": len(results) - len(made),
        "not_made": expected - len(results),
        "manifest": dg.MetadataValue.path(manifest),
    }
    if made:  # measurements of this run's own images only, as an image partition's
        metadata["inference_seconds"] = round(sum(r.record.inference_seconds for r in made), 3)
        metadata["seconds_per_image"] = round(sum(r.record.total_seconds for r in made) / len(made), 3)
        vram = [r.record.vram_peak_reserved_mb for r in made if r.record.vram_peak_reserved_mb is not None]
        if vram:
            metadata["vram_peak_reserved_mb"] = max(vram)
    if failing := sum(1 for r in results if r.record.quality_failure):
        metadata["quality_gate_failures"] = failing
    rows = [
        {
            "image": r.task.source_file,
            "variant": r.task.variant,
            "prompt": r.record.prompt,
            "model": r.record.model,
            "seed": str(r.record.seed),
            "seconds": r.record.total_seconds,
            "reused": r.status == "reused",
            "file": r.task.output_path,
        }
        for r in results[:TABLE_ROWS]
    ]
    columns = {"image": "string", "variant": "int", "prompt": "string", "model": "string", "seed": "string"}
    shown = f"results (first {TABLE_ROWS} of {len(results)})" if len(results) > TABLE_ROWS else "results"
    metadata[shown] = table(rows, columns | {"seconds": "float", "reused": "bool", "file": "path"})
    if results and results[0].preview:
        metadata["preview"] = dg.MetadataValue.md(f"![result]({results[0].preview})")
    return metadata


def record_partition_metadata(context: dg.AssetExecutionContext, metadata_by_partition: Mapping[str, dict]) -> None:
    """Give each partition of the run's range its own materialization metadata, reading the partition list once.

    Dagster's `add_asset_metadata(partition_key=...)` checks the key against the run's range by reading every
    key of the dynamic partitions from storage, and two more lookups, on each call: a run's worth of calls over a
    large folder reads millions of keys. While the metadata is added, the instance
    answers those reads from one read of each partition set; the check then sees the keys as the step began.
    """
    instance = context.instance
    read_keys = type(instance).get_dynamic_partitions
    keys_by_name: dict[str, list[str]] = {}
    known_by_name: dict[str, set[str]] = {}

    def get_dynamic_partitions(partitions_def_name: str) -> list[str]:
        if partitions_def_name not in keys_by_name:
            keys_by_name[partitions_def_name] = list(read_keys(instance, partitions_def_name))
        return keys_by_name[partitions_def_name]

    def has_dynamic_partition(partitions_def_name: str, partition_key: str) -> bool:
        if partitions_def_name not in known_by_name:
            known_by_name[partitions_def_name] = set(get_dynamic_partitions(partitions_def_name))
        return partition_key in known_by_name[partitions_def_name]

    instance.get_dynamic_partitions = get_dynamic_partitions
    instance.has_dynamic_partition = has_dynamic_partition
    try:
        for partition_key, metadata in metadata_by_partition.items():
            context.add_asset_metadata(metadata, partition_key=partition_key)
    finally:
        del instance.get_dynamic_partitions, instance.has_dynamic_partition


class PartitionRecorder:
    """Records each partition of a step's range as soon as all its results are on disk, while the run goes on.

    Called with the results the engine hands over batch by batch (run_tasks' `finished`, on the engine's hand-over
    thread), it writes one materialization per partition whose variants are all in, with its metadata and the
    provenance Dagster would write at the step's end, each batch's as one batch of events (one storage write, as
    Dagster writes a step's output). The partition turns green and a backfill's progress moves at once; the step's
    output (`recorded_already`) adds no second materialization. `finish` records the partitions left with
    only some results (a variant failed, or the run was stopped part way): what is on disk, as the record says.
    """

    def __init__(
        self,
        context: dg.AssetExecutionContext,
        tasks: list[ImageTask],
        tags: Mapping[str, str],
        granularity: Granularity,
        output_dir: str,
    ):
        self._context = context
        self._check = dg.AssetCheckKey(DIFFUSED_IMAGE_KEY, QUALITY_CHECK) in context.selected_asset_check_keys
        self._step = context.get_step_execution_context()
        self._tags = provenance_tags(context, DIFFUSED_IMAGE_KEY) | dict(tags)
        self._partition_of = granularity.partition_of
        self._per_image = granularity.per_image
        self._output_dir = output_dir
        self._expected = Counter(self._partition_of(task.key) for task in tasks)
        self._waiting: dict[str, list[ImageResult]] = {}

    def __call__(self, results: list[ImageResult]) -> None:
        for result in results:
            self._waiting.setdefault(self._partition_of(result.task.key), []).append(result)
        complete = [key for key, done in self._waiting.items() if len(done) == self._expected[key]]
        self._record({key: self._waiting.pop(key) for key in complete})

    def finish(self) -> None:
        waiting, self._waiting = self._waiting, {}
        self._record(waiting)

    def _metadata(self, by_key: dict[str, list[ImageResult]]) -> dict[str, dict]:
        """Each partition's metadata; a folder or shard partition's manifest is written first."""
        if self._per_image:
            return metadata_by_partition([result for results in by_key.values() for result in results])
        metadata = {}
        for key, results in by_key.items():
            rows = [
                ManifestRow(
                    relative_result_path(self._output_dir, result.task.output_path), result.status, result.record
                )
                for result in results
            ]
            manifest = write_manifest(self._output_dir, key, rows)
            metadata[key] = group_metadata(results, self._expected[key], str(manifest))
        return metadata

    def _record(self, by_key: dict[str, list[ImageResult]]) -> None:
        by_partition = self._metadata(by_key)
        batch = generate_event_batch_id()
        for i, (key, metadata) in enumerate(by_partition.items()):
            materialization = dg.AssetMaterialization(
                DIFFUSED_IMAGE_KEY, partition=key, metadata=metadata, tags=self._tags
            )
            DagsterEvent.asset_materialization(
                self._step, materialization, DagsterEventBatchMetadata(batch, is_end=i == len(by_partition) - 1)
            )
        if self._check and by_partition:
            self._judge(by_key)

    def _judge(self, by_key: dict[str, list[ImageResult]]) -> None:
        """Each just-recorded partition's `quality_gates` evaluation, aimed at that materialization.

        A step's own AssetCheckResult names at most the step's one partition key (`to_asset_check_evaluation` in
        dagster/_core/definitions/asset_checks/asset_check_result.py); an AssetCheckEvaluation carries any
        partition, and Dagster shows a partition's result only while it targets the partition's latest
        materialization (`is_current` in dagster/_core/storage/asset_check_execution_record.py).
        """
        recorded = self._context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=DIFFUSED_IMAGE_KEY, asset_partitions=list(by_key)),
            limit=len(by_key),
        ).records  # newest first: the ones just written
        targets: dict[str, dg.EventLogRecord] = {}
        for record in recorded:
            targets.setdefault(record.partition_key, record)
        for key, partition_results in by_key.items():
            evaluation = quality_evaluation(DIFFUSED_IMAGE_KEY, key, partition_results, targets.get(key))
            DagsterEvent.asset_check_evaluation(self._step, evaluation)


def recorded_already(context: dg.AssetExecutionContext) -> Iterator[dg.MaterializeResult | dg.Output]:
    """The outputs of a step whose partitions a PartitionRecorder has recorded: the asset's checks and the steps after
    it in the run go ahead, and the step's end writes no second materialization of every partition.

    The `quality_gates` check, when the run selected it, gets its output as an AssetCheckResult's would
    (`_process_user_event` in dagster/_core/execution/plan/execute_step.py): its per-partition results are recorded
    already, and a step that leaves a selected check's output out fails.

    No public API says "the body recorded the materializations". Dagster's own observable source assets, which log
    their events in the body too, say it with this metadata key, and the step's end then writes no asset events for
    the output (`_log_materialization_or_observation_events_for_asset` in dagster/_core/execution/plan/
    execute_step.py); tests/test_progress.py fails if a Dagster upgrade writes them again. Leaving the output out
    (`output_required=False`) writes none either, but makes Dagster skip the checks that run with the asset.
    """
    from dagster._core.definitions.source_asset import SYSTEM_METADATA_KEY_SOURCE_ASSET_OBSERVATION

    for key in (IMAGE_DRAW_KEY, DIFFUSED_IMAGE_KEY):  # in the order Dagster wants a multi-asset's outputs
        yield dg.MaterializeResult(asset_key=key, metadata={SYSTEM_METADATA_KEY_SOURCE_ASSET_OBSERVATION: True})
    check = dg.AssetCheckKey(DIFFUSED_IMAGE_KEY, QUALITY_CHECK)
    if check in context.selected_asset_check_keys:
        yield dg.Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(check))


def provenance_tags(context: dg.AssetExecutionContext, asset_key: dg.AssetKey) -> dict[str, str]:
    """The data-version tags Dagster puts on a step's output materializations: the code version, each input's data
    version and event pointer, and the data version derived from them (how Dagster tells stale from up to date).

    They come from the function that builds Dagster's own step-end events (`_get_output_asset_events` in
    dagster/_core/execution/plan/execute_step.py), asked once for an unpartitioned event: Dagster gives every
    partition of a step the same tags. Asked after the step has reported the versions of the files it read
    (`report_what_was_read`), as Dagster would read them at the step's end.
    """
    from dagster._core.definitions.assets.definition.asset_spec import AssetExecutionType
    from dagster._core.execution.plan.execute_step import _get_output_asset_events

    step = context.get_step_execution_context()
    output_def = step.op_def.output_def_named(context.assets_def.get_output_name_for_asset_key(asset_key))
    (event,) = _get_output_asset_events(
        asset_key, [], dg.Output(None), output_def, {}, step, AssetExecutionType.MATERIALIZATION
    )
    return dict(event.tags)


RUN_TAG_PREFIX = "random_diffusion/"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def run_figures(summary: RunSummary, failures: dict[str, str]) -> dict[str, str]:
    """The run's totals, as run tags: shown on the run's page, not stamped on each image."""
    generated = len(summary.with_status("generated"))
    figures = {  # rates and batch figures over the images this run made; "" where it made none
        "generated": generated,
        "reused": len(summary.with_status("reused")),
        "failed": len(failures),
        "pipeline_loads": summary.pipeline_loads,
        "compiled_graphs": summary.compiled_graphs,
        "graphs_from_cache": summary.graphs_from_cache,
        "batch_size": max(summary.batches, default=""),  # the largest pipeline call made, not the limit
        "batch_size_limit": summary.batch_size,
        "pipeline_calls": len(summary.batches),
        "mean_batch_fill": "" if summary.mean_batch_fill is None else round(summary.mean_batch_fill, 3),
        "images_per_second": round(summary.images_per_second, 3) if generated else "",
        "device": summary.device,
    }
    return {f"{RUN_TAG_PREFIX}{name}": str(value) for name, value in figures.items()}


def table(rows: list[dict], columns: dict[str, str]) -> dg.TableMetadataValue:
    """A real table in the UI (sortable, not clipped like markdown); `columns` maps name -> Dagster type."""
    schema = dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in columns.items()])
    records = [dg.TableRecord({name: _cell(row.get(name)) for name in columns}) for row in rows]
    return dg.MetadataValue.table(records, schema=schema)


def _cell(value):
    """Table cells take plain values; missing numbers (NaN, e.g. no VRAM on a CPU) are empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item"):  # numpy scalars from pandas
        return value.item()
    return value if isinstance(value, (str, int, float, bool)) else str(value)
