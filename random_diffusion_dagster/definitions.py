"""The project's one Definitions object: the code location every deployment names."""

import dagster as dg

from .defs.assets import (
    augmented_dataset,
    comparison_report,
    diffused_image,
    diffusion_report,
    model_catalog,
    model_comparison,
    prompt_list,
    source_images,
)
from .defs.automation.catch_up_schedule import catch_up_schedule
from .defs.automation.input_files_sensor import input_files_sensor
from .defs.automation.new_images_sensor import new_images_sensor
from .defs.automation.report_sensor import report_automation_sensor
from .defs.checks import results_readable_on_disk, results_up_to_date
from .defs.executor import project_executor
from .defs.jobs import compare_models_job, diffuse_images_job, refresh_inputs_job
from .defs.resources import project_resources
from .defs.source_versions import IMAGE_FILES, MODELS_FILE, PROMPTS_FILE

defs = dg.Definitions(
    assets=[
        PROMPTS_FILE,
        MODELS_FILE,
        IMAGE_FILES,
        source_images,
        prompt_list,
        model_catalog,
        diffused_image,
        diffusion_report,
        model_comparison,
        comparison_report,
        augmented_dataset,
    ],
    asset_checks=[results_readable_on_disk, results_up_to_date],
    jobs=[diffuse_images_job, compare_models_job, refresh_inputs_job],
    schedules=[catch_up_schedule],
    sensors=[new_images_sensor, input_files_sensor, report_automation_sensor],
    resources=project_resources(),
    executor=project_executor(),
)
