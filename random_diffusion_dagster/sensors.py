"""`new_images_sensor`: keeps the `images` partitions in step with the folder and asks for runs."""

import json
import time

import dagster as dg

from .batching import partition_ranges, ranged_run_requests
from .engine.images import ImageLoadError, SourceFile, probe_image
from .jobs import diffuse_images_job
from .partitions import images_partitions, partition_changes
from .resources import DatasetResource

# A file whose size and mtime have not moved for this long, or since the last tick, is complete.
SETTLE_SECONDS = 60


def _signature(source: SourceFile) -> str:
    return f"{source.size}:{source.mtime_ns}"


@dg.sensor(
    name="new_images_sensor",
    job=diffuse_images_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds an `images` partition for each new image (detected by content, once fully written), "
    "deletes those whose file is gone, and requests batched runs for new and replaced images.",
)
def new_images_sensor(context: dg.SensorEvaluationContext, dataset: DatasetResource) -> dg.SensorResult:
    state = json.loads(context.cursor) if context.cursor else {}
    seen: dict[str, str] = state.get("seen", {})  # key -> signature of the file last registered or skipped
    waiting: dict[str, str] = state.get("waiting", {})  # key -> signature seen last tick, not yet settled
    partitions = set(context.instance.get_dynamic_partitions(images_partitions.name))
    files = dataset.source_files()
    now_ns = time.time_ns()

    new_keys, replaced_keys, next_waiting = [], [], {}
    for source in files:
        key, signature = source.partition_key, _signature(source)
        if seen.get(key) == signature:
            continue
        if key in partitions and key not in seen:
            seen[key] = signature  # registered before this sensor knew it (CLI or source_images)
            continue
        settled = waiting.get(key) == signature or now_ns - source.mtime_ns > SETTLE_SECONDS * 1e9
        if not settled:
            next_waiting[key] = signature
            continue
        seen[key] = signature
        try:
            probe_image(source.path)
        except ImageLoadError as exc:
            context.log.info(f"Skipping {source.name}: {exc}")
            continue
        (replaced_keys if key in partitions else new_keys).append(key)

    present = [source.partition_key for source in files]
    gone = partition_changes(list(partitions), present).gone
    for key in set(seen) - set(present):
        del seen[key]
    if new_keys or replaced_keys or gone:
        context.log.info(f"{len(new_keys)} new, {len(replaced_keys)} replaced, {len(gone)} removed images")

    # Added in one request at the end, the new keys are contiguous in partition order.
    requests = ranged_run_requests(
        partition_ranges(new_keys, new_keys), lambda r: f"new:{r.first}...{r.last}:{seen[r.first]}"
    )
    requests += [dg.RunRequest(run_key=f"replaced:{key}:{seen[key]}", partition_key=key) for key in replaced_keys]
    partition_requests = []
    if new_keys:
        partition_requests.append(images_partitions.build_add_request(new_keys))
    if gone:
        partition_requests.append(images_partitions.build_delete_request(gone))
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=partition_requests,
        cursor=json.dumps({"seen": seen, "waiting": next_waiting}, separators=(",", ":")),
    )
