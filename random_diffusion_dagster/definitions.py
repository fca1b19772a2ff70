"""The project's one Definitions object."""

import dagster as dg

from .assets import diffused_image, diffusion_report, model_catalog, prompt_list, source_images
from .jobs import diffuse_images_job
from .resources import DatasetResource, DiffusionEngineResource
from .sensors import new_images_sensor

defs = dg.Definitions(
    assets=[source_images, prompt_list, model_catalog, diffused_image, diffusion_report],
    jobs=[diffuse_images_job],
    sensors=[new_images_sensor],
    resources={"dataset": DatasetResource(), "engine": DiffusionEngineResource()},
)
