"""The warm path: pipelines that outlive a run in a long-lived worker process.

In process: two real runs with a kept engine, the second loading nothing. Through Celery: the
one-box `random-diffusion worker` (local SQLite broker, no service) under a real daemon and backfill,
driven by benchmarks/orchestrated_throughput.py so the test runs what the benchmark measures.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from random_diffusion_dagster.defs.resources import DiffusionEngineResource
from random_diffusion_dagster.runtime.cli import main
from random_diffusion_dagster.settings import (
    SettingError,
    celery_urls,
    keep_pipelines_loaded,
    local_celery_folder,
    step_storage_location,
)

from helpers import make_image, orchestrated_quick, write_catalog
from local_services import descendants
from test_assets import _diffuse_all, _run_figures


def _diffuse(instance, project, engine: DiffusionEngineResource) -> dict:
    """One backfill-like run over every image; the run's totals."""
    _, result = _diffuse_all(instance, project, engine=engine)
    assert result.success
    return _run_figures(instance, result)


@pytest.fixture
def one_model(project, tmp_path, models_dir):
    """The project with a one-model catalog: every image draws the same model."""
    return {**project, "models_file": str(write_catalog(tmp_path / "one.yaml", models_dir, names=("tiny-sd15",)))}


def test_a_kept_engine_serves_the_next_run_without_loading_again(one_model):
    project = one_model
    engine = DiffusionEngineResource(device="cpu", keep_loaded=True)
    with dg.instance_for_test() as instance:
        first = _diffuse(instance, project, engine)
        make_image(Path(project["images_dir"]) / "new.png", color=(10, 120, 220))
        second = _diffuse(instance, project, engine)
    assert first["pipeline_loads"] == "1"
    assert second["generated"] == "1"  # the new image, made with the pipelines still loaded
    assert second["pipeline_loads"] == "0"


def test_an_engine_not_kept_loads_again_in_the_next_run(one_model):
    project = one_model
    engine = DiffusionEngineResource(device="cpu", keep_loaded=False)
    with dg.instance_for_test() as instance:
        _diffuse(instance, project, engine)
        make_image(Path(project["images_dir"]) / "new.png", color=(10, 120, 220))
        second = _diffuse(instance, project, engine)
    assert second["pipeline_loads"] == "1"


def test_celery_on_one_box_needs_no_service_and_no_shared_storage(monkeypatch, tmp_path):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("RANDOM_DIFFUSION_EXECUTOR", "celery")
    for name in ("CELERY_BROKER", "CELERY_BACKEND", "KEEP_LOADED", "STEP_STORAGE"):
        monkeypatch.delenv(f"RANDOM_DIFFUSION_{name}", raising=False)
    broker, backend = celery_urls()
    assert broker == f"sqla+sqlite:///{tmp_path}/.dagster/celery/broker.sqlite" and backend.startswith("db+sqlite:///")
    assert keep_pipelines_loaded() and step_storage_location() is None
    monkeypatch.setenv("RANDOM_DIFFUSION_CELERY_BROKER", "redis://gpu-box:6379/0")  # other machines: storage needed
    with pytest.raises(SettingError, match="RANDOM_DIFFUSION_STEP_STORAGE"):
        step_storage_location()
    monkeypatch.setenv("RANDOM_DIFFUSION_KEEP_LOADED", "maybe")
    with pytest.raises(SettingError, match="RANDOM_DIFFUSION_KEEP_LOADED='maybe'"):
        keep_pipelines_loaded()


def test_a_worker_on_a_shared_broker_without_step_storage_refuses_to_start_naming_the_variable(
    environ, tmp_path, capsys
):
    environ.update(DAGSTER_HOME=str(tmp_path), RANDOM_DIFFUSION_CELERY_BROKER="redis://gpu-box:6379/0")
    for name in ("EXECUTOR", "STEP_STORAGE"):
        environ.pop(f"RANDOM_DIFFUSION_{name}", None)
    with pytest.raises(SystemExit) as stopped:
        main(["worker"])
    assert stopped.value.code == 2 and "RANDOM_DIFFUSION_STEP_STORAGE" in capsys.readouterr().err
    assert not (local_celery_folder() / "worker-config").exists()  # no worker config written, no worker started


def test_runs_and_the_one_box_worker_poll_celery_every_tenth_of_a_second(monkeypatch, tmp_path):
    """A warm run makes two trips through the broker; at Celery's and dagster-celery's once-a-second polls they
    cost it about 3 s (benchmarks/results). Checked in fresh processes, as a worker and a run process start."""
    from random_diffusion_dagster.runtime.cli import write_worker_config

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("RANDOM_DIFFUSION_EXECUTOR", "celery")
    for name in ("CELERY_BROKER", "CELERY_BACKEND", "STEP_STORAGE"):
        monkeypatch.delenv(f"RANDOM_DIFFUSION_{name}", raising=False)
    config_dir = write_worker_config()
    worker_side = (
        "from dagster_celery.make_app import make_app\n"
        "app = make_app()\n"  # as `celery --app dagster_celery.app worker` makes it: reads dagster_celery_config
        "with app.connection_for_read() as connection:\n"
        "    print(connection.transport.polling_interval, app.conf.broker_url, app.conf.task_acks_late)\n"
    )
    run_side = (
        "import random_diffusion_dagster.definitions, dagster_celery.core_execution_loop as loop\n"
        "print(loop.TICK_SECONDS)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(config_dir), os.environ.get("PYTHONPATH", "")])}
    worker = subprocess.run([sys.executable, "-c", worker_side], env=env, capture_output=True, text=True, timeout=120)
    run = subprocess.run([sys.executable, "-c", run_side], env=env, capture_output=True, text=True, timeout=120)
    assert worker.stdout.split() == ["0.1", celery_urls()[0], "True"], worker.stderr[-2000:]
    assert run.stdout.split() == ["0.1"], run.stderr[-2000:]


def test_the_worker_process_imports_torch_and_diffusers_as_it_starts_not_in_its_first_step(tmp_path):
    """Celery's main process stays light; the process that runs steps has torch and the tokenizers loaded before any
    step arrives, so its first run's model load is the model's (not 4 s of imports)."""
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "RANDOM_DIFFUSION_EXECUTOR": "celery"}
    for name in ("CELERY_BROKER", "CELERY_BACKEND", "STEP_STORAGE"):
        env.pop(f"RANDOM_DIFFUSION_{name}", None)
    log = tmp_path / "worker.log"
    with log.open("w") as handle:
        worker = subprocess.Popen(
            [str(Path(sys.executable).parent / "random-diffusion"), "worker", "--loglevel", "INFO"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while " ready." not in log.read_text() and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert " ready." in log.read_text(), log.read_text()[-3000:]
        (step_process,) = descendants(worker.pid)  # --concurrency 1: one process takes the steps

        def libraries(pid: int) -> str:
            return Path(f"/proc/{pid}/maps").read_text()

        imported = ("libtorch_cpu", "tokenizers")  # torch's and transformers' tokenizers' native libraries
        while not all(name in libraries(step_process) for name in imported) and time.monotonic() < deadline:
            time.sleep(0.2)  # Celery reports ready as the process starts, not once its start-up hook is done
        assert all(name in libraries(step_process) for name in imported)
        assert "libtorch_cpu" not in libraries(worker.pid)
        assert "WARNING/ForkPoolWorker" not in log.read_text()  # the imports' notices stay off its terminal
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)


@pytest.mark.timeout(600)
def test_backfill_rerun_and_sensor_on_the_one_box_celery_worker_load_each_model_once(tmp_path):
    result = orchestrated_quick(
        tmp_path / "warm.json", 6, 3, "executor=celery,resident=5,per_run=3", flags=("--warm-rerun",)
    )
    (warm,) = result["variants"]
    assert warm["executor"] == "celery" and warm["runs"] == 2 and warm["images"] == 6
    rerun = warm["warm_rerun"]  # every image made again (outputs deleted) by the same worker
    assert rerun["images"] == 6 and rerun["runs"] == 2 and rerun["pipeline_loads"] == 0
    # The headline is the second backfill; the first, which loaded the models, is kept beside it.
    assert result["images"] == 6 and result["pipeline_loads"] == 0 and result["compile_events"] == 0  # no compiling
    assert result["first_backfill"]["pipeline_loads"] == warm["pipeline_loads"] == result["worker_pipeline_loads"]
    assert result["engine_images_per_s"] == round(result["engine"]["warm_rerun_images_per_s"], 3)
    models = 5  # the demo catalog; resident=5 keeps them all
    loads = warm["pipeline_loads"] + warm["sensor"]["pipeline_loads"]
    assert 1 <= loads <= models, warm  # every model at most once across five runs in one worker
    assert warm["step_processes"] == 0 and warm["overlapping_runs"] == rerun["overlapping_runs"] == 0
    assert warm["sensor"]["images"] == 3
