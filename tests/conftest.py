"""Shared fixtures: tiny real models built once per session, a project folder per test."""

import os

# Before torch is imported anywhere: one thread is much faster for tiny models on small
# CPUs, and the hub must never be contacted.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# torch.compile's kernels compile in this process, not in a pool of compile workers that each import torch first:
# on two cores shared by three test workers the pool only adds CPU time (20 s of the int8 test's 130).
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
# The daemons the tests start look for new images every 5 s, not every 30 s: the waits are the suite's, not the
# behaviour under test (tests/test_definitions.py checks the default).
os.environ.setdefault("RANDOM_DIFFUSION_SENSOR_INTERVAL_SECONDS", "5")

import sys
from pathlib import Path
from unittest import mock

import dagster as dg
import pytest

# The benchmarks' helpers (local services, waiting, applying sensor results) serve the tests too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from random_diffusion_dagster.demo.models import build_demo_models

from helpers import make_image, write_catalog
from local_services import shipped_instance_config

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The files with the most test time start first, longest first (seconds summed per file, 2-core machine, 3 workers:
# test_deployment 295, test_speedups 290 with torch's compile cache filled and 470 without, test_cli 186, ...; the
# rest under 30 each), so the xdist workers finish together instead of one taking a long file last. `make test`
# passes --no-loadscope-reorder, which keeps this order (xdist would put the files with the most tests first).
START_FIRST = (
    "test_speedups.py",
    "test_deployment.py",
    "test_cli.py",
    "test_warm_worker.py",
    "test_benchmark_smoke.py",
    "test_staleness.py",
    "test_ui_browser.py",
    "test_model_families.py",
    "test_ui_killed.py",
    "test_granularity.py",
    "test_assets.py",
    "test_datasets.py",
    "test_ui_faults.py",
    "test_ui_stop.py",
    "test_multinode.py",
    "test_out_of_date.py",
    "test_celery.py",
    "test_comparison.py",
    "test_webserver_guard.py",
    "test_draw_records.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: index for index, name in enumerate(START_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(START_FIRST)))  # stable: the rest as collected


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    import torch

    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("models")
    build_demo_models(directory)
    return directory


@pytest.fixture
def project(tmp_path, models_dir):
    """An images folder with three images, a prompts file and a two-model catalog."""
    images = tmp_path / "images"
    make_image(images / "red.png", color=(200, 40, 40))
    make_image(images / "green photo.jpg", size=(60, 90), color=(40, 200, 40))
    make_image(images / "blue.webp", size=(100, 40), color=(40, 40, 200))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# comment\na red fox\n\nan ice castle\nthe sea at night\n")
    catalog = write_catalog(tmp_path / "models.yaml", models_dir)
    return {
        "images_dir": str(images),
        "output_dir": str(tmp_path / "outputs"),
        "prompts_file": str(prompts),
        "models_file": str(catalog),
        "seed": 0,
    }


@pytest.fixture
def environ():
    """os.environ, restored whole after the test. The storages and the engine resource set variables with setdefault
    (DAGSTER_EVENT_BATCH_SIZE, TORCHINDUCTOR_CACHE_DIR); monkeypatch does not undo a variable it never saw set."""
    with mock.patch.dict(os.environ):
        yield os.environ


@pytest.fixture
def instance(tmp_path, environ):
    """A Dagster instance on the storage the project ships (dagster.yaml), in a temporary folder."""
    storage = shipped_instance_config(PROJECT_ROOT, tmp_path / "dagster-home")["storage"]
    with dg.instance_for_test(overrides={"storage": storage}) as instance:
        yield instance
