"""Splitting partitions into ranged runs: the one place that decides how many images a run covers.

Each run pays process start, imports and model loads once, so bigger runs are cheaper, while smaller
ones show their results in Dagster sooner (a run records them when its step ends). Ranged runs cover
consecutive partitions (in insertion order), which is what Dagster's range tags and backfill policy accept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import dagster as dg

from ..settings import max_partitions_per_run

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def partition_range_tags(first: str, last: str) -> dict[str, str]:
    """Tags for one run over the contiguous partitions first..last (in insertion order)."""
    return {RANGE_START_TAG: first, RANGE_END_TAG: last}


@dataclass(frozen=True)
class PartitionRange:
    """Consecutive partitions one run covers; `keys` are all of them, wanted or not."""

    keys: tuple[str, ...]

    @property
    def first(self) -> str:
        return self.keys[0]

    @property
    def last(self) -> str:
        return self.keys[-1]

    @property
    def tags(self) -> dict[str, str]:
        return partition_range_tags(self.first, self.last)


def partition_ranges(
    ordered_keys: list[str], wanted: Iterable[str], max_per_run: int | None = None, bridge_gaps: bool = False
) -> list[PartitionRange]:
    """Cover the wanted keys with ranges of at most `max_per_run` consecutive partitions
    (default: RANDOM_DIFFUSION_MAX_PARTITIONS_PER_RUN).

    Without `bridge_gaps` a range holds only wanted keys (e.g. a submission with its own prompts
    must not touch other images). With it, a range may span unwanted keys between wanted ones
    (fewer runs; those images are reused when their results are current).
    """
    limit = max_per_run or max_partitions_per_run()
    if limit < 1:
        raise ValueError(f"The number of partitions per run must be at least 1, got {limit}.")
    wanted = set(wanted)
    ranges: list[PartitionRange] = []
    current: list[str] = []  # from the range's first wanted key up to the last key seen
    last_wanted = -1  # index in `current` of its last wanted key

    def close() -> None:
        if last_wanted >= 0:
            ranges.append(PartitionRange(tuple(current[: last_wanted + 1])))

    for key in ordered_keys:
        if key in wanted:
            if len(current) >= limit:
                close()
                current, last_wanted = [], -1
            current.append(key)
            last_wanted = len(current) - 1
        elif current and bridge_gaps and len(current) < limit:
            current.append(key)
        elif current:
            close()
            current, last_wanted = [], -1
    close()
    return ranges


def ranged_run_requests(ranges: list[PartitionRange], run_key: Callable[[PartitionRange], str]) -> list[dg.RunRequest]:
    return [dg.RunRequest(run_key=run_key(r), tags=r.tags) for r in ranges]
