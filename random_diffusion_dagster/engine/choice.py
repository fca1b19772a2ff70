"""The seeded random choice of prompt, model and diffusion seed for each image."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from .catalog import ModelSpec

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
            "model": self.model.as_dict(),
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


def output_path_for(output_dir: str | Path, key: str) -> Path:
    """`<output_dir>/<key>.png`, refusing any key that would land outside `output_dir`."""
    output_dir = Path(output_dir).resolve()
    path = (output_dir / f"{key}.png").resolve()
    if path.parent != output_dir:
        raise ValueError(f"Partition key {key!r} would write outside {output_dir}; refusing.")
    return path


def plan_job(
    key: str,
    source_path: str,
    source_sha256: str,
    prompts: list[str],
    models: list[ModelSpec],
    run_seed: int,
    output_dir: str | Path,
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
