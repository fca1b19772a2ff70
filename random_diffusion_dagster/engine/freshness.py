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
    """Why this image's result must be (re)made, or None if the result on disk is current."""
    record = read_result(planner.output_dir, source.partition_key)
    if record is None:
        return "missing"
    snapshot = SourceSnapshot(record.source_sha256, source.size, source.mtime_ns)
    if (record.source_bytes, record.source_mtime_ns) != (source.size, source.mtime_ns):
        snapshot = snapshot_source(source.path)  # touched or replaced: only the content can tell
        if snapshot.sha256 != record.source_sha256:
            return "source image changed"
    try:
        task = planner.task(source.partition_key, source.path, snapshot, planner.words_for(source))
    except PromptListError as exc:  # its run names the missing word for this image
        return f"cannot be planned: {exc}"
    if task.fingerprint != record.fingerprint:
        return "prompts, catalog, seed or caption changed"
    return None
