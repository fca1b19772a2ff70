"""The assets: source images, prompts and the model catalog; one diffused image per partition; a report;
model comparisons on chosen images and their grids; the results as a dataset."""

from .comparison import comparison_report, model_comparison
from .dataset import augmented_dataset
from .diffused_image import diffused_image
from .inputs import model_catalog, prompt_list, source_images
from .report import diffusion_report

__all__ = [
    "source_images",
    "prompt_list",
    "model_catalog",
    "diffused_image",
    "diffusion_report",
    "model_comparison",
    "comparison_report",
    "augmented_dataset",
]
