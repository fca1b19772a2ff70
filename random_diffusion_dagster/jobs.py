"""Asset jobs and the tags that make a run cover a range of partitions."""

import dagster as dg

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

diffuse_images_job = dg.define_asset_job(
    name="diffuse_images",
    selection=["prompt_list", "model_catalog", "diffused_image"],
    description="Diffuse the selected `images` partitions with the current prompts and catalog.",
)


def partition_range_tags(first: str, last: str) -> dict[str, str]:
    """Tags for one run over the contiguous partitions first..last (in insertion order)."""
    return {RANGE_START_TAG: first, RANGE_END_TAG: last}
