"""The seeded random choice of prompt, model and diffusion seed for each image."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
import os

from upath import UPath

from .catalog import ModelSpec
from .storage import is_local, location

ENGINE_VERSION = "1"  # bump when the same inputs would give different pixels


@dataclass(frozen=True)
class ImageJob:
    """Everything needed to make one result image, decided before any model is loaded."""

    key: str
    source_path: str
    source_sha256: str
    prompt: str
    model: ModelSpec
    seed: int
    run_seed: int
    output_path: str

    @property
    def fingerprint(self) -> str:
        """Identifies the result: same fingerprint, same pixels, so an existing file can be reused."""
        material = {
            "engine": ENGINE_VERSION,
            "source": self.source_sha256,
            "prompt": self.prompt,
            "model": self.model.result_settings(),
            "seed": self.seed,
        }
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def choose(source_sha256: str, run_seed: int, prompts: list[str], models: list[ModelSpec]) -> tuple[str, ModelSpec, int]:
    """(prompt, model, diffusion seed) from a generator keyed by the image content and the run seed.

    The same image and seed always give the same choice; another seed re-rolls. Editing the
    prompt list or the catalog changes the choice only through the lists themselves.
    """
    material = hashlib.sha256(f"{source_sha256}:{run_seed}".encode()).digest()
    rng = random.Random(int.from_bytes(material[:8], "big"))
    prompt = rng.choice(prompts)
    model = rng.choice(models)
    return prompt, model, rng.randrange(2**32)


def output_path_for(output_dir: str | os.PathLike, key: str) -> UPath:
    """`<output_dir>/<key>.png` (a local path or a URL), refusing keys that could leave it."""
    if not key or key in (".", "..") or "/" in key or "\\" in key or "\x00" in key:
        raise ValueError(f"Partition key {key!r} would write outside {output_dir}; refusing.")
    directory = location(output_dir)
    return (directory.resolve() if is_local(directory) else directory) / f"{key}.png"


def plan_job(
    key: str,
    source_path: str,
    source_sha256: str,
    prompts: list[str],
    models: list[ModelSpec],
    run_seed: int,
    output_dir: str | os.PathLike,
) -> ImageJob:
    prompt, model, seed = choose(source_sha256, run_seed, prompts, models)
    return ImageJob(
        key=key,
        source_path=str(source_path),
        source_sha256=source_sha256,
        prompt=prompt,
        model=model,
        seed=seed,
        run_seed=run_seed,
        output_path=str(output_path_for(output_dir, key)),
    )
