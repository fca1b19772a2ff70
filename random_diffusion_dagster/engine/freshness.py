"""Which images need work: a result that is missing, or stale against today's inputs.

Cheap enough for a schedule tick: a stat per source and a PNG header read per result,
with no image decoding; only sources whose size or mtime moved are hashed.
"""

from __future__ import annotations

import os

from .catalog import ModelSpec
from .choice import output_path_for, plan_job
from .images import SourceFile, file_sha256, read_record


def needs_work(
    source: SourceFile, prompts: list[str], catalog: list[ModelSpec], run_seed: int, output_dir: str
) -> str | None:
    """Why this image's result must be (re)made, or None if the result on disk is current."""
    record = read_record(output_path_for(output_dir, source.partition_key))
    if record is None:
        return "missing"
    source_sha256 = record.get("source_sha256")
    if (record.get("source_bytes"), record.get("source_mtime_ns")) != (source.size, source.mtime_ns):
        source_sha256 = file_sha256(source.path)  # touched or replaced: only the content can tell
        if source_sha256 != record.get("source_sha256"):
            return "source image changed"
    expected = plan_job(source.partition_key, source.path, source_sha256, prompts, catalog, run_seed, output_dir)
    if expected.fingerprint != record.get("fingerprint"):
        return "prompts, catalog or seed changed"
    return None


def stat_signature(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns
