"""The result record: written into PNGs, read back, and the only way result fields travel."""

import dataclasses

import pytest
from PIL import Image, PngImagePlugin

from random_diffusion_dagster.engine.results import (
    ResultRecord,
    a1111_parameters,
    output_path_for,
    read_record,
    write_result_png,
)


def _record(**changes) -> ResultRecord:
    values = {
        f.name: 1 for f in dataclasses.fields(ResultRecord) if f.default is dataclasses.MISSING
    } | {"key": "cat.jpg", "fingerprint": "f" * 64, "prompt": "a cat, dancing", "seed": 7}
    return ResultRecord(**(values | changes))


def test_output_paths_cannot_leave_the_output_folder(tmp_path):
    assert str(output_path_for(tmp_path, "cat.jpg")) == str(tmp_path.resolve() / "cat.jpg.png")
    with pytest.raises(ValueError, match="outside"):
        output_path_for(tmp_path, "../escape")


def test_png_carries_a1111_parameters_and_the_record(tmp_path):
    path = tmp_path / "out.png"
    parameters = a1111_parameters("a cat, dancing", "blurry", {"Steps": 10, "Seed": 7, "Model": "m:1"})
    record = _record()
    write_result_png(Image.new("RGB", (8, 8)), path, parameters, record)
    with Image.open(path) as image:
        assert image.text["parameters"] == 'a cat, dancing\nNegative prompt: blurry\nSteps: 10, Seed: 7, Model: "m:1"'
    assert read_record(path) == record
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary file left behind


def test_read_record_ignores_foreign_missing_and_incomplete_files(tmp_path):
    foreign = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(foreign, pnginfo=PngImagePlugin.PngInfo())
    assert read_record(foreign) is None
    assert read_record(tmp_path / "absent.png") is None
    info = PngImagePlugin.PngInfo()
    info.add_itxt("random_diffusion", '{"key": "a", "fingerprint": "f"}')  # lacks fields this version needs
    Image.new("RGB", (4, 4)).save(tmp_path / "old.png", pnginfo=info)
    assert read_record(tmp_path / "old.png") is None


def test_records_from_newer_versions_keep_the_fields_this_version_knows(tmp_path):
    record = _record()
    assert ResultRecord.from_json(record.to_json()[:-1] + ', "added_later": 1}') == record


def test_partition_metadata_holds_the_marked_fields_and_skips_absent_ones():
    metadata = _record(prompt_truncated=None).partition_metadata()
    assert metadata["prompt"] == "a cat, dancing" and metadata["seed"] == 7
    assert "prompt_truncated" not in metadata and "source_path" not in metadata and "created_at" not in metadata
    assert _record(prompt_truncated=True).partition_metadata()["prompt_truncated"] is True
