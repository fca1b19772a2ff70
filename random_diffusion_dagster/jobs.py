"""Asset jobs: the whole pipeline in one selection, for the CLI, schedules and the API."""

import dagster as dg

diffuse_images_job = dg.define_asset_job(
    name="diffuse_images",
    selection=["prompt_list", "model_catalog", "diffused_image"],
    description="Diffuse the selected `images` partitions with fresh prompts and catalog.",
)
