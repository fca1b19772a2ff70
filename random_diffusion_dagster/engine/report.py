"""The report over all results: a per-model table, the failures, the results kept failing their quality gates, and
a contact sheet."""

from __future__ import annotations

import dataclasses
import io
import os
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont
from upath import UPath

from .images import square_tile
from .output_location import location, write_bytes_atomic
from .results import FailureRecord, ResultRecord, read_failure, read_result, result_location

if TYPE_CHECKING:  # pandas is slow to import: keep it out of definition loading
    import pandas as pd

SUMMARY_COLUMNS = [
    "model",
    "images",
    "mean_inference_s",
    "p95_inference_s",
    "peak_vram_allocated_mb",
    "peak_vram_reserved_mb",
    "peak_rss_mb",
    "failures",
    "gate_failures",
]
QUALITY_FAILURE_COLUMNS = ["key", "model", "file", "attempts", "reason"]
THUMB = 128
CAPTION_WIDTH = 360
MAX_SHEET_ROWS = 48
# The inline sheet's bound: Dagster's "Show Markdown" dialog adds ~150 px of its own and does not scroll, so this fits a
# laptop's browser window (and the dialog's 80% of its width).
INLINE_SHEET_BOX = (880, 440)
MIN_INLINE_TILE = 80  # smaller pictures are no preview: fewer pairs are shown instead
INLINE_MARGIN, INLINE_PAIR_GAP, INLINE_ROW_GAP = 4, 12, 6  # and 2 px between a source and its result


@dataclass
class Report:
    summary: pd.DataFrame
    failures: pd.DataFrame
    quality_failures: pd.DataFrame  # results kept after failing their gates on every attempt (QUALITY_FAILURE_COLUMNS)
    records: list[ResultRecord]
    contact_sheet: Image.Image | None
    contact_sheet_path: UPath
    summary_csv_path: UPath
    inline_sheet: Image.Image | None  # the contact sheet's first pairs within INLINE_SHEET_BOX, for the UI
    inline_count: int  # how many pairs inline_sheet shows

    @property
    def contact_sheet_count(self) -> int:
        """How many results the contact sheet file shows (the first MAX_SHEET_ROWS)."""
        return min(self.image_count, MAX_SHEET_ROWS)

    @property
    def image_count(self) -> int:
        return len(self.records)

    @property
    def failure_count(self) -> int:
        return len(self.failures)


def build_report(
    output_dir: str | os.PathLike, sources: dict[str, str | None], images_dir: str | os.PathLike
) -> Report:
    """Read every partition's result record and failure file (`sources`: partition key -> its source's path under
    the images folder, None where it is gone); write summary.csv and contact_sheet.png."""
    import pandas as pd

    output_dir = location(output_dir)
    found: list[tuple[ResultRecord, UPath]] = []
    failures: list[FailureRecord] = []
    for key, source_path in sources.items():
        failure = read_failure(output_dir, key)
        record = None if failure else read_result(output_dir, key, source_path)
        if record:
            found.append((record, result_location(output_dir, key, source_path)))
        else:
            failures.append(failure or FailureRecord(key, None, "no result yet (missing or unreadable output file)"))
    records = [record for record, _ in found]
    summary = summarize(records, failures)
    report_dir = output_dir / "report"
    csv_path = report_dir / "summary.csv"
    write_bytes_atomic(csv_path, summary.to_csv(index=False).encode())
    sheet = contact_sheet(found[:MAX_SHEET_ROWS], images_dir) if found else None
    sheet_path = report_dir / "contact_sheet.png"
    inline, inline_count = None, 0
    if sheet is not None:
        buffer = io.BytesIO()
        sheet.save(buffer, format="PNG")
        write_bytes_atomic(sheet_path, buffer.getvalue())
        inline, inline_count = inline_sheet(sheet, min(len(found), MAX_SHEET_ROWS))
    failures_frame = pd.DataFrame([dataclasses.asdict(f) for f in failures], columns=["key", "model", "error"])
    return Report(
        summary, failures_frame, quality_failures(records), records, sheet, sheet_path, csv_path, inline, inline_count
    )


def quality_failures(records: list[ResultRecord]) -> pd.DataFrame:
    """The results kept although their last attempt failed a quality gate: which, after how many attempts, and why."""
    import pandas as pd

    rows = [
        [r.key, r.model, r.output_file, len(r.quality["attempts"]), r.quality_failure]
        for r in records
        if r.quality_failure
    ]
    return pd.DataFrame(rows, columns=QUALITY_FAILURE_COLUMNS)


def summarize(records: list[ResultRecord], failures: list[FailureRecord]) -> pd.DataFrame:
    """One row per model: count, mean and p95 inference seconds, peak GPU memory, peak process memory (RSS: the
    figure a CPU run has), failures, and results kept failing their quality gates."""
    import pandas as pd

    columns = ["model", "inference_seconds", "vram_peak_allocated_mb", "vram_peak_reserved_mb", "rss_peak_mb"]
    frame = pd.DataFrame([[getattr(r, c) for c in columns] for r in records], columns=columns)
    frame[columns[1:]] = frame[columns[1:]].astype(float)  # typed even when empty, so quantiles work
    frame["gate_failed"] = [bool(r.quality_failure) for r in records]
    grouped = frame.groupby("model")
    summary = pd.DataFrame(
        {
            "images": grouped.size(),
            "mean_inference_s": grouped["inference_seconds"].mean().round(4),
            "p95_inference_s": grouped["inference_seconds"].quantile(0.95).round(4),
            "peak_vram_allocated_mb": grouped["vram_peak_allocated_mb"].max(),
            "peak_vram_reserved_mb": grouped["vram_peak_reserved_mb"].max(),
            "peak_rss_mb": grouped["rss_peak_mb"].max(),
            "gate_failures": grouped["gate_failed"].sum(),
        }
    )
    # No model on the record: the image never reached one (no result yet, or it could not be planned).
    failed = pd.Series([f.model or "(not run)" for f in failures], dtype=object).value_counts()
    summary = summary.reindex(summary.index.union(failed.index))
    summary["failures"] = failed.reindex(summary.index).fillna(0).astype(int)
    summary["images"] = summary["images"].fillna(0).astype(int)
    summary["gate_failures"] = summary["gate_failures"].fillna(0).astype(int)
    return summary.rename_axis("model").reset_index()[SUMMARY_COLUMNS]


def _tile_box(row: int, column: int) -> tuple[int, int, int, int]:
    """Where the contact sheet has the picture of `row` (column 0: the source, 1: the result)."""
    left, top = 4 + column * (THUMB + 8), 4 + row * (THUMB + 8)
    return left, top, left + THUMB, top + THUMB


def contact_sheet(results: list[tuple[ResultRecord, UPath]], images_dir: str | os.PathLike) -> Image.Image:
    """Source beside result for each (record, result file), captioned with prompt, model and seed, and the gates a
    result kept failing."""
    font = ImageFont.load_default(size=13)
    sheet = Image.new("RGB", (2 * THUMB + CAPTION_WIDTH + 24, (THUMB + 8) * len(results) + 8), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (record, result) in enumerate(results):
        top = _tile_box(row, 0)[1]
        for column, path in enumerate((location(images_dir) / record.source_file, result)):
            sheet.paste(square_tile(path, THUMB), _tile_box(row, column)[:2])
        failed = list(record.quality["attempts"][-1]["failed"]) if record.quality_failure else []
        caption = "\n".join(
            textwrap.wrap(record.prompt, 44)[:4]
            + [f"model: {record.model}", f"seed: {record.seed}  {record.inference_seconds:.2f} s"]
            + ([f"FAILED quality gates: {', '.join(failed)}"] if failed else [])
        )
        draw.multiline_text((2 * THUMB + 20, top + 4), caption, fill="black", font=font, spacing=3)
    return sheet


def inline_sheet(sheet: Image.Image, rows: int, box: tuple[int, int] = INLINE_SHEET_BOX) -> tuple[Image.Image, int]:
    """The contact sheet's first `rows` pairs of pictures, source beside result, laid out as a grid within `box`
    (width, height), without captions: the pictures as large as lets every pair fit (at most THUMB), else as many
    pairs as fit at MIN_INLINE_TILE. Returns the grid and how many pairs it shows.

    A tall strip does not do: shrunk to fit a window it is a sliver, unshrunk it is taller than the window.
    """
    width, height = box
    for tile in range(THUMB, MIN_INLINE_TILE - 1, -8):
        columns = (width - 2 * INLINE_MARGIN + INLINE_PAIR_GAP) // (2 * tile + 2 + INLINE_PAIR_GAP)
        lines = (height - 2 * INLINE_MARGIN + INLINE_ROW_GAP) // (tile + INLINE_ROW_GAP)
        if columns * lines >= rows:
            break
    shown = min(rows, columns * lines)
    columns = min(columns, shown)
    lines = -(-shown // columns)
    grid = Image.new(
        "RGB",
        (
            2 * INLINE_MARGIN + columns * (2 * tile + 2) + (columns - 1) * INLINE_PAIR_GAP,
            2 * INLINE_MARGIN + lines * tile + (lines - 1) * INLINE_ROW_GAP,
        ),
        "white",
    )
    for index in range(shown):
        left = INLINE_MARGIN + (index % columns) * (2 * tile + 2 + INLINE_PAIR_GAP)
        top = INLINE_MARGIN + (index // columns) * (tile + INLINE_ROW_GAP)
        for column in (0, 1):
            picture = sheet.crop(_tile_box(index, column))
            grid.paste(picture.resize((tile, tile), Image.Resampling.LANCZOS), (left + column * (tile + 2), top))
    return grid, shown
