"""Offline demo models: building tiny Stable-Diffusion-shaped pipelines and exporting single-file checkpoints.

Tooling for the shipped samples, tests and benchmarks; the engine does not depend on it.
"""
