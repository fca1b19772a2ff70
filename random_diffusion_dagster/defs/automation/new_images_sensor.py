"""`new_images_sensor`: keeps the `images` partitions in step with the folder and asks for runs."""

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg

from ...engine.captions import Captions
from ...engine.granularity import Granularity
from ...engine.images import SourceFile, image_problem, quick_image_problem
from ...settings import sensor_interval_seconds
from ..jobs import diffuse_images_job
from ..partitions import images_partitions, partition_ceiling_warning, partition_changes
from ..pools import ensure_gpu_pool_limit
from ..resources import DatasetResource
from ..run_ranges import partition_ranges, ranged_run_requests
from ..source_versions import IMAGE_FILES, image_file_version, version_event

# A file whose size and mtime have not moved for this long, or since the last tick, is complete.
SETTLE_SECONDS = 60
# A tick's mark lies this far before its scan started: file timestamps can be up to a second or two coarse
# and the kernel's clock for them lags time.time_ns() a little, so a change just before the scan is not missed.
CHANGE_MARGIN_NS = 5 * 10**9
# Files changed inside the margin are remembered one by one; past this many the margin shrinks (to none).
RECENT_LIMIT = 1_000
CURSOR_VERSION = 2


def _signature(source: SourceFile) -> str:
    return f"{source.size}:{source.mtime_ns}"


def _registered_by_others(ordered: list[str], last: str | None, has_cursor: bool) -> set[str]:
    """Partitions added since the last tick by someone else (CLI, `source_images`): insertion order tells."""
    if not has_cursor or last is None:
        return set(ordered)
    if last not in ordered:
        return set()  # our last key was deleted meanwhile: cannot tell, treat none as theirs
    return set(ordered[ordered.index(last) + 1 :])


def _next_mark(last_mark: int, scan_ns: int, handled_ctimes: list[int]) -> int:
    """The margin before the scan, narrowed when more than RECENT_LIMIT handled files changed inside it.

    Never earlier than the last mark: files older than that were not looked at, so not remembered.
    """
    mark = max(last_mark, scan_ns - CHANGE_MARGIN_NS)
    inside = sorted((c for c in handled_ctimes if c >= mark), reverse=True)
    if len(inside) > RECENT_LIMIT:
        mark = min(scan_ns, inside[RECENT_LIMIT] + 1)
    return mark


@dataclass(frozen=True)
class NewImagesDecision:
    """What one tick does: the partitions to add and delete, the images to run again, and the next cursor."""

    new_keys: list[str]
    replaced: dict[str, str]  # key -> path of an image whose file was replaced
    gone: list[str]  # partitions whose file is gone
    kept: list[str]  # the partitions after this tick, in order
    signatures: dict[str, str]  # key -> "size:mtime" of each new or replaced file
    skipped: dict[str, str]  # file name -> why it is not an image
    cursor: dict


def decide(
    state: dict,
    ordered: list[str],
    files: list[SourceFile],
    scan_ns: int,
    unreadable: Callable[[SourceFile], str | None],
    granularity: Granularity = Granularity(),
) -> NewImagesDecision:
    """The sensor's decision from its cursor (`state`), the registered partitions in order, the files the scan found
    at `scan_ns`, `unreadable` (why a new file is not an image, or None) and the partition `granularity`.

    Files are followed one by one (the cursor's entries are image keys); partitions are what is added, deleted and
    run. A folder or shard partition with a new or replaced file runs again (reusing its other images) once all its
    files have settled.

    Looks only at files whose inode changed since the last tick, so the cursor does not grow with the folder.
    The cursor holds a mark (a time just before the last scan), the last partition key it knew, the files
    still settling and the files handled that changed inside the margin before the scan: never one entry
    per file of a quiet folder. A file whose change time (ctime) is older than the mark is as the last tick
    left it. Anything that replaces a file moves its ctime, even when the mtime is set into the past
    (`cp -p`, rsync, `os.utime`), so such a replacement still runs again.

    Trade-off: with no per-file signatures, a registered file whose ctime moved but whose content did not
    (chmod, chown, a new hard link to it) counts as replaced: one more run per range, which reuses its
    current results instead of diffusing again; its run_key holds the files' sizes and mtimes, so a second
    metadata change to the same files asks for the same run_key, which Dagster does not run twice.
    A filesystem whose clock runs more than CHANGE_MARGIN_NS behind this machine's can hide a change from the
    sensor; the nightly catch-up schedule compares contents.
    """
    if state.get("granularity", "image") != str(granularity):
        state = {}  # partitions of another granularity: every file is looked at again, as on a first tick
    has_cursor = "mark" in state
    mark: int = state.get("mark", 0)
    waiting: dict[str, str] = state.get("waiting", {})  # key -> signature seen last tick, not yet settled
    recent: dict[str, int] = state.get("recent", {})  # key -> ctime of a handled file that changed near the mark
    legacy_seen: dict[str, str] = state.get("seen", {})  # cursors before version 2: key -> signature
    partitions = set(ordered)
    if legacy_seen:
        theirs = partitions - set(legacy_seen)
    else:
        theirs = _registered_by_others(ordered, state.get("last"), has_cursor)

    new_keys, next_waiting, accepted = [], {}, set()
    replaced: dict[str, str] = {}
    changes: dict[str, dict[str, str]] = {}  # partition -> image key -> signature, of its new or replaced files
    skipped: dict[str, str] = {}
    # Image key -> ctime of each file settled and dealt with in this tick that changed inside the margin before the
    # scan: only those can be remembered (_next_mark never goes earlier than `near_scan`).
    handled: dict[str, int] = {}
    near_scan = scan_ns - CHANGE_MARGIN_NS
    for source in files:
        image, ctime = source.partition_key, source.ctime_ns  # ctime: from the scan's own stat
        if ctime < mark and image not in waiting:
            continue  # nothing about this file changed since the last tick looked
        key, signature = granularity.partition_of(image), _signature(source)
        if recent.get(image) == ctime or legacy_seen.get(image) == signature or key in theirs:
            if ctime >= near_scan:
                handled[image] = ctime  # unchanged, or registered by the CLI or `source_images`: theirs to run
            continue
        settled = waiting.get(image) == signature or scan_ns - source.mtime_ns > SETTLE_SECONDS * 1e9
        if not settled:
            next_waiting[image] = signature
            continue
        if ctime >= near_scan:
            handled[image] = ctime
        changes.setdefault(key, {})[image] = signature
        if key in partitions:
            replaced.setdefault(key, source.path)
            continue
        if key in accepted:
            continue  # a folder or shard with an image already: its run leaves its other non-images out
        reason = unreadable(source)
        if reason is not None:
            skipped[source.name] = reason
            continue
        accepted.add(key)
        new_keys.append(key)
    if not granularity.per_image:  # a folder or shard runs once every file in it has settled
        busy = {granularity.partition_of(image) for image in next_waiting}
        new_keys = [key for key in new_keys if key not in busy]
        replaced = {key: path for key, path in replaced.items() if key not in busy}
    signatures = {key: _partition_signature(changed, granularity) for key, changed in changes.items()}

    gone = partition_changes(ordered, [granularity.partition_of(source.partition_key) for source in files]).gone
    gone_set = set(gone)
    kept = [key for key in ordered if key not in gone_set] + new_keys
    next_mark = _next_mark(mark, scan_ns, list(handled.values()))
    cursor = {
        "v": CURSOR_VERSION,
        "mark": next_mark,
        "last": kept[-1] if kept else None,
        "waiting": next_waiting,
        "recent": {key: ctime for key, ctime in handled.items() if ctime >= next_mark},
    }
    if not granularity.per_image:
        cursor["granularity"] = str(granularity)
    return NewImagesDecision(new_keys, replaced, gone, kept, signatures, skipped, cursor)


def _image_versions(dataset: DatasetResource, files: list[SourceFile], partitions: list[str]) -> dict[str, str | None]:
    """The versions of the images of these partitions, from this tick's scan."""
    if not partitions:
        return {}
    captions, pairs = Captions(), dataset.pair_folders()
    grouped = dataset.by_partition(files, set(partitions))
    return {
        source.partition_key: image_file_version(source, captions, pairs)
        for group in grouped.values()
        for source in group
    }


def _partition_signature(changed: dict[str, str], granularity: Granularity) -> str:
    """What names a partition's change in run keys: its file's `size:mtime`, or a digest of its changed files'."""
    if granularity.per_image:
        (signature,) = changed.values()
        return signature
    return hashlib.sha1("\n".join(f"{k}:{v}" for k, v in sorted(changed.items())).encode()).hexdigest()[:16]


@dg.sensor(
    name="new_images_sensor",
    job=diffuse_images_job,
    minimum_interval_seconds=sensor_interval_seconds(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds an images partition for each new image (detected by content, once fully written), "
    "deletes those whose file is gone, and requests batched runs for new and replaced images.",
)
def new_images_sensor(context: dg.SensorEvaluationContext, dataset: DatasetResource) -> dg.SensorResult:
    """Applies `decide` to the folder: partition requests, runs in ranges, and replaced images' new versions."""
    state = json.loads(context.cursor) if context.cursor else {}
    ordered = context.instance.get_dynamic_partitions(images_partitions.name)
    scan_ns = time.time_ns()
    files = dataset.source_files()
    granularity = dataset.granularity
    # A new image partition's file is probed; a folder's or shard's files by suffix first (a million files a tick).
    probe = image_problem if granularity.per_image else quick_image_problem
    decision = decide(state, ordered, files, scan_ns, lambda source: probe(source.path), granularity)
    for name, reason in decision.skipped.items():
        context.log.info(f"Skipping {name}: {reason}")
    new_keys, replaced_keys, gone = decision.new_keys, list(decision.replaced), decision.gone
    if new_keys or replaced_keys or gone:
        what = "images" if granularity.per_image else f"partitions ({granularity})"
        context.log.info(f"{len(new_keys)} new, {len(replaced_keys)} replaced, {len(gone)} removed {what}")
    warning = partition_ceiling_warning(len(decision.kept))
    if warning and (new_keys or "mark" not in state):
        context.log.warning(warning)

    # Added in one request at the end, the new keys are contiguous in partition order.
    signatures = decision.signatures
    requests = ranged_run_requests(
        partition_ranges(new_keys, new_keys), lambda r: f"new:{r.first}...{r.last}:{signatures[r.first]}"
    )
    requests += _replaced_requests(ordered, replaced_keys, signatures)
    partition_requests = []
    if requests:
        ensure_gpu_pool_limit(context.instance)  # before the first of these runs is queued
    if new_keys:
        partition_requests.append(images_partitions.build_add_request(new_keys))
    if gone:
        partition_requests.append(images_partitions.build_delete_request(gone))
    # A replaced image's new content, as Dagster's data version: its result shows as stale until redone.
    versions = granularity.partition_versions(_image_versions(dataset, files, list(decision.replaced)))
    replaced_versions = [version_event(IMAGE_FILES, version, partition=key) for key, version in versions.items()]
    return dg.SensorResult(
        run_requests=requests,
        asset_events=replaced_versions,
        dynamic_partitions_requests=partition_requests,
        cursor=json.dumps(decision.cursor, separators=(",", ":")),
    )


def _replaced_requests(ordered: list[str], replaced: list[str], signatures: dict[str, str]) -> list[dg.RunRequest]:
    """One run per range of consecutive replaced partitions; the run_key changes with any file's size or mtime."""
    requests = []
    for r in partition_ranges(ordered, replaced):
        if len(r.keys) == 1:
            requests.append(dg.RunRequest(run_key=f"replaced:{r.first}:{signatures[r.first]}", partition_key=r.first))
        else:
            digest = hashlib.sha1("\n".join(f"{k}:{signatures[k]}" for k in r.keys).encode()).hexdigest()[:16]
            requests.append(dg.RunRequest(run_key=f"replaced:{r.first}...{r.last}:{digest}", tags=r.tags))
    return requests
