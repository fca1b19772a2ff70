"""The asset jobs: `diffuse_images` (sensors, schedules, the CLI and `submit` launch it), `compare_models` and
`refresh_inputs`."""

import dagster as dg

from .checks import results_up_to_date

diffuse_images_job = dg.define_asset_job(
    name="diffuse_images",
    selection=["prompt_list", "model_catalog", "image_draw", "diffused_image"],
    description="Diffuse the selected `images` partitions with the current prompts and catalog.",
)

compare_models_job = dg.define_asset_job(
    name="compare_models",
    selection=["prompt_list", "model_catalog", "model_comparison"],
    description="Every catalog model on the selected `model_comparison` cells (`images` partition x model), with each "
    "image's own prompt and seed; launch it over a range of images x all models, then materialize comparison_report.",
)

refresh_inputs_job = dg.define_asset_job(
    name="refresh_inputs",
    selection=dg.AssetSelection.assets("prompt_list", "model_catalog") | dg.AssetSelection.checks(results_up_to_date),
    description="Refresh prompt_list / model_catalog from their files (input_files_sensor launches it when one "
    "changes), then count the images made from the old contents (check results_up_to_date).",
)
