"""Which images need work: a result that is missing, or stale against today's inputs.

Cheap enough for a schedule tick: a stat per source and a PNG header read per result,
with no image decoding; only sources whose size or mtime moved are hashed.
"""

from __future__ import annotations

from .images import SourceFile
from .plan import ImageTask, Planner, SourceSnapshot, snapshot_source
from .prompts import PromptListError
from .results import ResultRecord, read_result

# Why a result must be made again, as the asset check and the catch-up log count them.
NO_RESULT = "no result on disk"
SOURCE_CHANGED = "source image changed"
PROMPT_CHANGED = "prompt changed"
CATALOG_CHANGED = "model catalog changed"
SEED_CHANGED = "run seed changed"


def why_stale(planner: Planner, source: SourceFile) -> str | None:
    """Why this image's results (all `planner.variants` of them) must be (re)made, or None if they are current."""
    records = [
        read_result(planner.output_dir, source.partition_key, source.relative_path, variant)
        for variant in range(planner.variants)
    ]
    if any(record is None for record in records):
        return NO_RESULT
    first = records[0]
    snapshot = SourceSnapshot(first.source_sha256, source.size, source.mtime_ns)
    if (first.source_bytes, first.source_mtime_ns) != (source.size, source.mtime_ns):
        snapshot = snapshot_source(source.path)  # touched or replaced: only the content can tell
        if snapshot.sha256 != first.source_sha256:
            return SOURCE_CHANGED
    try:
        words = planner.words_for(source)
        tasks = [
            planner.task(source.partition_key, source.path, snapshot, words, source.relative_path, variant, r.roll)
            for variant, r in enumerate(records)
        ]
    except PromptListError as exc:  # its run names the missing word for this image
        return f"cannot be planned: {exc}"
    for task, record in zip(tasks, records, strict=True):
        if task.fingerprint != record.fingerprint:
            return _what_changed(task, record)
    return None


def _what_changed(task: ImageTask, record: ResultRecord) -> str:
    """The first input that differs, in the order the draw uses them: a prompts edit redraws the prompt, a catalog
    edit the model or its settings, a new run seed everything."""
    if task.run_seed != record.run_seed:
        return SEED_CHANGED
    if task.prompt != record.prompt or task.negative_prompt != record.negative_prompt:
        return PROMPT_CHANGED
    return CATALOG_CHANGED  # same prompt: the model drawn, or its settings (steps, strength, adapters...)
