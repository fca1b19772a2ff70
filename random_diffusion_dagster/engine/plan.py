"""Planning: which prompt, model and seed each source image gets, decided before any model loads.

`Planner` is the one place that turns (source files, prompts, catalog, run seed, output
folder) into `ImageTask`s: the Dagster asset, the catch-up schedule and the freshness
check all plan through it, so they cannot disagree about what an image should be.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass

from .catalog import ModelSpec
from .images import SourceFile
from .results import output_path_for

ENGINE_VERSION = "2"  # bump when the same inputs would give different pixels (2: aspect-keeping padding)


@dataclass(frozen=True)
class SourceSnapshot:
    """The bytes of a source as hashed once: its content hash and the size and mtime of those bytes."""

    sha256: str
    size: int
    mtime_ns: int


def snapshot_source(path: str | os.PathLike) -> SourceSnapshot:
    """Hash a file and stat the same open file, so the size and mtime belong to the bytes hashed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        stat = os.fstat(handle.fileno())
    return SourceSnapshot(digest.hexdigest(), stat.st_size, stat.st_mtime_ns)


@dataclass(frozen=True)
class ImageTask:
    """Everything needed to make one result image, decided before any model is loaded."""

    key: str
    source_path: str
    source: SourceSnapshot
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
            "source": self.source.sha256,
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


def prompts_version(prompts: list[str]) -> str:
    """Identifies a prompt list by content: the same prompts in the same order, the same choices."""
    return hashlib.sha256(json.dumps(list(prompts)).encode()).hexdigest()[:16]


def catalog_version(catalog: list[ModelSpec]) -> str:
    """Identifies a catalog by what can change pixels (descriptions do not count)."""
    settings = [spec.result_settings() for spec in catalog]
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Planner:
    """Today's inputs: plans tasks for source files."""

    prompts: list[str]
    catalog: list[ModelSpec]
    run_seed: int
    output_dir: str

    def task(self, key: str, source_path: str, source: SourceSnapshot) -> ImageTask:
        prompt, model, seed = choose(source.sha256, self.run_seed, self.prompts, self.catalog)
        return ImageTask(
            key=key,
            source_path=str(source_path),
            source=source,
            prompt=prompt,
            model=model,
            seed=seed,
            run_seed=self.run_seed,
            output_path=str(output_path_for(self.output_dir, key)),
        )

    def plan(self, files: list[SourceFile]) -> tuple[list[ImageTask], dict[str, str]]:
        """(tasks, key -> why it cannot be planned) for files found in the images folder."""
        tasks, unplanned = [], {}
        for file in files:
            try:
                tasks.append(self.task(file.partition_key, file.path, snapshot_source(file.path)))
            except OSError as exc:
                unplanned[file.partition_key] = f"{file.path} cannot be read: {exc.strerror or exc}"
        return tasks, unplanned
