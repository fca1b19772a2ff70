"""The asset job that sensors, schedules, the CLI and `submit` launch."""

import dagster as dg

diffuse_images_job = dg.define_asset_job(
    name="diffuse_images",
    selection=["prompt_list", "model_catalog", "diffused_image"],
    description="Diffuse the selected `images` partitions with the current prompts and catalog.",
)
