"""The asset jobs: `diffuse_images` (sensors, schedules, the CLI and `submit` launch it) and `compare_models`."""

import dagster as dg

diffuse_images_job = dg.define_asset_job(
    name="diffuse_images",
    selection=["prompt_list", "model_catalog", "diffused_image"],
    description="Diffuse the selected `images` partitions with the current prompts and catalog.",
)

compare_models_job = dg.define_asset_job(
    name="compare_models",
    selection=["prompt_list", "model_catalog", "model_comparison"],
    description="Every catalog model on the selected `model_comparison` cells (image x model), with each image's "
    "own prompt and seed; launch it over a range of images x all models, then materialize comparison_report.",
)
