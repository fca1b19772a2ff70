"""The sensor at scale: a cursor that does not grow with the folder, replacements it must not miss, the ceiling."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from test_automation import _age, _tick

from random_diffusion_dagster.defs import partitions
from random_diffusion_dagster.defs.assets.inputs import source_images
from random_diffusion_dagster.defs.resources import DatasetResource
from random_diffusion_dagster.settings import max_partitions_per_run

from helpers import make_image

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def folder(tmp_path):
    """Three settled images and the project settings that point at them."""
    images = tmp_path / "images"
    for name, color in (("a.png", (200, 0, 0)), ("b.png", (0, 200, 0)), ("c.png", (0, 0, 200))):
        _age(make_image(images / name, color=color))
    return {"images_dir": str(images), "output_dir": str(tmp_path / "out")}


def test_cursor_stays_small_however_many_files_the_folder_holds(instance, tmp_path):
    images = tmp_path / "many"
    images.mkdir()
    seed = make_image(tmp_path / "seed.png", size=(8, 8))
    _age(seed)
    for index in range(5_000):
        os.link(seed, images / f"img{index:05d}.png")
    project = {"images_dir": str(images), "output_dir": str(tmp_path / "out")}
    first = _tick(instance, project)
    quiet = _tick(instance, project, first.cursor)
    assert len(instance.get_dynamic_partitions("images")) == 5_000
    assert quiet.run_requests == []
    assert len(first.cursor) < 2_000 and len(quiet.cursor) < 2_000, (len(first.cursor), len(quiet.cursor))


def test_replaced_file_whose_mtime_was_set_into_the_past_runs_again(instance, folder):
    cursor = _tick(instance, folder).cursor
    cursor = _tick(instance, folder, cursor).cursor
    path = Path(folder["images_dir"]) / "b.png"
    make_image(path, color=(9, 9, 9))
    _age(path, 10 * 24 * 3600)  # older than anything the sensor saw, as `cp -p` of an old file leaves it
    result = _tick(instance, folder, cursor)
    (request,) = result.run_requests
    assert request.partition_key == "b.png"
    assert f"{path.stat().st_size}:{path.stat().st_mtime_ns}" in request.run_key
    assert _tick(instance, folder, result.cursor).run_requests == []


def test_file_registered_by_the_cli_between_ticks_is_not_requested_again(instance, folder):
    cursor = _tick(instance, folder).cursor
    path = make_image(Path(folder["images_dir"]) / "d.png")
    _age(path)
    instance.add_dynamic_partitions("images", ["d.png"])
    result = _tick(instance, folder, cursor)
    assert result.run_requests == [] and result.dynamic_partitions_requests == []


def test_cursor_from_before_the_bounded_format_reruns_only_what_changed(instance, folder):
    images = Path(folder["images_dir"])
    instance.add_dynamic_partitions("images", ["a.png", "b.png", "c.png"])
    seen = {p.name: f"{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in images.iterdir()}
    make_image(images / "c.png", color=(1, 2, 3))
    _age(images / "c.png", 3600)
    result = _tick(instance, folder, json.dumps({"seen": seen, "waiting": {}}))
    assert [r.partition_key for r in result.run_requests] == ["c.png"]
    assert _tick(instance, folder, result.cursor).run_requests == []


def test_past_the_partition_ceiling_sensor_and_source_images_warn_and_still_register(
    instance, folder, monkeypatch, capfd
):
    monkeypatch.setattr(partitions, "MAX_RECOMMENDED_PARTITIONS", 2)
    result = _tick(instance, folder)
    assert len(instance.get_dynamic_partitions("images")) == 3
    assert len(result.run_requests) == 1
    assert "WARNING - 3 images partitions: Dagster recommends at most 2 partitions per asset" in capfd.readouterr().err

    run = dg.materialize([source_images], instance=instance, resources={"dataset": DatasetResource(**folder)})
    metadata = run.asset_materializations_for_node("source_images")[0].metadata
    assert "set RANDOM_DIFFUSION_PARTITIONS=folder" in metadata["warning"].value
    assert metadata["count"].value == 3


def test_sensor_scale_benchmark_runs_and_its_cursor_stays_bounded(tmp_path):
    out = tmp_path / "scale.json"
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "benchmarks/sensor_scale.py", "--files", "2000", "--out", str(out)],
        cwd=PROJECT_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(out.read_text())
    first = math.ceil(2000 / max_partitions_per_run())  # 16 with the default 128
    assert results["files"] == 2000 and results["run_requests"] == {"first": first, "quiet": 0, "change": 11}
    assert results["cursor_bytes"] < 2_000
    assert time.perf_counter() - started < 60
