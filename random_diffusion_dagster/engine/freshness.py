"""Which images need work: a result that is missing, or stale against today's inputs.

Cheap enough for a schedule tick: a stat per source and a PNG header read per result,
with no image decoding; only sources whose size or mtime moved are hashed.
"""

from __future__ import annotations

from .images import SourceFile
from .plan import Planner, SourceSnapshot, snapshot_source
from .prompts import PromptListError
from .results import read_result


def why_stale(planner: Planner, source: SourceFile) -> str | None:
    """Why this image's results (all `planner.variants` of them) must be (re)made, or None if they are current."""
    records = [
        read_result(planner.output_dir, source.partition_key, source.relative_path, variant)
        for variant in range(planner.variants)
    ]
    if any(record is None for record in records):
        return "missing"
    first = records[0]
    snapshot = SourceSnapshot(first.source_sha256, source.size, source.mtime_ns)
    if (first.source_bytes, first.source_mtime_ns) != (source.size, source.mtime_ns):
        snapshot = snapshot_source(source.path)  # touched or replaced: only the content can tell
        if snapshot.sha256 != first.source_sha256:
            return "source image changed"
    try:
        words = planner.words_for(source)
        tasks = [
            planner.task(source.partition_key, source.path, snapshot, words, source.relative_path, variant, r.roll)
            for variant, r in enumerate(records)
        ]
    except PromptListError as exc:  # its run names the missing word for this image
        return f"cannot be planned: {exc}"
    if any(task.fingerprint != record.fingerprint for task, record in zip(tasks, records, strict=True)):
        return "prompts, catalog, seed or caption changed"
    return None
