"""The report over all results: a per-model table, the failures, and a contact sheet."""

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
]
THUMB = 128
CAPTION_WIDTH = 360
MAX_SHEET_ROWS = 48


@dataclass
class Report:
    summary: pd.DataFrame
    failures: pd.DataFrame
    records: list[ResultRecord]
    contact_sheet: Image.Image | None
    contact_sheet_path: UPath
    summary_csv_path: UPath

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
    if sheet is not None:
        buffer = io.BytesIO()
        sheet.save(buffer, format="PNG")
        write_bytes_atomic(sheet_path, buffer.getvalue())
    failures_frame = pd.DataFrame([dataclasses.asdict(f) for f in failures], columns=["key", "model", "error"])
    return Report(summary, failures_frame, records, sheet, sheet_path, csv_path)


def summarize(records: list[ResultRecord], failures: list[FailureRecord]) -> pd.DataFrame:
    """One row per model: count, mean and p95 inference seconds, peak GPU memory, peak process memory (RSS: the
    figure a CPU run has), failures."""
    import pandas as pd

    columns = ["model", "inference_seconds", "vram_peak_allocated_mb", "vram_peak_reserved_mb", "rss_peak_mb"]
    frame = pd.DataFrame([[getattr(r, c) for c in columns] for r in records], columns=columns)
    frame[columns[1:]] = frame[columns[1:]].astype(float)  # typed even when empty, so quantiles work
    grouped = frame.groupby("model")
    summary = pd.DataFrame(
        {
            "images": grouped.size(),
            "mean_inference_s": grouped["inference_seconds"].mean().round(4),
            "p95_inference_s": grouped["inference_seconds"].quantile(0.95).round(4),
            "peak_vram_allocated_mb": grouped["vram_peak_allocated_mb"].max(),
            "peak_vram_reserved_mb": grouped["vram_peak_reserved_mb"].max(),
            "peak_rss_mb": grouped["rss_peak_mb"].max(),
        }
    )
    failed = pd.Series([f.model or "(unknown)" for f in failures], dtype=object).value_counts()
    summary = summary.reindex(summary.index.union(failed.index))
    summary["failures"] = failed.reindex(summary.index).fillna(0).astype(int)
    summary["images"] = summary["images"].fillna(0).astype(int)
    return summary.rename_axis("model").reset_index()[SUMMARY_COLUMNS]


def contact_sheet(results: list[tuple[ResultRecord, UPath]], images_dir: str | os.PathLike) -> Image.Image:
    """Source beside result for each (record, result file), captioned with prompt, model and seed."""
    font = ImageFont.load_default(size=13)
    row_height = THUMB + 8
    sheet = Image.new("RGB", (2 * THUMB + CAPTION_WIDTH + 24, row_height * len(results) + 8), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (record, result) in enumerate(results):
        top = 4 + row * row_height
        for column, path in enumerate((location(images_dir) / record.source_file, result)):
            sheet.paste(square_tile(path, THUMB), (4 + column * (THUMB + 8), top))
        caption = "\n".join(
            textwrap.wrap(record.prompt, 44)[:4]
            + [f"model: {record.model}", f"seed: {record.seed}  {record.inference_seconds:.2f} s"]
        )
        draw.multiline_text((2 * THUMB + 20, top + 4), caption, fill="black", font=font, spacing=3)
    return sheet
