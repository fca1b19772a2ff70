"""diffusion_report over many results, materialized on a real instance from result files on disk."""

import base64
import dataclasses
import io
import re

import dagster as dg
import numpy as np
from PIL import Image

from random_diffusion_dagster.defs.assets import diffusion_report
from random_diffusion_dagster.defs.resources import DatasetResource
from random_diffusion_dagster.engine.report import INLINE_SHEET_BOX, MAX_SHEET_ROWS
from random_diffusion_dagster.engine.results import ResultRecord, result_path, write_result_png

IMAGES = 60


def _colour(index: int, result: bool) -> tuple[int, int, int]:
    """Each image's own flat colour; its result's differs only in blue."""
    return 40 + (index % 6) * 40, 40 + (index // 6) * 20, 220 if result else 30


def _results_on_disk(images_dir, output_dir) -> list[str]:
    """IMAGES sources and a result PNG with its record for each, as the runner leaves them; their keys, in order."""
    images_dir.mkdir()
    required = {f.name: 1 for f in dataclasses.fields(ResultRecord) if f.default is dataclasses.MISSING}
    keys = []
    for index in range(IMAGES):
        key = f"img{index:02d}.png"
        Image.new("RGB", (40, 40), _colour(index, False)).save(images_dir / key)
        record = ResultRecord(
            **required
            | {"key": key, "fingerprint": "f" * 64, "prompt": "a lighthouse", "seed": index, "source_file": key}
            | {"model": ("tiny-sd15", "tiny-sd2")[index % 2], "inference_seconds": 0.5, "rss_peak_mb": 300.0}
            | {"vram_peak_allocated_mb": None, "vram_peak_reserved_mb": None}
        )
        write_result_png(Image.new("RGB", (40, 40), _colour(index, True)), result_path(output_dir, key), "", record)
        keys.append(key)
    return keys


def _where(sheet: np.ndarray, colour) -> tuple[float, float] | None:
    """The middle (x, y) of the pixels of `colour` (JPEG-blurred) in the sheet, or None where there are few."""
    ys, xs = np.nonzero((np.abs(sheet.astype(int) - colour) <= 10).all(axis=2))
    return (float(np.median(xs)), float(np.median(ys))) if len(xs) > 100 else None


def test_the_inline_contact_sheet_of_60_results_fits_a_window_and_shows_sources_beside_results(instance, tmp_path):
    images_dir, output_dir = tmp_path / "images", tmp_path / "outputs"
    keys = _results_on_disk(images_dir, output_dir)
    instance.add_dynamic_partitions("images", keys)
    dataset = DatasetResource(images_dir=str(images_dir), output_dir=str(output_dir))
    result = dg.materialize([diffusion_report], instance=instance, resources={"dataset": dataset})
    metadata = result.asset_materializations_for_node("diffusion_report")[0].metadata
    assert metadata["images"].value == IMAGES

    markdown = metadata["contact_sheet"].value
    data = base64.b64decode(re.search(r"\(data:image/jpeg;base64,([A-Za-z0-9+/=]+)\)", markdown).group(1))
    with Image.open(io.BytesIO(data)) as inline:
        assert inline.width <= INLINE_SHEET_BOX[0] and inline.height <= INLINE_SHEET_BOX[1], inline.size
        pixels = np.asarray(inline.convert("RGB"))
    assert len(data) < 150_000  # it lives in the event log
    # Each pair shown: the source's colour, and just right of it, level with it, its result's.
    shown = 0
    for index in range(IMAGES):
        source, made = _where(pixels, _colour(index, False)), _where(pixels, _colour(index, True))
        if source is None:
            break
        assert made is not None and 40 < made[0] - source[0] < 140 and abs(made[1] - source[1]) < 3, (index, source)
        shown += 1
    assert 12 <= shown < IMAGES and all(_where(pixels, _colour(i, False)) is None for i in range(shown, IMAGES))
    assert (
        f"The first {shown} of {IMAGES} results, each source beside its result; contact_sheet_path "
        f"(`{output_dir / 'report' / 'contact_sheet.png'}`) shows {MAX_SHEET_ROWS - shown} more (the first "
        f"{MAX_SHEET_ROWS}), captioned with prompt, model and seed." in markdown
    )
    # The file keeps its captioned rows, one per result, up to MAX_SHEET_ROWS.
    with Image.open(metadata["contact_sheet_path"].value) as sheet:
        assert sheet.height >= 128 * MAX_SHEET_ROWS and sheet.width > 2 * 128 + 300

    summary = metadata["summary"].value
    columns = {column.name: column.description for column in summary.schema.columns}
    assert list(columns) == ["model", "images", "mean_s", "p95_s", "rss_mb", "failures", "gate_failures"]  # no VRAM
    assert "mean_inference_s" in columns["mean_s"] and "peak_rss_mb" in columns["rss_mb"]  # summary.csv's names
    assert {record.data["model"]: record.data["images"] for record in summary.records} == {
        "tiny-sd15": 30,
        "tiny-sd2": 30,
    }
