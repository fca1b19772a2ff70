"""The `images` dynamic partitions: one per source image, keyed by its sanitised file name."""

from dataclasses import dataclass

import dagster as dg

images_partitions = dg.DynamicPartitionsDefinition(name="images")

# Dagster's documentation recommends at most this many partitions per asset; it enforces no limit.
MAX_RECOMMENDED_PARTITIONS = 100_000


def partition_ceiling_warning(count: int) -> str | None:
    """What to tell a user whose folder has more images than Dagster recommends partitions for one asset."""
    if count <= MAX_RECOMMENDED_PARTITIONS:
        return None
    return (
        f"{count:,} images partitions: Dagster recommends at most {MAX_RECOMMENDED_PARTITIONS:,} partitions per "
        "asset (it enforces no limit, but partition views, status queries and backfills slow down past it). "
        "All images are still registered. To stay within it, split the images into folders of at most "
        f"{MAX_RECOMMENDED_PARTITIONS:,} and serve each from its own Dagster deployment (its own DAGSTER_HOME "
        "and RANDOM_DIFFUSION_IMAGES_DIR); going past it is at your own risk."
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
