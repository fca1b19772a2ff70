"""A folder or shard partition's manifest: every result record of its images as one Parquet table, complete where
Dagster's materialization shows only the first rows. Rewritten whole (atomically) each time the partition is
recorded, from the records its run made or reused, which the PNGs carry too."""

from __future__ import annotations

import dataclasses
import io
import json
import os

from upath import UPath

from .granularity import TOP_FOLDER
from .output_location import location, write_bytes_atomic
from .results import ResultRecord

MANIFESTS_DIR = ".manifests"  # in the output folder, beside `.failures`; never a result's folder (results are named)
TOP_MANIFEST = "_top"  # TOP_FOLDER's file: no partition key starts with "_"
NESTED = ("quality", "loras", "embeddings")  # record fields that are structures: a JSON string column each


@dataclasses.dataclass(frozen=True)
class ManifestRow:
    """One result of the partition: its file, whether this run made it, and its record."""

    file: str  # relative to the output folder (the record's `output_file` is the file's name)
    status: str  # "generated" or "reused"
    record: ResultRecord


def manifest_path(output_dir: str | os.PathLike, partition_key: str) -> UPath:
    """`.manifests/<partition>.parquet` in the output folder (`.manifests/cat/kitten.parquet` for a nested folder)."""
    name = TOP_MANIFEST if partition_key == TOP_FOLDER else partition_key
    return location(output_dir) / MANIFESTS_DIR / f"{name}.parquet"


def write_manifest(output_dir: str | os.PathLike, partition_key: str, rows: list[ManifestRow]) -> UPath:
    """Write the partition's manifest, one row per result sorted by source file and variant; returns its path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([_flat(row) for row in sorted(rows, key=_order)])
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    path = manifest_path(output_dir, partition_key)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """The manifest's rows as dicts (nested fields parsed back from JSON)."""
    import pyarrow.parquet as pq

    with location(path).open("rb") as handle:
        rows = pq.read_table(handle).to_pylist()
    for row in rows:
        for name in NESTED:
            row[name] = None if row.get(name) is None else json.loads(row[name])
    return rows


def _order(row: ManifestRow) -> tuple[str, int]:
    return row.record.source_file, row.record.variant


def _flat(row: ManifestRow) -> dict:
    fields = dataclasses.asdict(row.record)
    for name in NESTED:
        fields[name] = None if fields[name] is None else json.dumps(fields[name], sort_keys=True)
    return {"file": row.file, "status": row.status, **fields}
