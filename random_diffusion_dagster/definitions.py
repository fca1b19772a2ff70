"""The project's one Definitions object."""

import dagster as dg

from .assets import diffused_image, diffusion_report, model_catalog, prompt_list, source_images
from .checks import results_readable_on_disk
from .jobs import diffuse_images_job
from .resources import DatasetResource, DiffusionEngineResource
from .schedules import catch_up_schedule
from .sensors import new_images_sensor

# Declarative automation (the report's condition) needs a sensor; Dagster's default one starts stopped.
automation_sensor = dg.AutomationConditionSensorDefinition(
    name="report_automation_sensor",
    target=dg.AssetSelection.assets("diffusion_report"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
)

defs = dg.Definitions(
    assets=[source_images, prompt_list, model_catalog, diffused_image, diffusion_report],
    asset_checks=[results_readable_on_disk],
    jobs=[diffuse_images_job],
    schedules=[catch_up_schedule],
    sensors=[new_images_sensor, automation_sensor],
    resources={"dataset": DatasetResource(), "engine": DiffusionEngineResource()},
)
