"""Model comparisons: the same image, prompt and seed through every catalog model, drawn as a labelled grid.

A comparison cell is one image with one model. Strength and steps (the X/Y plot's other axes) are
mapped inside a cell: a cell makes one image per (strength, steps) combination, because Dagster's
multi-partitions stop at two dimensions. Cells write under `<output_dir>/comparisons/<image key>/`, never
over a `diffused_image` result, and the report reads them from there.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont
from upath import UPath

from .catalog import SETTINGS, ModelSpec
from .images import partition_key_for, square_tile
from .output_location import location, write_bytes_atomic
from .plan import ImageTask
from .results import ResultRecord, path_inside

if TYPE_CHECKING:  # pandas is slow to import: keep it out of definition loading
    import pandas as pd

COMPARISONS_DIR = "comparisons"
GRID_FILE = "grid.png"
TILE = 128
GAP = 6
HEADER_HEIGHT = 28  # column labels: "source", then model names
ROW_LABEL_WIDTH = 150  # row labels: the strength/steps of the row
SUMMARY_COLUMNS = {
    "model": "string",
    "cells": "int",
    "images": "int",
    "mean_inference_s": "float",
    "mean_load_s": "float",
    "peak_rss_mb": "float",
    "peak_vram_allocated_mb": "float",
    "peak_vram_reserved_mb": "float",
}


class ComparisonError(ValueError):
    """A comparison setting that cannot run; raised before any model loads."""


@dataclass(frozen=True)
class Variant:
    """One (strength, steps) combination of a cell; None keeps the catalog's value for the model."""

    strength: float | None = None
    steps: int | None = None

    @property
    def label(self) -> str:
        parts = ([f"strength {self.strength:g}"] if self.strength is not None else []) + (
            [f"steps {self.steps}"] if self.steps is not None else []
        )
        return ", ".join(parts) or "catalog settings"

    @property
    def suffix(self) -> str:
        return (f"-s{self.strength:g}" if self.strength is not None else "") + (
            f"-steps{self.steps}" if self.steps is not None else ""
        )

    def apply(self, spec: ModelSpec) -> ModelSpec:
        """The model's spec with this variant's settings; refuses a combination with no denoising step."""
        changed = dataclasses.replace(
            spec,
            strength=spec.strength if self.strength is None else self.strength,
            num_inference_steps=spec.num_inference_steps if self.steps is None else self.steps,
        )
        if changed.denoising_steps < 1:
            raise ComparisonError(
                f"strength {changed.strength:g} x steps {changed.num_inference_steps} for model {spec.name!r} "
                f"runs no denoising step (int(steps x strength) = 0): raise the strength or the steps so that "
                "their product is at least 1."
            )
        return changed


def comparison_variants(strengths: list[float], steps: list[int]) -> list[Variant]:
    """Every (strength, steps) combination asked for, checked; one catalog-settings variant when none are."""
    for value in strengths:
        if not 0 < value <= 1:
            raise ComparisonError(
                f"strength {value!r} is outside (0, 1]: give a strength above 0 and at most 1 (e.g. 0.3, 0.6, 1.0)."
            )
    most = int(SETTINGS["num_inference_steps"].high)  # the catalog's own bound
    for value in steps:
        if not 1 <= value <= most:
            raise ComparisonError(
                f"steps {value!r} is outside 1 to {most}: give a whole number of steps in that range (e.g. 20)."
            )
    unique_strengths = list(dict.fromkeys(strengths)) or [None]
    unique_steps = list(dict.fromkeys(steps)) or [None]
    return [Variant(s, n) for s, n in itertools.product(unique_strengths, unique_steps)]


def comparison_dir(output_dir: str | os.PathLike, image_key: str) -> UPath:
    """`<output_dir>/comparisons/<image key>`: refuses keys that could leave it, as result paths do."""
    return path_inside(location(output_dir) / COMPARISONS_DIR, image_key)


def cell_tasks(task: ImageTask, spec: ModelSpec, variants: list[Variant], output_dir: str) -> list[ImageTask]:
    """The image's own planned task for `spec` (its prompt, seed and source, and the pairs `spec` reads:
    Planner.with_model) with the settings of each variant.

    The key is the cell's file stem: unique in the image's folder, so a failed variant keeps its own failure file.
    """
    folder = comparison_dir(output_dir, task.key)
    tasks = []
    for variant in variants:
        stem = partition_key_for(spec.name) + variant.suffix
        output_path = str(folder / f"{stem}.png")
        tasks.append(dataclasses.replace(task, key=stem, model=variant.apply(spec), output_path=output_path))
    return tasks


def grid_path(output_dir: str | os.PathLike, image_key: str) -> UPath:
    return comparison_dir(output_dir, image_key) / GRID_FILE


def grid_size(columns: int, rows: int) -> tuple[int, int]:
    """Pixel size of a grid with `columns` tiles across (source included) and `rows` rows."""
    return (ROW_LABEL_WIDTH + columns * (TILE + GAP) + GAP, HEADER_HEIGHT + rows * (TILE + GAP) + GAP)


@dataclass
class Grid:
    image: Image.Image
    column_labels: list[str]  # "source", then the model names
    row_labels: list[str]  # the settings of each row


def draw_grid(source: str | os.PathLike, models: list[str], rows: list[str], cells: dict[tuple[str, str], str]) -> Grid:
    """Source first, then one column per model; one row per settings label. `cells`: (model, row) -> image path.

    A cell without an image (not compared yet, or failed) is a grey tile saying so, so columns stay aligned.
    """
    font = ImageFont.load_default(size=13)
    columns = ["source", *models]
    grid = Image.new("RGB", grid_size(len(columns), len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for column, label in enumerate(columns):
        left = ROW_LABEL_WIDTH + GAP + column * (TILE + GAP)
        draw.text((left, 8), _fit(draw, label, font, TILE), fill="black", font=font)
    for row, label in enumerate(rows):
        top = HEADER_HEIGHT + GAP + row * (TILE + GAP)
        draw.multiline_text((GAP, top + TILE // 2 - 10), label.replace(", ", "\n"), fill="black", font=font)
        paths = [source, *(cells.get((model, label)) for model in models)]
        for column, path in enumerate(paths):
            grid.paste(square_tile(path, TILE, "no image"), (ROW_LABEL_WIDTH + GAP + column * (TILE + GAP), top))
    return Grid(grid, columns, list(rows))


def write_grid(grid: Grid, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    grid.image.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())


def model_summary(records: list[ResultRecord], cells: dict[str, int]) -> pd.DataFrame:
    """Per model over the compared images: cells, images, mean inference and load seconds, peak memory."""
    import pandas as pd

    columns = [
        "model",
        "inference_seconds",
        "pipeline_load_seconds",
        "rss_peak_mb",
        "vram_peak_allocated_mb",
        "vram_peak_reserved_mb",
    ]
    frame = pd.DataFrame([[getattr(r, c) for c in columns] for r in records], columns=columns)
    frame[columns[1:]] = frame[columns[1:]].astype(float)
    grouped = frame.groupby("model", sort=False)
    summary = (
        pd.DataFrame(
            {
                "images": grouped.size(),
                "mean_inference_s": grouped["inference_seconds"].mean().round(4),
                "mean_load_s": grouped["pipeline_load_seconds"].mean().round(4),
                "peak_rss_mb": grouped["rss_peak_mb"].max(),
                "peak_vram_allocated_mb": grouped["vram_peak_allocated_mb"].max(),
                "peak_vram_reserved_mb": grouped["vram_peak_reserved_mb"].max(),
            }
        )
        .rename_axis("model")
        .reset_index()
    )
    summary.insert(1, "cells", summary["model"].map(cells).fillna(0).astype(int))
    return summary[list(SUMMARY_COLUMNS)]


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """The label cut with an ellipsis to fit over its tile."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."
