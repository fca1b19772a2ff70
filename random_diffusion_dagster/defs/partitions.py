"""The `images` dynamic partitions (one per source image, keyed by its sanitised file name, or one per folder or
shard: RANDOM_DIFFUSION_PARTITIONS), the `models`
partitions (one per catalog model) and the image x model grid of comparisons."""

from dataclasses import dataclass

import dagster as dg

images_partitions = dg.DynamicPartitionsDefinition(name="images")
models_partitions = dg.DynamicPartitionsDefinition(name="models")  # kept equal to the catalog's names by model_catalog
comparison_partitions = dg.MultiPartitionsDefinition({"image": images_partitions, "model": models_partitions})

# Characters that break multi-partition keys (`|` separates dimensions, `,` `[` `]` break selections, `...` ranges).
UNSAFE_IN_MULTI_KEYS = ("|", ",", "[", "]", "...")

# Dagster's documentation recommends at most this many partitions per asset; it enforces no limit.
MAX_RECOMMENDED_PARTITIONS = 100_000


def partition_ceiling_warning(count: int) -> str | None:
    """What to tell a user whose folder has more images than Dagster recommends partitions for one asset."""
    if count <= MAX_RECOMMENDED_PARTITIONS:
        return None
    return (
        f"{count:,} images partitions: Dagster recommends at most {MAX_RECOMMENDED_PARTITIONS:,} partitions per "
        "asset (it enforces no limit, but partition views, status queries and backfills slow down past it). "
        "All images are still registered. To stay within it, set RANDOM_DIFFUSION_PARTITIONS=folder (a partition per "
        "folder of the tree) or shard:N (N stable shards of a flat folder, e.g. shard:1000); every finished result "
        "is reused (docs/million-images.md)."
    )


@dataclass(frozen=True)
class PartitionChanges:
    """What keeps the partitions in step with the folder: keys to add (in folder order) and to delete."""

    new: list[str]
    gone: list[str]


def partition_changes(existing: list[str], present: list[str]) -> PartitionChanges:
    """Deleted files lose their partition (its history stays); new files get one."""
    existing_set, present_set = set(existing), set(present)
    return PartitionChanges(
        new=[key for key in present if key not in existing_set], gone=sorted(existing_set - present_set)
    )


def multi_key_problem(key: str) -> str | None:
    """Why `key` cannot be one dimension of a multi-partition key, or None if it can."""
    if not key.strip() or any(c < " " for c in key):
        return "it is empty or holds control characters"
    bad = [part for part in UNSAFE_IN_MULTI_KEYS if part in key]
    return f"it contains {bad}" if bad else None


def sync_dynamic_partitions(
    instance: dg.DagsterInstance, partitions_def: dg.DynamicPartitionsDefinition, keys: list[str]
) -> PartitionChanges:
    """Make a dynamic dimension hold exactly `keys`: new ones added (in order), vanished ones deleted."""
    changes = partition_changes(instance.get_dynamic_partitions(partitions_def.name), keys)
    if changes.new:
        instance.add_dynamic_partitions(partitions_def.name, changes.new)
    for key in changes.gone:
        instance.delete_dynamic_partition(partitions_def.name, key)
    return changes
