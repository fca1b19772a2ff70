"""Random-prompt, random-model img2img diffusion over an image folder, as Dagster assets."""
