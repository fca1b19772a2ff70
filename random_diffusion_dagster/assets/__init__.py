"""The assets: source images, prompts and the model catalog; one diffused image per partition; a report."""

from .diffused_image import diffused_image
from .inputs import model_catalog, prompt_list, source_images
from .report import diffusion_report

__all__ = ["source_images", "prompt_list", "model_catalog", "diffused_image", "diffusion_report"]
