"""The diffusion engine: catalog, prompts, image I/O, seeded choice, pipeline cache, batching.

Plain Python with no Dagster import, so it can be tested and benchmarked alone.
torch and diffusers are imported inside the functions that need them.
"""
