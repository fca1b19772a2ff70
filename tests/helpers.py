"""Test helpers: small generated images, catalogs of the tiny models, the orchestrated benchmark's quick mode."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from PIL import Image

FAST_DEFAULTS = {"resolution": 64, "num_inference_steps": 4, "strength": 0.5, "guidance_scale": 7.5}


def write_catalog(path: Path, models_dir: Path, names=("tiny-sd15", "tiny-sd2"), **overrides) -> Path:
    document = {
        "defaults": {**FAST_DEFAULTS, **overrides},
        "models": [{"name": name, "path": str(models_dir / name)} for name in names],
    }
    path.write_text(yaml.safe_dump(document))
    return path


def source_paths(images_dir) -> dict[str, str]:
    """Partition key -> the source's path under `images_dir`, which names its results."""
    from random_diffusion_dagster.engine.images import scan_images

    return {f.partition_key: f.relative_path for f in scan_images(images_dir).files}


def result_file(images_dir, output_dir, key: str) -> Path:
    """The result file of the partition `key`: named after its source in `images_dir` (output_file_name)."""
    from random_diffusion_dagster.engine.results import output_file_name

    return Path(output_dir) / output_file_name(source_paths(images_dir)[key])


def make_image(path: Path, size=(80, 60), color=(200, 40, 40), mode="RGB") -> Path:
    """A small image with some structure, so different files differ in content."""
    image = Image.new("RGB", size, color)
    for x in range(0, size[0], 7):
        for y in range(0, size[1], 5):
            image.putpixel((x, y), ((x * 3) % 256, (y * 5) % 256, (x + y) % 256))
    path.parent.mkdir(parents=True, exist_ok=True)
    known_extension = path.suffix.lower() in Image.registered_extensions()
    image.convert(mode).save(path, format=None if known_extension else "PNG")
    return path


def orchestrated_quick(out: Path, images: int, sensor_images: int, *variants: str, flags: tuple[str, ...] = ()) -> dict:
    """benchmarks/orchestrated_throughput.py on a few tiny images, with --quick (the path, not the timing)."""
    command = [sys.executable, "benchmarks/orchestrated_throughput.py", "--tiny", "--size", "64", "--quick", *flags]
    command += ["--images", str(images), "--sensor-images", str(sensor_images), "--timeout", "300", "--out", str(out)]
    for variant in variants:
        command += ["--variant", variant]
    completed = subprocess.run(
        command,
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=560,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    return json.loads(out.read_text())


# What Dagster's daemon prints that issue 36 quoted from the `random-diffusion ui` terminal: none may reach it.
ROUTINE_DAEMON_LINES = [
    "No relevant assets materialized since last tick",
    "Root assets that have not yet been requested",
    "Considering the following candidate subset",
    "Asset partitions to request",
    "MonitoringDaemon - INFO - Checking run",
    "QueuedRunCoordinatorDaemon - INFO - Launched",
    "evaluation result:",
    "did not shut down gracefully",
    "__repository__",
    "\x1b[",  # colour codes: the console in these tests is a file
]


def assert_same_pixels(a, b, what: str = "") -> None:
    """The same image up to float rounding: at most one level off, on at most 0.1% of the values.

    On some CPUs (this machine's AVX-512 kernels) a batched call, or the same weights laid out by another loader,
    rounds differently in the last bit, which now and then moves a value across a rounding boundary. An adapter's
    residue, another seed or another prompt moves far more than that.
    """
    import numpy as np

    diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.001, f"{what}: max {diff.max()}, {(diff > 0).mean():.4%} differ"
