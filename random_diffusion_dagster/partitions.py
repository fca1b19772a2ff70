"""The `images` dynamic partitions: one per source image, keyed by its sanitised file name."""

from dataclasses import dataclass

import dagster as dg

images_partitions = dg.DynamicPartitionsDefinition(name="images")


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
