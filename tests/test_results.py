"""The result record: written into PNGs, read back, and the only way result fields travel."""

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from random_diffusion_dagster.engine.catalog import load_catalog
from random_diffusion_dagster.engine.images import scan_folder
from random_diffusion_dagster.engine.pipelines import PipelineCache, model_hash
from random_diffusion_dagster.engine.plan import Planner
from random_diffusion_dagster.engine.results import (
    A1111_SAMPLERS,
    ResultRecord,
    a1111_parameters,
    a1111_sampler,
    keyed_result_path,
    read_record,
    result_path,
    write_result_png,
)
from random_diffusion_dagster.engine.runner import run_tasks


def _record(**changes) -> ResultRecord:
    values = {f.name: 1 for f in dataclasses.fields(ResultRecord) if f.default is dataclasses.MISSING} | {
        "key": "cat.jpg",
        "fingerprint": "f" * 64,
        "prompt": "a cat, dancing",
        "seed": 7,
    }
    return ResultRecord(**(values | changes))


def test_output_paths_cannot_leave_the_output_folder(tmp_path):
    assert str(result_path(tmp_path, "cat.jpg")) == str(tmp_path.resolve() / "cat.png")
    with pytest.raises(ValueError, match="not a path under the images folder"):
        result_path(tmp_path, "../escape")
    with pytest.raises(ValueError, match="outside"):
        keyed_result_path(tmp_path, "../escape")


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


def test_read_record_checks_every_chunk_without_decoding_the_pixels(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    record = _record()
    noise = Image.effect_noise((64, 64), 80).convert("RGB")
    write_result_png(noise, path, "a cat", record)
    original = path.read_bytes()

    def no_decoding(image):
        raise AssertionError("the pixels were decoded")

    with monkeypatch.context() as patch:
        patch.setattr(PngImagePlugin.PngImageFile, "load", no_decoding)
        assert read_record(path) == record

    idat = original.index(b"IDAT") + 20  # a byte inside the pixel data: its chunk's checksum no longer matches
    path.write_bytes(original[:idat] + bytes([original[idat] ^ 0xFF]) + original[idat + 1 :])
    assert read_record(path) is None
    path.write_bytes(original[: len(original) // 2])  # cut short, as a copy that stopped half way
    assert read_record(path) is None


def test_a_result_where_it_belongs_is_read_once(tmp_path, monkeypatch):
    """Every pass over the results (a schedule tick, the asset check, the dataset) reads each record: once, where the
    result is already under its own name, not once to see whether to move it and again to read it."""
    from random_diffusion_dagster.engine import results

    path = result_path(tmp_path, "cat/001.jpg")
    record = _record(key="cat/001.jpg", variant=0)
    write_result_png(Image.new("RGB", (8, 8)), path, "a cat", record)
    reads, real = [], results.read_record
    monkeypatch.setattr(results, "read_record", lambda where: reads.append(where) or real(where))
    assert results.read_result(tmp_path, "cat/001.jpg", "cat/001.jpg") == record and reads == [path]


def test_a_record_after_the_pixels_is_still_read(tmp_path):
    """Other tools may rewrite a PNG with its text chunks after the image data."""
    path = tmp_path / "out.png"
    record = _record()
    write_result_png(Image.new("RGB", (8, 8)), path, "a cat", record)
    data = path.read_bytes()
    chunks, at = [], 8
    while at < len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        chunks.append(data[at : at + 12 + length])
        at += 12 + length
    text = [c for c in chunks if c[4:8] in (b"tEXt", b"iTXt")]
    rest = [c for c in chunks if c not in text]
    path.write_bytes(data[:8] + b"".join(rest[:-1] + text + rest[-1:]))  # IHDR, IDAT, text, IEND
    assert read_record(path) == record


def test_records_from_newer_versions_keep_the_fields_this_version_knows(tmp_path):
    record = _record()
    assert ResultRecord.from_json(record.to_json()[:-1] + ', "added_later": 1}') == record


def test_partition_metadata_holds_the_marked_fields_and_skips_absent_ones():
    metadata = _record(prompt_truncated=None).partition_metadata()
    assert metadata["prompt"] == "a cat, dancing" and metadata["seed"] == 7
    assert "prompt_truncated" not in metadata and "source_path" not in metadata and "created_at" not in metadata
    assert _record(prompt_truncated=True).partition_metadata()["prompt_truncated"] is True


# AUTOMATIC1111's own reader (modules/infotext_utils.py, parse_generation_parameters), as other tools copy it.
A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_a1111(text: str) -> dict:
    *lines, last = text.strip().split("\n")
    prompt, negative = [], []
    for line in lines:
        (negative if line.startswith("Negative prompt:") or negative else prompt).append(line)
    parsed = {"Prompt": "\n".join(prompt)}
    if negative:
        parsed["Negative prompt"] = "\n".join(negative)[len("Negative prompt:") :].strip()
    for key, value in A1111_PARAM.findall(last):
        parsed[key.strip()] = json.loads(value) if value.startswith('"') else value
    return parsed


def test_a_generated_png_reads_as_a1111_parameters_with_relative_paths_and_a_normal_mode(project, models_dir):
    planner = Planner(["a red fox, at dusk"], load_catalog(project["models_file"]), 0, project["output_dir"])
    tasks, _ = planner.plan(scan_folder(project["images_dir"]))
    (result, *_) = run_tasks(tasks, PipelineCache(device="cpu"), log=lambda m: None).results
    path = Path(result.task.output_path)
    with Image.open(path) as image:
        parsed = parse_a1111(image.text["parameters"])
        record_text = image.text["random_diffusion"]
    assert parsed["Prompt"] == "a red fox, at dusk" and parsed["Seed"] == str(result.task.seed)
    assert parsed["Sampler"] in A1111_SAMPLERS.values() and parsed["Size"] == result.record.output_size
    assert re.fullmatch(r"[0-9a-f]{10}", parsed["Model hash"]) and parsed["Model"] == result.task.model.name
    assert parsed["Model hash"] == model_hash(result.task.model)
    assert project["images_dir"] not in record_text and project["output_dir"] not in record_text
    assert str(models_dir) not in record_text
    assert result.record.source_file == Path(result.task.source_path).name
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_sampler_names_follow_a1111():
    assert a1111_sampler("EulerAncestralDiscreteScheduler") == "Euler a"
    assert a1111_sampler("DPMSolverMultistepScheduler", karras_sigmas=True) == "DPM++ 2M Karras"
    assert a1111_sampler("MyOwnScheduler") == "MyOwnScheduler"
