"""The GPU benchmark's code path, on the CPU with tiny shapes: it runs and reports what it promises."""

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import orchestrated_quick

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def test_benchmark_runs_on_cpu_and_reports_every_field(tmp_path):
    out = tmp_path / "smoke.json"
    completed = subprocess.run(
        [
            sys.executable,
            "benchmarks/gpu_throughput.py",
            "--tiny",
            "--batch-size",
            "2",
            "--repeats",
            "1",
            "--plain-repeats",
            "1",
            "--only",
            "engine",
            "--out",
            str(out),
        ],
        cwd=PROJECT_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [v["variant"] for v in results["variants"]] == ["plain_float32_batch1", "engine_float32_batch2"]
    for variant in results["variants"]:
        for field in (
            "device",
            "images_per_s",
            "seconds_per_image",
            "peak_allocated_mb",
            "peak_reserved_mb",
            "speedup_vs_plain",
        ):
            assert field in variant
        assert variant["images_per_s"] > 0
    assert results["batched_vs_single"]["max_abs_diff_0_255"] <= 1
    assert results["floor"]["tflop_per_image"] > 0


def test_orchestrated_benchmark_backfills_through_the_daemon_and_reports_every_field(tmp_path):
    """A real daemon, a backfill of every partition and the sensor's pickup, on a few tiny images."""
    results = orchestrated_quick(tmp_path / "orchestrated.json", 4, 2)
    for field in (
        "device",
        "images",
        "orchestrated_images_per_s",
        "engine_images_per_s",
        "ratio",
        "runs",
        "pipeline_loads",
        "mean_batch_fill",
        "wall_seconds_request_to_last_materialization",
        "compile_events",
        "engine_images_per_s_without_imports",
        "dagster_seconds_per_run_above_engine",
    ):
        assert field in results, field
    (backfill,) = results["variants"]
    assert backfill["images"] == 4 and sum(run["images"] for run in backfill["per_run"]) == 4
    assert backfill["step_processes"] == 0  # the default executor keeps a run in one process
    assert backfill["sensor"]["images"] == 2 and sum(run["images"] for run in backfill["sensor"]["per_run"]) == 2
    assert 0 < results["mean_batch_fill"] <= 1 and results["orchestrated_images_per_s"] > 0
    assert set(backfill["split_seconds_summed_over_runs"]) >= {"model_loads", "inference", "queue_wait"}


def test_sdxl_figure_script_runs_on_cpu_and_writes_the_issues_keys(tmp_path):
    """scripts/gpu_sdxl.sh as a lent GPU runs it, with tiny SDXL shapes: the wheels' setup, the benchmark, the JSON."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RESULTS": str(tmp_path), "SHAPES": "tiny", "BATCH": "2"}
    env.update(PYTHON=sys.executable, REPEATS="1")
    completed = subprocess.run(
        ["bash", "scripts/gpu_sdxl.sh"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0 and "benchmark exit 0" in completed.stdout, completed.stdout[-3000:]
    results = json.loads((tmp_path / "sdxl-gpu.json").read_text())
    assert results["family"] == "sdxl" and results["device"].startswith("cpu")
    assert results["images_per_s"] > 0 and results["plain_images_per_s"] > 0
    assert "vram_peak_reserved_mb" in results  # 0 on a CPU, which has no GPU memory
    assert results["sdxl_and_two_sd15_resident"]["resident"] == ["sdxl-shaped", "sd15-shaped-0", "sd15-shaped-1"]
    assert (tmp_path / "versions.txt").read_text().strip()


def test_control_plane_benchmark_reports_every_key(tmp_path):
    """benchmarks/control_plane.py (300 files): every figure, from the sensor's ticks to a real webserver and daemon"""
    out = tmp_path / "control-plane.json"
    command = [
        sys.executable,
        "benchmarks/control_plane.py",
        "--files",
        "300",
        "--granularity",
        "folder",
        "--folders",
        "3",
    ]
    completed = subprocess.run(
        [*command, "--storage", "sqlite", "--out", str(out)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout == ""  # progress goes to stderr, the figures to --out
    results = json.loads(out.read_text())
    timings = (
        "first_tick_s",
        "register_s",
        "quiet_tick_s",
        "new_files_tick_s",
        "plan_one_partition_s",
        "staleness_pass_s",
        "backfill_launch_s",
        "ui_partition_status_s",
    )
    assert set(results) == {
        "files",
        "partitions",
        "granularity",
        "storage",
        "peak_rss_mb",
        "machine",
        "notes",
        "partitions_per_run",
        *timings,
    }
    assert (results["files"], results["granularity"], results["storage"]) == (300, "folder", "sqlite")
    assert (results["partitions"], results["partitions_per_run"]) == (3, 5)  # a partition per folder, 5 to a run
    for key in timings:
        assert isinstance(results[key], (int, float)) and results[key] > 0, (key, results[key])
    for process in ("benchmark", "webserver", "daemon"):
        assert results["peak_rss_mb"][process] > 0, process
    assert {"cpu_count", "python", "dagster", "storage"} <= set(results["machine"])
