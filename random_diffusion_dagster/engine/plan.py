"""Planning: which prompt, model and seed each source image gets, decided before any model loads.

`Planner` is the one place that turns (source files, prompts, catalog, run seed, output
folder) into `ImageTask`s: the Dagster asset, the catch-up schedule and the freshness
check all plan through it, so they cannot disagree about what an image should be.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from .captions import Captions
from .catalog import ControlNetSpec, ModelSpec, StrengthRange
from .images import SourceFile, readable
from .pairs import COMPUTED_CONTROLS, MASK, PairError, PairFile, PairFolders, file_sha256, missing_pair_message
from .prompts import PromptListError
from .quality import attempt_seed
from .results import read_result, result_path
from .templates import PromptTemplates

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
    prompt: str  # resolved: what the text encoder reads
    model: ModelSpec
    seed: int
    run_seed: int
    output_path: str
    prompt_template: str = ""  # the prompt list's line it came from (equal to `prompt` for plain lines)
    line_negative_prompt: str | None = None  # the line's own --negative_prompt, if it has one
    variant: int = 0  # which of the image's results (Planner.variants); 0 is the one a single-result run makes
    roll: int = 0  # how often this variant was re-rolled; each roll draws anew
    source_file: str = ""  # its path under the images folder (`cat/001.jpg`), as its record keeps it
    label: str = ""  # its class folder ("" at the top of the images folder)
    caption: str | None = None  # engine/captions.py; part of the image's data version
    attempt: int = 0  # which try at passing the model's quality gates; each runs with the next seed (generation_seed)
    pairs: tuple[PairFile, ...] = ()  # what its model reads beside the source: its mask, its control images in order
    unpaired: tuple[str, ...] = ()  # roles its model wanted but the image lacks, run without (`if_unpaired`)

    @property
    def generation_seed(self) -> int:
        """The seed this attempt runs with: the draw's own `seed` first, then the next seeds of its sequence."""
        return attempt_seed(self.seed, self.attempt)

    def next_attempt(self) -> ImageTask:
        """The same draw (prompt, model, output), tried again with the next seed."""
        return dataclasses.replace(self, attempt=self.attempt + 1)

    @property
    def negative_prompt(self) -> str:
        return self.model.negative_prompt if self.line_negative_prompt is None else self.line_negative_prompt

    @property
    def fingerprint(self) -> str:
        """Identifies the result: same fingerprint, same pixels, so an existing file can be reused.

        The same for every attempt: which attempt is kept follows from these inputs (the gates are among the model's
        settings, the attempts' seeds from `seed`), so a result kept at its third attempt is reused, not redone; its
        record says which attempt it is."""
        return _digest(self._material())

    @property
    def draw_fingerprint(self) -> str:
        """The fingerprint without the source's bytes: what the draw decided (prompt, model and its settings, seed).
        An image's `image_draw` data version is made of these; the source has its own (`image_file`)."""
        material = self._material()
        del material["source"]
        return _digest(material)

    def _material(self) -> dict:
        material = {
            "engine": ENGINE_VERSION,
            "source": self.source.sha256,
            "prompt": self.prompt,
            "model": self.model.result_settings(),
            "seed": self.seed,
        }
        if self.line_negative_prompt is not None:
            material["negative_prompt"] = self.line_negative_prompt
        if self.variant:
            material["variant"] = self.variant
        if self.roll:
            material["roll"] = self.roll
        if files := {pair.role: pair.sha256 for pair in self.pairs if not pair.computed}:
            material["pairs"] = files  # absent without pairs: results made before pairs existed stay current
        if self.unpaired:
            material["unpaired"] = list(self.unpaired)
        return material

    @property
    def mask(self) -> PairFile | None:
        return next((pair for pair in self.pairs if pair.role == MASK), None)


def active_controlnets(task: ImageTask) -> tuple[ControlNetSpec, ...]:
    """The ControlNets the task runs with: its entry's, less those whose control image it runs without."""
    return tuple(c for c in task.model.controlnets if c.control not in task.unpaired)


def _digest(material: dict) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def draw_version(tasks: list[ImageTask]) -> str:
    """Identifies one image's draws (all its variants): editing a catalog entry or a prompt line changes it only for
    the images that drew that entry or line, so Dagster shows exactly their results as stale."""
    ordered = sorted(tasks, key=lambda task: task.variant)
    return _digest({"draws": [task.draw_fingerprint for task in ordered]})[:16]


def _draw_material(source_sha256: str, run_seed: int, variant: int, roll: int) -> str:
    """What one result's draws are keyed by; variant 0 never re-rolled draws as a single-result run always did."""
    return f"{source_sha256}:{run_seed}" + (f":variant{variant}" if variant else "") + (f":roll{roll}" if roll else "")


def choose(
    source_sha256: str, run_seed: int, prompts: list[str], models: list[ModelSpec], variant: int = 0, roll: int = 0
) -> tuple[str, ModelSpec, int]:
    """(prompt, model, diffusion seed) from a generator keyed by the image content, the run seed and the variant.

    The same image, seed and variant always give the same choice; another seed re-rolls, another variant draws
    anew. Editing the prompt list or the catalog changes the choice only through the lists themselves.
    """
    material = hashlib.sha256(_draw_material(source_sha256, run_seed, variant, roll).encode()).digest()
    rng = random.Random(int.from_bytes(material[:8], "big"))
    prompt = rng.choice(prompts)
    weights = [model.weight for model in models]
    # Equal weights draw exactly as before weights existed, so existing choices stay.
    model = rng.choice(models) if len(set(weights)) == 1 else rng.choices(models, weights=weights)[0]
    if model.strengths:  # drawn here, so the task's model says the strength its result used
        ranged = isinstance(model.strengths, StrengthRange)
        strength = model.strengths.draw(rng) if ranged else rng.choice(model.strengths)
        model = dataclasses.replace(model, strength=strength, strengths=None)
    return prompt, model, rng.randrange(2**32)


def template_seed(source_sha256: str, run_seed: int, variant: int = 0, roll: int = 0) -> int:
    """The seed a template is resolved with: its own stream, so templates leave the other choices alone."""
    material = _draw_material(source_sha256, run_seed, variant, roll) + ":template"
    return int.from_bytes(hashlib.sha256(material.encode()).digest()[:8], "big")


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

    prompts: list[str]  # the prompt list's lines: plain prompts, templates or A1111 `--prompt ...` lines
    catalog: list[ModelSpec]
    run_seed: int
    output_dir: str
    wildcards_dir: str | None = None
    caption_fallback: str | None = None  # `{caption}` of an image without one; None: that image fails by name
    variants: int = 1  # results per image, each its own draw of prompt, model and seed
    rerolls: frozenset[str] = frozenset()  # `key` (all its variants) or `key~vN`: draw those anew this run
    pair_folders: PairFolders = field(default_factory=PairFolders)  # where masks and control images are found
    # What messages name a prompt by: its file and line there (`prompt_lines`), else "<source>, prompt N".
    prompts_source: str = "prompt list"
    prompt_lines: tuple[int, ...] | None = None

    @cached_property
    def inputs_version(self) -> str:
        """Identifies what every image is judged against (prompt list, catalog, run seed, variants): while it is
        the same, an image's state changes only when its own source or result does."""
        material = [prompts_version(self.prompts), catalog_version(self.catalog), self.run_seed, self.variants]
        return hashlib.sha256(json.dumps(material + [self.caption_fallback]).encode()).hexdigest()[:16]

    @cached_property
    def templates(self) -> PromptTemplates:
        return PromptTemplates(self.prompts, self.wildcards_dir, self.prompts_source, self.prompt_lines)

    @cached_property
    def captions(self) -> Captions:
        return Captions()

    def words_for(self, file: SourceFile) -> dict[str, str | None]:
        """The image's own words for templates: `{label}`, `{stem}`, `{caption}` (None where it has none). A
        caption file that cannot be read fails the image only where a prompt line names `{caption}`."""
        try:
            caption = self.captions.caption_for(file)
        except (PromptListError, OSError):
            if self.templates.uses("caption"):
                raise
            caption = None
        return {"label": file.label, "stem": readable(Path(file.name).stem), "caption": caption}

    def task(
        self,
        key: str,
        source_path: str,
        source: SourceSnapshot,
        words: dict[str, str | None] | None = None,
        relative_path: str = "",
        variant: int = 0,
        roll: int = 0,
        with_pairs: bool = True,
    ) -> ImageTask:
        """The image's task (its `variant`-th result); `words` fill the line's image words (words_for),
        PromptListError if one is missing. `with_pairs=False`: the draw without the drawn model's pairs (a comparison
        cell reads its own model's, with_model)."""
        line, model, seed = choose(source.sha256, self.run_seed, self.prompts, self.catalog, variant, roll)
        seed_of_template = template_seed(source.sha256, self.run_seed, variant, roll)
        words = words or {}
        # no caption, or an empty one: the fallback where there is one; else it stays as it is, and is named so
        filled = {**words, "caption": words.get("caption") or self.caption_fallback or words.get("caption")}
        resolved = self.templates.resolve(self.prompts.index(line), seed_of_template, filled)
        source_file = relative_path or Path(source_path).name
        pairs, unpaired = self._pairs(model, source_path, source_file) if with_pairs else ((), ())
        return ImageTask(
            key=key,
            source_path=str(source_path),
            source=source,
            prompt=resolved.prompt,
            model=model,
            seed=seed,
            run_seed=self.run_seed,
            output_path=str(result_path(self.output_dir, source_file, variant)),
            variant=variant,
            roll=roll,
            prompt_template=resolved.template,
            line_negative_prompt=resolved.negative_prompt,
            source_file=source_file,
            label=words.get("label") or "",
            caption=words.get("caption"),
            pairs=pairs,
            unpaired=unpaired,
        )

    def with_model(self, task: ImageTask, model: ModelSpec) -> ImageTask:
        """The task with another model (a comparison cell), with the pairs that model reads; PairError if the image
        lacks one it needs."""
        pairs, unpaired = self._pairs(model, task.source_path, task.source_file)
        return dataclasses.replace(task, model=model, pairs=pairs, unpaired=unpaired)

    def _pairs(self, model: ModelSpec, source_path: str, relative_path: str) -> tuple[tuple[PairFile, ...], tuple]:
        """(the pairs the drawn model reads, hashed; the roles it runs without); PairError if one is missing and the
        entry says `if_unpaired: fail`."""
        roles = ([MASK] if model.inpaint else []) + [controlnet.control for controlnet in model.controlnets]
        if not roles:
            return (), ()
        folders = self.pair_folders
        pairs, unpaired = [], []
        for role in dict.fromkeys(roles):
            path = folders.find(source_path, relative_path, role)
            if path is not None:
                try:
                    pairs.append(PairFile(role, str(path), file_sha256(path)))
                except OSError as exc:
                    why = exc.strerror or exc
                    raise PairError(f"{path} ({relative_path}'s {role}) cannot be read: {why}") from None
            elif role in COMPUTED_CONTROLS:
                pairs.append(PairFile(role))
            elif model.if_unpaired == "run_without":
                unpaired.append(role)
            else:
                raise PairError(missing_pair_message(model.name, role, relative_path, folders))
        return tuple(pairs), tuple(unpaired)

    def roll_of(self, file: SourceFile, variant: int) -> int:
        """The variant's roll: the one its result on disk records, plus one where this run re-rolls it."""
        key = file.partition_key
        record = read_result(self.output_dir, key, file.relative_path, variant)
        kept = record.roll if record is not None else 0
        return kept + (key in self.rerolls or f"{key}~v{variant}" in self.rerolls)

    def plan(self, files: list[SourceFile], with_pairs: bool = True) -> tuple[list[ImageTask], dict[str, str]]:
        """(tasks, key -> why it cannot be planned) for files found in the images folder: `variants` tasks each
        (`with_pairs`: as task's).

        A result still under a name an earlier version gave it is moved to the task's output path first
        (results.adopt_earlier_result, through roll_of), so the run reuses it instead of making it again.
        """
        tasks, unplanned = [], {}
        for file in files:
            try:
                snapshot = snapshot_source(file.path)
                words = self.words_for(file)
                tasks += [
                    self.task(
                        file.partition_key, file.path, snapshot, words, file.relative_path, variant, roll, with_pairs
                    )
                    for variant in range(self.variants)
                    for roll in [self.roll_of(file, variant)]
                ]
            except OSError as exc:
                unplanned[file.partition_key] = f"{file.path} cannot be read: {exc.strerror or exc}"
            except PromptListError as exc:  # an image word it lacks, or an unreadable caption: this image only
                unplanned[file.partition_key] = f"{file.relative_path}: {exc}"
            except PairError as exc:  # its model needs a mask or control image it lacks: this image only
                unplanned[file.partition_key] = str(exc)
        return tasks, unplanned
